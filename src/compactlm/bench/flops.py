"""FLOPs of a decoder-only transformer counted from its config, and the machine's measured matmul peak.

Model FLOPs utilisation (MFU) = achieved FLOP/s / peak FLOP/s, where achieved FLOP/s counts the matmuls
the architecture needs per token (the convention of the PaLM paper, Appendix B) and the peak is measured
on this machine, in this process, for the dtype used — not a datasheet figure — with a short probe of large
matmuls. Elementwise work (norms, activations, softmax) is not counted: it is what MFU is meant to expose.

Per token, forward, with h = hidden, f = FFN width, a = attention heads × head_dim, k = KV heads × head_dim,
L = layers, V = vocabulary, s = sequence length:

    2 · L · (h·a + 2·h·k + a·h + 3·h·f)      projections and the gated MLP
    + 2 · L · 2 · s · a                       attention scores and weighted values (full s × s, as PaLM counts)
    + 2 · h · V                               the output layer

A training step costs 3× the forward (backward is twice the forward); logit distillation adds the teacher's
forward.
"""

from __future__ import annotations

import time
from typing import Any


def forward_flops_per_token(hf_config: dict[str, Any], seq_len: int) -> float:
    """Matmul FLOPs of one token's forward through the model described by `hf_config` (config.json as a dict)."""
    h = hf_config["hidden_size"]
    heads = hf_config["num_attention_heads"]
    head_dim = hf_config.get("head_dim") or h // heads
    a = heads * head_dim
    k = hf_config.get("num_key_value_heads", heads) * head_dim
    f = hf_config["intermediate_size"]
    layers = hf_config["num_hidden_layers"]
    projections = h * a + 2 * h * k + a * h + 3 * h * f
    attention = 2 * seq_len * a
    return 2.0 * layers * (projections + attention) + 2.0 * h * hf_config["vocab_size"]


def distill_flops_per_token(teacher: dict[str, Any], student: dict[str, Any], seq_len: int) -> float:
    """Teacher forward + student forward and backward, per training token."""
    return forward_flops_per_token(teacher, seq_len) + 3.0 * forward_flops_per_token(student, seq_len)


PROBE_SHAPES = ((2048, 2048, 2048), (4096, 1024, 4096), (2048, 576, 1536), (1024, 1536, 576))
"""(m, k, n) of the probe's matmuls: square and the skinny shapes of small models; the fastest one counts."""


def matmul_peak(dtype: str, device: str = "cpu", seconds: float = 1.5) -> dict[str, Any]:
    """Best FLOP/s of `PROBE_SHAPES` matmuls in `dtype` on `device`, each timed for about seconds / 3.

    Returns {"flops": best FLOP/s, "shape": (m, k, n) that reached it, "dtype", "device"}; on CUDA the probe
    uses 8192-sized squares as well, which are needed to approach a GPU's peak. On a shared machine call it
    more than once and keep the best: its speed drifts with the neighbours' load.
    """
    import torch  # heavy: this module is imported by scripts that may only count

    dt = getattr(torch, dtype)
    shapes = PROBE_SHAPES + (((8192, 8192, 8192),) if device.startswith("cuda") else ())
    best = {"flops": 0.0, "shape": None, "dtype": dtype, "device": device}
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device).to(dt)
        b = torch.randn(k, n, device=device).to(dt)
        a @ b  # warm-up: oneDNN / cuBLAS picks its kernel
        _sync(device)
        reps, elapsed = 0, 0.0
        t0 = time.perf_counter()
        while elapsed < seconds / len(shapes):
            a @ b
            reps += 1
            if reps % 4 == 0 or not device.startswith("cuda"):
                _sync(device)
                elapsed = time.perf_counter() - t0
        _sync(device)
        elapsed = time.perf_counter() - t0
        flops = 2.0 * m * k * n * reps / elapsed
        if flops > best["flops"]:
            best.update(flops=flops, shape=(m, k, n))
    return best


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch  # heavy: see matmul_peak

        torch.cuda.synchronize(device)
