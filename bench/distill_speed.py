"""Distillation throughput of compactlm's `distill` against the bare minimum loop, measured in one run.

    python bench/distill_speed.py                                   # random llama pair (hidden 256, 8 → 6 layers)
    python bench/distill_speed.py --teacher T --student S --steps 20 --seq-len 512

The bare loop is what any distillation must do — teacher forward under no_grad, student forward and
backward, the KL, an AdamW step — with the same models, batches, dtypes and gradient accumulation, and
nothing else (no ModelOpt hooks, clipping, logging, progress bar). Each side runs in its own fresh
process so that peak memory (RSS; GPU max_memory_allocated on CUDA) is its own, and the sides alternate
`--repeats` times, the best run of each being compared (shared machines are noisy). Tokens/s counts the
training steps only: model loading, validation, checkpoints and export are outside both timings
(`distill`'s wall time is printed separately). Target: ours / bare >= 0.9.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import contextlib
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
        cfg = AutoConfig.for_model("llama", vocab_size=vocab, hidden_size=hidden, intermediate_size=ffn,
                                   num_hidden_layers=n_layers, num_attention_heads=max(1, hidden // 64),
                                   num_key_value_heads=max(1, hidden // 128), head_dim=64,
                                   max_position_embeddings=max(seq_len, 256), tie_word_embeddings=False)
        cfg.architectures = ["LlamaForCausalLM"]
        AutoModelForCausalLM.from_config(cfg).save_pretrained(folder, safe_serialization=True)
        return folder

    return (build(root / "teacher", layers, 4 * hidden, 0),
            build(root / "student", max(1, layers * 3 // 4), 3 * hidden, 1))


def make_data(root: Path, vocab: int, seq_len: int, n_train: int) -> Path:
    import numpy as np

    rng = np.random.default_rng(0)
    (root / "data").mkdir(parents=True, exist_ok=True)
    np.save(root / "data" / "train.npy", rng.integers(0, vocab, (n_train, seq_len), dtype=np.int32))
    np.save(root / "data" / "validation.npy", rng.integers(0, vocab, (2, seq_len), dtype=np.int32))
    return root / "data"


def run_ours(a: dict) -> dict:
    from compactlm.config import DistillConfig, EngineConfig
    from compactlm.distill.train import distill

    cfg = DistillConfig(max_steps=a["steps"], micro_batch_size=a["micro"], global_batch_size=a["global_batch"],
                        eval_every=a["steps"], checkpoint_every=a["steps"], warmup_steps=1, lr=1e-4)
    engine = EngineConfig(name="bench", device=a["device"], threads=a["threads"])
    out = Path(tempfile.mkdtemp(dir=a["root"], prefix="ours_"))  # fresh: an existing run folder would resume
    m = distill(a["teacher"], a["student"], a["data"], out, cfg, engine, seed=0,
                progress=a["progress"])
    return {"tokens_per_s": m["tokens_per_s"], "wall_s": m["wall_s"], **peak_memory()}


def run_bare(a: dict) -> dict:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from compactlm.config import EngineConfig
    from compactlm.model.loading import load_model, setup_engine

    device, dtype = setup_engine(EngineConfig(name="bench", device=a["device"], threads=a["threads"]))
    teacher = load_model(a["teacher"], device, dtype).requires_grad_(False)
    student = load_model(a["student"], device, torch.float32).train()
    opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95))
    bf16 = device == "cuda" and torch.cuda.is_bf16_supported()
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
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
            with autocast():
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
    return {"tokens_per_s": a["steps"] * a["global_batch"] * tokens.shape[1] / dt, **peak_memory()}


def in_fresh_process(fn, arg: dict) -> dict:
    with cf.ProcessPoolExecutor(max_workers=1, mp_context=mp.get_context("spawn")) as pool:
        return pool.submit(fn, arg).result()


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
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--repeats", type=int, default=2, help="alternating runs per side; the best of each is compared")
    p.add_argument("--progress", action="store_true", help="show distill's progress bar")
    a = p.parse_args(argv)
    if bool(a.teacher) != bool(a.student):
        p.error("give both --teacher and --student, or neither")

    with tempfile.TemporaryDirectory(prefix="distill_speed_") as tmp:
        root = Path(tmp)
        if a.teacher:
            teacher, student = Path(a.teacher), Path(a.student)
            vocab = json.loads((teacher / "config.json").read_text())["vocab_size"]
        else:
            teacher, student = in_fresh_process(_make_pair, {"root": tmp, "hidden": a.hidden, "layers": a.layers,
                                                             "vocab": a.vocab, "seq_len": a.seq_len})
            vocab = a.vocab
        data = make_data(root, vocab, a.seq_len, n_train=max(a.steps * a.global_batch, a.global_batch))
        args = {"teacher": str(teacher), "student": str(student), "data": str(data), "root": tmp,
                "steps": a.steps, "micro": a.micro_batch, "global_batch": a.global_batch, "device": a.device,
                "threads": a.threads, "progress": a.progress}
        ours, bare = [], []
        for _ in range(a.repeats):  # alternate, so that a busy spell on a shared machine hits both sides
            ours.append(in_fresh_process(run_ours, args))
            bare.append(in_fresh_process(run_bare, args))

    best_ours = max(ours, key=lambda r: r["tokens_per_s"])
    best_bare = max(bare, key=lambda r: r["tokens_per_s"])
    ratio = best_ours["tokens_per_s"] / best_bare["tokens_per_s"]
    print(f"teacher {teacher.name if a.teacher else f'random llama h{a.hidden} x{a.layers} v{vocab}'}, "
          f"seq {a.seq_len}, global batch {a.global_batch} (micro {a.micro_batch}), {a.steps} steps, "
          f"device {a.device}, best of {a.repeats}")
    for name, runs in (("ours (compactlm.distill)", ours), ("bare loop", bare)):
        best = max(runs, key=lambda r: r["tokens_per_s"])
        mem = f"peak RSS {max(r['peak_rss_mib'] for r in runs):.0f} MiB"
        if "peak_gpu_mib" in best:
            mem += f", peak GPU {max(r['peak_gpu_mib'] for r in runs):.0f} MiB"
        each = ", ".join(f"{r['tokens_per_s']:.0f}" for r in runs)
        print(f"  {name:26s} {best['tokens_per_s']:10.1f} tokens/s (runs: {each})   {mem}")
    print(f"  distill() wall time incl. loading, validation, checkpoint, export: {best_ours['wall_s']:.1f} s")
    print(f"ratio ours/bare: {ratio:.3f} (target >= 0.9)")
    print(json.dumps({"ours": ours, "bare": bare, "ratio": ratio}))
    return 0


def _make_pair(a: dict):
    return make_pair(Path(a["root"]), a["hidden"], a["layers"], a["vocab"], a["seq_len"])


if __name__ == "__main__":
    sys.exit(main())
