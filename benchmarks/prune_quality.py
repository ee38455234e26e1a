"""Does activation importance pick better units than chance, and what does scoring cost?

On SmolLM2-135M (the embedded demo model) pruned to a preset (default: smollm2_33pct), in ONE run:
  1. held-out perplexity of importance-guided pruning vs the same architecture with randomly chosen
     units (same sizes, `--random-trials` draws), and of the unpruned teacher;
  2. calibration time (forward passes with the importance hooks) relative to plain forward passes over
     the same batches (target <= 1.2x).

    python benchmarks/prune_quality.py [--preset smollm2_33pct] [--calibration 32] [--validation 24]
"""

from __future__ import annotations

import argparse
import copy
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from omegaconf import OmegaConf

from compactlm.arch import adapter_for
from compactlm.data.schema import DataConfig
from compactlm.data.splits import load_split, write_splits
from compactlm.evaluate.quality import quality
from compactlm.model.loading import load_model, load_tokenizer, materialize
from compactlm.model.schema import ModelConfig
from compactlm.prune.importance import ImportanceScores, collect_importance
from compactlm.prune.schema import PruneConfig
from compactlm.prune.slicing import prune_model

REPO = Path(__file__).resolve().parents[1]


def load_yaml(path: Path, schema):
    raw = OmegaConf.load(path)
    raw.pop("defaults", None)
    return OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(schema), raw))


def batches(arr: np.ndarray, bs: int):
    return [torch.from_numpy(np.array(arr[i : i + bs], dtype=np.int64)) for i in range(0, len(arr), bs)]


def random_scores(like: ImportanceScores, gen: torch.Generator) -> ImportanceScores:
    r = lambda t: torch.rand(t.shape, generator=gen)  # noqa: E731
    return ImportanceScores(
        hidden=r(like.hidden), ffn=r(like.ffn), heads=r(like.heads), depth=r(like.depth), num_samples=like.num_samples
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="smollm2_33pct")
    ap.add_argument("--calibration", type=int, default=32, help="calibration sequences")
    ap.add_argument("--validation", type=int, default=24, help="validation sequences")
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--random-trials", type=int, default=3)
    ap.add_argument("--cache-dir", default="~/.cache/compactlm")
    args = ap.parse_args()
    torch.manual_seed(0)

    model_cfg = load_yaml(REPO / "conf/model/smollm2_135m.yaml", ModelConfig)
    preset = load_yaml(REPO / f"conf/prune/{args.preset}.yaml", PruneConfig)
    folder = materialize(model_cfg, args.cache_dir)
    tok = load_tokenizer(folder)
    data = DataConfig(
        name="pydoc",
        kind="pydoc",
        seq_len=args.seq_len,
        validation_sequences=args.validation,
        calibration_sequences=args.calibration,
    )
    with tempfile.TemporaryDirectory() as tmp:
        names, _, _ = write_splits(data, tok, 1234, Path(tmp))
        splits = {split: load_split(Path(tmp), split, mmap=False) for split in names}
    calib = batches(splits["calibration"], args.batch_size)
    teacher = load_model(folder)
    adapter = adapter_for(teacher.config.model_type)

    # Warm up once, then alternate plain and hooked passes so drift in machine load hits both equally.
    with torch.no_grad():
        teacher(input_ids=calib[0])
    plain, backbone, hooked, scores = [], [], [], None
    body = getattr(teacher, adapter.backbone)
    for _ in range(2):
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in calib:
                teacher(input_ids=b, use_cache=False)
        plain.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        with torch.no_grad():
            for b in calib:
                body(input_ids=b, use_cache=False)
        backbone.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        scores = collect_importance(teacher, adapter, calib, progress=False)
        hooked.append(time.perf_counter() - t0)

    export = preset.export_config.known()
    models = {"teacher": teacher}
    models["importance"] = prune_model(copy.deepcopy(teacher), adapter, scores, export, preset.depth_method)
    gen = torch.Generator().manual_seed(0)
    for t in range(args.random_trials):
        models[f"random_{t}"] = prune_model(
            copy.deepcopy(teacher), adapter, random_scores(scores, gen), export, "block_influence"
        )
    res = quality(models, "teacher", splits["validation"], args.batch_size, "cpu", progress=False)
    params = sum(p.numel() for p in models["importance"].parameters())
    rand_ppl = [res[f"random_{t}"]["perplexity"] for t in range(args.random_trials)]

    print(
        f"SmolLM2-135M -> prune={args.preset} {export} ({params / 1e6:.1f}M params), "
        f"{len(splits['calibration'])} calibration / {len(splits['validation'])} validation sequences of {args.seq_len}"
    )
    print(f"{'model':<22}{'perplexity':>12}{'KL to teacher':>15}")
    print(f"{'teacher':<22}{res['teacher']['perplexity']:>12.2f}{'-':>15}")
    print(
        f"{'importance pruning':<22}{res['importance']['perplexity']:>12.2f}{res['importance']['kl_to_teacher']:>15.4f}"
    )
    for t in range(args.random_trials):
        r = res[f"random_{t}"]
        print(f"{f'random units #{t}':<22}{r['perplexity']:>12.2f}{r['kl_to_teacher']:>15.4f}")
    print(
        f"random / importance perplexity ratio: {statistics.median(rand_ppl) / res['importance']['perplexity']:.2f}x "
        f"(median of {args.random_trials} random draws; > 1 means importance is better)"
    )
    print(
        f"calibration time / plain forward time: {min(hooked) / min(plain):.3f}x "
        f"(best of 2: hooked {min(hooked):.2f} s, plain {min(plain):.2f} s; target <= 1.2x)"
    )
    # Scoring needs no lm_head, so also compare with the decoder alone: that ratio is the hooks' own cost.
    print(
        f"calibration time / decoder-only forward time (no lm_head): {min(hooked) / min(backbone):.3f}x "
        f"(decoder-only {min(backbone):.2f} s)"
    )


if __name__ == "__main__":
    main()
