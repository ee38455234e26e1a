"""The data stage: tokenize and pack the text source into validation / calibration / train splits, and keep
the held-out documents' text for the evaluate stage's heldout_continuation task."""

from __future__ import annotations

from compactlm.data.schema import DataResult
from compactlm.data.splits import save_heldout, write_splits
from compactlm.model.loading import load_tokenizer
from compactlm.pipeline import StageContext, StageOutput


class DataStage:
    name = "data"
    reads = ("data", "seed")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        tokenizer = load_tokenizer(ctx.upstream_output("model", "checkpoint"))
        data = ctx.cfg.data
        outputs, sequences, heldout = write_splits(data, tokenizer, ctx.cfg.seed, ctx.stage_dir)
        outputs["heldout"] = save_heldout(heldout, ctx.stage_dir).parent.name
        result = DataResult(
            seq_len=data.seq_len,
            sequences=sequences,
            tokens={k: n * data.seq_len for k, n in sequences.items()},
            heldout_documents=len(heldout),
        )
        print(
            "[data] "
            + ", ".join(f"{k}: {n} x {data.seq_len}" for k, n in sequences.items())
            + f"; {len(heldout)} held-out documents",
            flush=True,
        )
        return StageOutput(result, outputs=outputs)
