"""Distillation throughput and MFU of compactlm's `distill`, per dtype, against the bare minimum loop, in one run.

    python benchmarks/distill_speed.py                                   # random llama pair (hidden 256, 8 → 6 layers)
    python benchmarks/distill_speed.py --teacher T --student S --steps 6 --dtypes float32,bfloat16

For every dtype (`engine.dtype`: float32, or bfloat16 = frozen teacher in bf16 and float32 student master
weights under bf16 autocast) it prints:

- tokens/s of compactlm's `distill` and of the bare loop, and their ratio (target >= 0.9). The bare loop is
  what any distillation must do — teacher forward under no_grad, student forward and backward, the KL, an
  AdamW step — with the same models, batches, precision and gradient accumulation, and nothing else (no
  ModelOpt hooks, clipping, logging, progress bar).
- MFU: FLOP/s achieved by `distill` (teacher forward + student forward and backward, counted from the two
  architectures: compactlm.bench.flops) over the machine's matmul peak for that dtype, measured by a short
  probe in every run's process, just before it (the best probe counts). The same for the importance pass (teacher forward with ModelOpt-style hooks).
- peak memory of each side (RSS; GPU max_memory_allocated on CUDA).

Each run is its own fresh process (its peak memory is its own); runs alternate `--repeats` times and the best
of each is compared (shared machines are noisy). Tokens/s counts training steps only: loading, validation,
checkpoints and export are outside both timings (`distill`'s wall time is printed separately).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from pathlib import Path


def peak_memory() -> dict:
    import torch

    out = {"peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if torch.cuda.is_available():
        out["peak_gpu_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def make_pair(root: Path, hidden: int, layers: int, vocab: int, seq_len: int) -> tuple[Path, Path]:
    """A random llama teacher and a pruned-shape student (3/4 of the layers and of the FFN), same vocab."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    def build(folder, n_layers, ffn, seed):
        torch.manual_seed(seed)
        cfg = AutoConfig.for_model(
            "llama",
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=ffn,
            num_hidden_layers=n_layers,
            num_attention_heads=max(1, hidden // 64),
            num_key_value_heads=max(1, hidden // 128),
            head_dim=64,
            max_position_embeddings=max(seq_len, 256),
            tie_word_embeddings=False,
        )
        cfg.architectures = ["LlamaForCausalLM"]
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder, safe_serialization=True)
        return folder

    return (
        build(root / "teacher", layers, 4 * hidden, 0),
        build(root / "student", max(1, layers * 3 // 4), 3 * hidden, 1),
    )


def make_data(root: Path, vocab: int, seq_len: int, n_train: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True, exist_ok=True)
    np.save(root / "data" / "train.npy", rng.integers(0, vocab, (n_train, seq_len), dtype=np.int32))
    np.save(root / "data" / "validation.npy", rng.integers(0, vocab, (2, seq_len), dtype=np.int32))
    return root / "data"


def probe(a: dict) -> dict:
    """The matmul peak of the dtype `a["dtype"]` resolves to, measured in this process just before its run.

    Every run probes, and the best probe of a dtype is its peak: on a shared machine whose speed drifts
    (steal time), one probe taken at another moment than the runs can sit below what they reach."""
    from compactlm.bench.flops import matmul_peak
    from compactlm.config import EngineConfig
    from compactlm.model.loading import setup_engine

    device, precision = setup_engine(
        EngineConfig(name="bench", device=a["device"], threads=a["threads"], dtype=a["dtype"])
    )
    return matmul_peak(precision.compute, device)


def run_ours(a: dict) -> dict:
    from compactlm.config import EngineConfig
    from compactlm.distill.schema import DistillConfig
    from compactlm.distill.train import distill

    peak = probe(a)

    cfg = DistillConfig(
        max_steps=a["steps"],
        micro_batch_size=a["micro"],
        global_batch_size=a["global_batch"],
        eval_every=a["steps"],
        save_every=a["steps"],
        warmup_steps=1,
        lr=1e-4,
    )
    engine = EngineConfig(name="bench", device=a["device"], threads=a["threads"], dtype=a["dtype"])
    out = Path(tempfile.mkdtemp(dir=a["root"], prefix="ours_"))  # fresh: an existing run folder would resume
    m = distill(a["teacher"], a["student"], a["data"], out, cfg, engine, seed=0, progress=a["progress"])
    return {
        "tokens_per_s": m["tokens_per_s"],
        "wall_s": m["wall_s"],
        "engine": m["engine"],
        "peak": peak,
        **peak_memory(),
    }


def run_bare(a: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from compactlm.config import EngineConfig
    from compactlm.model.loading import load_model, setup_engine

    peak = probe(a)
    device, precision = setup_engine(
        EngineConfig(name="bench", device=a["device"], threads=a["threads"], dtype=a["dtype"])
    )
    teacher = load_model(a["teacher"], device, precision.frozen_dtype).requires_grad_(False)
    student = load_model(a["student"], device, torch.float32).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95))
    tokens = np.load(Path(a["data"]) / "train.npy", mmap_mode="r")
    order = np.random.default_rng(0).permutation(len(tokens))
    accum = a["global_batch"] // a["micro"]
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    for step in range(a["steps"]):
        rows = order[np.arange(step * a["global_batch"], (step + 1) * a["global_batch"]) % len(tokens)]
        for i in range(accum):
            ids = torch.from_numpy(tokens[rows[i * a["micro"] : (i + 1) * a["micro"]]]).to(device).long()
            with precision.autocast():
                with torch.no_grad():
                    zt = teacher(input_ids=ids, use_cache=False).logits
                zs = student(input_ids=ids, use_cache=False).logits
            logp = F.log_softmax(zt.float(), -1)
            kl = (logp.exp() * (logp - F.log_softmax(zs.float(), -1))).sum(-1).mean() / accum
            kl.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {"tokens_per_s": a["steps"] * a["global_batch"] * tokens.shape[1] / dt, "peak": peak, **peak_memory()}


def run_importance(a: dict) -> dict:
    """Tokens/s of the importance stage's pass (compactlm.prune.importance) over the train split's first rows."""
    import numpy as np
    import torch

    from compactlm.arch import adapter_for
    from compactlm.config import EngineConfig
    from compactlm.model.loading import load_model, setup_engine
    from compactlm.prune.importance import collect_importance

    peak = probe(a)
    device, precision = setup_engine(
        EngineConfig(name="bench", device=a["device"], threads=a["threads"], dtype=a["dtype"])
    )
    model = load_model(a["teacher"], device, precision.frozen_dtype)
    rows = np.load(Path(a["data"]) / "train.npy", mmap_mode="r")[: a["importance_sequences"]]
    batches = [
        torch.from_numpy(np.array(rows[i : i + a["micro"]], dtype=np.int64)) for i in range(0, len(rows), a["micro"])
    ]
    with precision.autocast():
        collect_importance(model, adapter_for(model.config.model_type), batches[:1])  # warm-up
        t0 = time.perf_counter()
        collect_importance(model, adapter_for(model.config.model_type), batches)
    return {"tokens_per_s": rows.size / (time.perf_counter() - t0), "peak": peak, **peak_memory()}


def in_fresh_process(fn, arg: dict) -> dict:
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, arg).result()


def _best(runs: list[dict]) -> dict:
    return max(runs, key=lambda r: r["tokens_per_s"])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--teacher", help="teacher HF folder (default: build a random llama pair)")
    p.add_argument("--student", help="student HF folder (same vocabulary as the teacher)")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--seq-len", type=int, default=256)
    p.add_argument("--micro-batch", type=int, default=4)
    p.add_argument("--global-batch", type=int, default=8)
    p.add_argument("--hidden", type=int, default=256, help="random pair: hidden size")
    p.add_argument("--layers", type=int, default=8, help="random pair: teacher layers")
    p.add_argument("--vocab", type=int, default=32128, help="random pair: vocabulary (Bielik's by default)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.add_argument(
        "--dtypes",
        default="float32,bfloat16",
        help="comma-separated engine.dtype values to measure (float32, bfloat16, float16, auto)",
    )
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=1, help="alternating runs per side; the best of each is compared")
    p.add_argument("--importance-sequences", type=int, default=16, help="sequences of the importance pass (0: skip)")
    p.add_argument("--no-bare", action="store_true", help="skip the bare loop (MFU only)")
    p.add_argument("--json", help="also write every figure to this file")
    p.add_argument("--progress", action="store_true", help="show distill's progress bar")
    a = p.parse_args(argv)
    if bool(a.teacher) != bool(a.student):
        p.error("give both --teacher and --student, or neither")
    dtypes = [d.strip() for d in a.dtypes.split(",") if d.strip()]
    for d in dtypes:
        if d not in ("auto", "float32", "bfloat16", "float16"):
            p.error(f"--dtypes: {d!r} is not one of auto, float32, bfloat16, float16")

    from compactlm.bench.flops import distill_flops_per_token, forward_flops_per_token

    with tempfile.TemporaryDirectory(prefix="distill_speed_") as tmp:
        root = Path(tmp)
        if a.teacher:
            teacher, student = Path(a.teacher), Path(a.student)
        else:
            teacher, student = in_fresh_process(
                _make_pair,
                {"root": tmp, "hidden": a.hidden, "layers": a.layers, "vocab": a.vocab, "seq_len": a.seq_len},
            )
        t_cfg = json.loads((teacher / "config.json").read_text())
        s_cfg = json.loads((student / "config.json").read_text())
        data = make_data(
            root,
            t_cfg["vocab_size"],
            a.seq_len,
            n_train=max(a.steps * a.global_batch, a.global_batch, a.importance_sequences),
        )
        base = {
            "teacher": str(teacher),
            "student": str(student),
            "data": str(data),
            "root": tmp,
            "steps": a.steps,
            "micro": a.micro_batch,
            "global_batch": a.global_batch,
            "device": a.device,
            "threads": a.threads,
            "progress": a.progress,
            "importance_sequences": a.importance_sequences,
        }
        figures = {}
        for dtype in dtypes:
            args = {**base, "dtype": dtype}
            ours, bare, imp = [], [], []
            for _ in range(a.repeats):  # alternate, so that a busy spell on a shared machine hits both sides
                ours.append(in_fresh_process(run_ours, args))
                if not a.no_bare:
                    bare.append(in_fresh_process(run_bare, args))
                if a.importance_sequences:
                    imp.append(in_fresh_process(run_importance, args))
            compute = ours[0]["engine"]["compute"]
            peak = max((r["peak"] for r in ours + bare + imp), key=lambda p: p["flops"])
            figures[dtype] = {
                "ours": ours,
                "bare": bare,
                "importance": imp,
                "peak": peak,
                "compute": compute,
                "reason": ours[0]["engine"]["reason"],
            }

    step_flops = distill_flops_per_token(t_cfg, s_cfg, a.seq_len)
    fwd_flops = forward_flops_per_token(t_cfg, a.seq_len)
    name = teacher.name if a.teacher else f"random llama h{a.hidden} x{a.layers} v{t_cfg['vocab_size']}"
    print(
        f"teacher {name} → student {student.name if a.student else 'random'}, seq {a.seq_len}, global batch "
        f"{a.global_batch} (micro {a.micro_batch}), {a.steps} steps, device {a.device}, best of {a.repeats}"
    )
    print(
        f"FLOPs per training token (teacher fwd + student fwd/bwd): {step_flops / 1e9:.3f} GFLOP; "
        f"importance pass (teacher fwd): {fwd_flops / 1e9:.3f} GFLOP"
    )
    summary = {}
    for dtype, f in figures.items():
        best = _best(f["ours"])
        peak = f["peak"]["flops"]
        achieved = best["tokens_per_s"] * step_flops
        row = {
            "compute": f["compute"],
            "tokens_per_s": best["tokens_per_s"],
            "achieved_flops": achieved,
            "peak_flops": peak,
            "peak_shape": f["peak"]["shape"],
            "mfu": achieved / peak,
            "peak_rss_mib": max(r["peak_rss_mib"] for r in f["ours"]),
            "wall_s": best["wall_s"],
        }
        if "peak_gpu_mib" in best:
            row["peak_gpu_mib"] = max(r["peak_gpu_mib"] for r in f["ours"])
        print(f"\nengine.dtype={dtype}: {f['reason']}")
        print(f"  matmul peak ({f['compute']}, probe {f['peak']['shape']}): {peak / 1e9:.1f} GFLOP/s")
        print(
            f"  distill (compactlm)  {best['tokens_per_s']:9.1f} tokens/s  {achieved / 1e9:8.1f} GFLOP/s  "
            f"MFU {row['mfu'] * 100:5.1f}%   peak RSS {row['peak_rss_mib']:.0f} MiB"
            + (f", peak GPU {row['peak_gpu_mib']:.0f} MiB" if "peak_gpu_mib" in row else "")
        )
        if f["bare"]:
            b = _best(f["bare"])
            row["bare_tokens_per_s"] = b["tokens_per_s"]
            row["ratio_to_bare"] = best["tokens_per_s"] / b["tokens_per_s"]
            print(
                f"  bare loop            {b['tokens_per_s']:9.1f} tokens/s   ours/bare {row['ratio_to_bare']:.3f} "
                f"(target >= 0.9)   peak RSS {max(r['peak_rss_mib'] for r in f['bare']):.0f} MiB"
            )
        if f["importance"]:
            i = _best(f["importance"])
            row["importance_tokens_per_s"] = i["tokens_per_s"]
            row["importance_mfu"] = i["tokens_per_s"] * fwd_flops / peak
            print(
                f"  importance pass      {i['tokens_per_s']:9.1f} tokens/s  {i['tokens_per_s'] * fwd_flops / 1e9:8.1f} "
                f"GFLOP/s  MFU {row['importance_mfu'] * 100:5.1f}%"
            )
        print(f"  distill() wall time incl. loading, validation, checkpoint, export: {best['wall_s']:.1f} s")
        summary[dtype] = row
    if len(summary) > 1:
        first, *rest = summary
        for other in rest:
            print(
                f"{other} / {first} distill tokens/s: "
                f"{summary[other]['tokens_per_s'] / summary[first]['tokens_per_s']:.2f}x"
            )
    if a.json:
        Path(a.json).write_text(
            json.dumps({"flops_per_token": step_flops, "dtypes": summary, "runs": figures}, indent=1, default=str)
        )
    print(json.dumps(summary, default=str))
    return 0


def _make_pair(a: dict):
    return make_pair(Path(a["root"]), a["hidden"], a["layers"], a["vocab"], a["seq_len"])


if __name__ == "__main__":
    sys.exit(main())
