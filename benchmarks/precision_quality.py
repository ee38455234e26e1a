"""What bf16 changes on a finished run's models: evaluation figures and the units importance pruning keeps.

    python benchmarks/precision_quality.py runs/prune_distill_smollm2_135m

For the run's teacher, pruned and distilled models it measures, in one process, the evaluate stage's figures
(perplexity, KL and top-1 agreement to the teacher on the run's validation split) twice: float32 (float32
weights, no autocast) and bf16 (bf16 weights under bf16 autocast, what `engine.dtype=auto` runs on bf16
hardware). Then it collects importance on the teacher over the run's calibration split both ways and counts
how many of the units the run's prune preset keeps (layers, FFN neurons per kept layer, attention heads,
hidden channels) differ between the two.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

from compactlm import stages
from compactlm.arch import adapter_for
from compactlm.config import EngineConfig
from compactlm.data.splits import load_split
from compactlm.evaluate.quality import quality
from compactlm.manifest import read_manifest
from compactlm.model.loading import load_model
from compactlm.model.precision import Precision, resolve_precision
from compactlm.prune.importance import collect_importance, select_layers
from compactlm.prune.slicing import top_heads_per_group, top_k_sorted
from compactlm.results import TEACHER, run_models

PRECISIONS = {
    "float32": Precision("cpu", "float32", "engine.dtype=float32"),
    "bf16": Precision("cpu", "bfloat16", "engine.dtype=bfloat16"),
}


def evaluate_both(models: dict[str, Path], val: np.ndarray, batch_size: int) -> dict[str, dict]:
    out = {}
    for name, p in PRECISIONS.items():
        loaded = {label: load_model(path, "cpu", p.frozen_dtype) for label, path in models.items()}
        with p.autocast():
            out[name] = quality(loaded, TEACHER, val, batch_size, "cpu", progress=False)
        del loaded
    return out


def kept_units(scores, export: dict, config) -> dict[str, set]:
    """The units prune_model would keep for `export` (the same selection functions), as sets."""
    kept: dict[str, set] = {}
    layers = select_layers(scores, export.get("num_layers", scores.num_layers))
    kept["layers"] = set(layers)
    if "ffn_hidden_size" in export:
        kept["ffn"] = {
            (layer, int(i)) for layer in layers for i in top_k_sorted(scores.ffn[layer], export["ffn_hidden_size"])
        }
    if "num_attention_heads" in export:
        kv = config.num_key_value_heads
        kept["heads"] = {
            (layer, int(i))
            for layer in layers
            for i in top_heads_per_group(scores.heads[layer], kv, export["num_attention_heads"])
        }
    if "hidden_size" in export:
        kept["hidden"] = {int(i) for i in top_k_sorted(scores.hidden, export["hidden_size"])}
    return kept


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", type=Path, help="a finished run folder (model, data, prune and distill stages)")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--threads", type=int, default=None)
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    manifests = {
        s: m
        for s in ("model", "data", "importance", "prune", "distill")
        if (m := read_manifest(a.run_dir / s)) is not None
    }
    models = {
        label: path
        for label, path in run_models(a.run_dir, manifests).items()
        if label != stages.get("quantize").model_label
    }
    data_dir = a.run_dir / "data"
    val = load_split(data_dir, "validation")
    auto = resolve_precision(EngineConfig(name="bench"), "cpu")
    print(f"engine.dtype=auto on this machine: {auto}")

    res = evaluate_both(models, val, a.batch_size)
    print(f"\nevaluation on {len(val)} validation sequences of {a.run_dir.name}")
    print(
        f"{'model':10s} {'ppl fp32':>9s} {'ppl bf16':>9s} {'change':>8s} {'KL fp32':>8s} {'KL bf16':>8s} "
        f"{'top-1 fp32':>10s} {'top-1 bf16':>10s}"
    )
    for label in models:
        f, b = res["float32"][label], res["bf16"][label]
        kl = (
            (
                f"{f['kl_to_teacher']:8.4f} {b['kl_to_teacher']:8.4f} {f['top1_agreement']:10.1%} "
                f"{b['top1_agreement']:10.1%}"
            )
            if "kl_to_teacher" in f
            else f"{'-':>8s} {'-':>8s} {'-':>10s} {'-':>10s}"
        )
        print(
            f"{label:10s} {f['perplexity']:9.3f} {b['perplexity']:9.3f} "
            f"{(b['perplexity'] / f['perplexity'] - 1) * 100:+7.2f}% {kl}"
        )

    if "prune" in manifests:
        export = manifests["prune"]["result"]["export_config"]
        calib = load_split(data_dir, "calibration")
        batches = [
            torch.from_numpy(np.array(calib[i : i + a.batch_size], dtype=np.int64))
            for i in range(0, len(calib), a.batch_size)
        ]
        kept = {}
        for name, prec in PRECISIONS.items():
            model = load_model(models[TEACHER], "cpu", prec.frozen_dtype)
            with prec.autocast():
                scores = collect_importance(model, adapter_for(model.config.model_type), batches, progress=False)
            kept[name] = kept_units(scores, export, model.config)
        print(f"\nimportance on {len(calib)} calibration sequences, units kept for {export}:")
        for unit in kept["float32"]:
            f, b = kept["float32"][unit], kept["bf16"][unit]
            print(f"  {unit:7s} {len(f):6d} kept; {len(f - b)} differ between float32 and bf16 scores")
    return 0


if __name__ == "__main__":
    sys.exit(main())
