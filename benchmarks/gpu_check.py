"""One prepared GPU check (H100/H200): bf16 distillation MFU of a 1B-class random pair, importance on CUDA,
FP8 and NVFP4 fake-quant forwards — every figure into one JSON file. Run through benchmarks/gpu_check.sh.

Needs PyTorch with CUDA and transformers; compactlm comes from src/ (no install); ModelOpt and OmegaConf from
benchmarks/wheelhouse when the machine lacks them (gpu_check.sh installs them offline). A part whose requirement
is missing is recorded as {"skipped": reason}, not hidden; a part that fails records its error and the others
still run. Tests never run this file.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))

SEQ = 2048
TEACHER = dict(hidden=2048, layers=16, ffn=5632, heads=16, kv=8, vocab=32128)  # 1.1B (TinyLlama's shape)
STUDENT = dict(TEACHER, layers=12, ffn=4224)  # -33%: depth and FFN, the Minitron hybrid


def build(folder: Path, s: dict, seed: int) -> Path:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(
        "llama",
        vocab_size=s["vocab"],
        hidden_size=s["hidden"],
        intermediate_size=s["ffn"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["kv"],
        max_position_embeddings=SEQ,
        tie_word_embeddings=False,
    )
    cfg.architectures = ["LlamaForCausalLM"]
    AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16).save_pretrained(folder, safe_serialization=True)
    return folder


def part(results: dict, name: str, fn, *args):
    t0 = time.perf_counter()
    try:
        results[name] = fn(*args)
    except ModuleNotFoundError as e:
        results[name] = {"skipped": f"{e.name} is not installed (see benchmarks/gpu_check.sh)"}
    except Exception as e:  # recorded in the JSON; the other parts still run
        results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-3000:]}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"[gpu_check] {name}: {json.dumps(results[name])[:400]}", flush=True)


def distill_mfu(root: Path, teacher: Path, student: Path, peak: float) -> dict:
    from distill_speed import make_data, peak_memory

    from compactlm.bench.flops import distill_flops_per_token
    from compactlm.config import EngineConfig
    from compactlm.distill.schema import DistillConfig
    from compactlm.distill.train import distill

    data = make_data(root, TEACHER["vocab"], SEQ, n_train=64)
    cfg = DistillConfig(
        max_steps=8, micro_batch_size=4, global_batch_size=8, eval_every=8, save_every=8, warmup_steps=1, lr=1e-4
    )
    m = distill(
        teacher, student, data, root / "distill", cfg, EngineConfig(name="gpu", device="cuda"), seed=0, progress=False
    )
    flops = distill_flops_per_token(
        json.loads((teacher / "config.json").read_text()), json.loads((student / "config.json").read_text()), SEQ
    )
    return {
        "tokens_per_s": m["tokens_per_s"],
        "tflops": m["tokens_per_s"] * flops / 1e12,
        "mfu": m["tokens_per_s"] * flops / peak,
        "engine": m["engine"],
        "val_kl": m["val_kl"],
        **peak_memory(),
    }


def importance_mfu(teacher: Path, peak: float) -> dict:
    import torch

    from compactlm.arch import adapter_for
    from compactlm.bench.flops import forward_flops_per_token
    from compactlm.model.loading import load_model
    from compactlm.prune.importance import collect_importance

    model = load_model(teacher, "cuda", torch.bfloat16)
    batches = [torch.randint(0, TEACHER["vocab"], (4, SEQ)) for _ in range(8)]
    adapter = adapter_for("llama")
    collect_importance(model, adapter, batches[:1])
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    collect_importance(model, adapter, batches)
    torch.cuda.synchronize()
    tps = 8 * 4 * SEQ / (time.perf_counter() - t0)
    flops = forward_flops_per_token(json.loads((teacher / "config.json").read_text()), SEQ)
    return {"tokens_per_s": tps, "tflops": tps * flops / 1e12, "mfu": tps * flops / peak}


def fake_quant(teacher: Path, fmt: str) -> dict:
    import copy

    import numpy as np
    import torch

    from compactlm.model.loading import load_model
    from compactlm.quantize.ptq import quantize
    from compactlm.quantize.verify import fake_quant_quality

    model = load_model(teacher, "cuda", torch.bfloat16)
    reference = copy.deepcopy(model)
    rng = np.random.default_rng(0)
    calib = rng.integers(0, TEACHER["vocab"], (16, 512), dtype=np.int32)
    quantize(model, calib, fmt, kv_cache_fp8=False, exclude=[], batch_size=4, device="cuda", progress=False)
    q = fake_quant_quality(
        model, rng.integers(0, TEACHER["vocab"], (8, 512), dtype=np.int32), fmt, 4, "cuda", reference, progress=False
    )
    return {"quantized": q["quantized"], "reference": q["reference"]}


def main() -> int:
    import torch

    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "gpu_check.json"
    results: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if not torch.cuda.is_available():
        print("[gpu_check] no CUDA device: nothing to check", file=sys.stderr)
        out.write_text(json.dumps(results, indent=1))
        return 1
    results["gpu"] = torch.cuda.get_device_name()
    from compactlm.bench.flops import matmul_peak

    part(results, "matmul_peak_bf16", matmul_peak, "bfloat16", "cuda", 3.0)
    peak = results["matmul_peak_bf16"].get("flops") or float("nan")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        teacher, student = build(root / "teacher", TEACHER, 0), build(root / "student", STUDENT, 1)
        part(results, "distill_bf16", distill_mfu, root, teacher, student, peak)
        part(results, "importance_bf16", importance_mfu, teacher, peak)
        for fmt in ("fp8", "nvfp4"):
            part(results, f"fake_quant_{fmt}", fake_quant, teacher, fmt)
    out.write_text(json.dumps(results, indent=1, default=str))
    print(f"[gpu_check] wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
