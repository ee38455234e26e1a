"""The data stage: tokenize and pack the text source into validation / calibration / train splits, and keep
the held-out documents' text for the evaluate stage's heldout_continuation task."""

from __future__ import annotations

from compactlm.data.schema import DataResult
from compactlm.data.splits import build_splits_with_heldout, save_heldout, save_splits
from compactlm.model.loading import load_tokenizer
from compactlm.pipeline import StageContext, StageOutput


class DataStage:
    name = "data"
    reads = ("data", "seed")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        tokenizer = load_tokenizer(ctx.upstream_output("model", "checkpoint"))
        arrays, heldout = build_splits_with_heldout(ctx.cfg.data, tokenizer, ctx.cfg.seed)
        outputs = save_splits(arrays, ctx.stage_dir)
        outputs["heldout"] = save_heldout(heldout, ctx.stage_dir).parent.name
        result = DataResult(
            seq_len=ctx.cfg.data.seq_len,
            sequences={k: int(v.shape[0]) for k, v in arrays.items()},
            tokens={k: int(v.size) for k, v in arrays.items()},
            heldout_documents=len(heldout),
        )
        print(
            "[data] "
            + ", ".join(f"{k}: {v.shape[0]} x {v.shape[1]}" for k, v in arrays.items())
            + f"; {len(heldout)} held-out documents",
            flush=True,
        )
        return StageOutput(result, outputs=outputs)
