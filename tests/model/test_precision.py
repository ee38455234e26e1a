"""engine.dtype resolution: bfloat16 where the hardware has it (read from the CPU's flags), float32 elsewhere."""

import pytest
import torch

from compactlm.config import ConfigError, EngineConfig
from compactlm.model.precision import cpu_bf16_flags, resolve_precision

AUTO = EngineConfig(name="t", device="cpu")


def _cpuinfo(tmp_path, flags: str):
    f = tmp_path / "cpuinfo"
    f.write_text(
        f"processor\t: 0\nmodel name\t: Some CPU\nflags\t\t: fpu sse2 {flags} avx2\n\n"
        f"processor\t: 1\nflags\t\t: fpu sse2 {flags} avx2\n"
    )
    return f


@pytest.mark.parametrize(
    "flags,expected",
    [
        ("avx512f avx512_bf16", ("avx512_bf16",)),
        ("amx_tile amx_bf16 amx_int8 avx512_bf16", ("amx_bf16", "avx512_bf16")),
        ("avx512f avx512_vnni", ()),  # AVX-512 without its bf16 extension is not enough
    ],
)
def test_cpu_flags_are_read_from_cpuinfo(tmp_path, flags, expected):
    assert cpu_bf16_flags(_cpuinfo(tmp_path, flags)) == expected


def test_no_cpuinfo_means_no_flags(tmp_path):
    assert cpu_bf16_flags(tmp_path / "absent") == ()


def test_auto_picks_bf16_only_with_a_native_bf16_cpu():
    p = resolve_precision(AUTO, "cpu", cpu_flags=("amx_bf16",))
    assert (p.compute, p.frozen_dtype, p.autocast_dtype) == ("bfloat16", torch.bfloat16, torch.bfloat16)
    assert "amx_bf16" in p.reason and p.record() == {
        "device": "cpu",
        "compute": "bfloat16",
        "autocast": True,
        "reason": p.reason,
    }
    q = resolve_precision(AUTO, "cpu", cpu_flags=())
    assert (q.compute, q.frozen_dtype, q.autocast_dtype) == ("float32", torch.float32, None)
    assert "no amx_bf16 or avx512_bf16" in q.reason and not q.record()["autocast"]


def test_explicit_dtype_wins_over_the_hardware():
    p = resolve_precision(EngineConfig(name="t", device="cpu", dtype="float32"), "cpu", cpu_flags=("amx_bf16",))
    assert p.compute == "float32" and p.reason == "engine.dtype=float32"
    p = resolve_precision(EngineConfig(name="t", device="cpu", dtype="bfloat16"), "cpu", cpu_flags=())
    assert p.compute == "bfloat16"


def test_autocast_runs_float32_weights_in_bf16_and_float32_is_untouched():
    lin = torch.nn.Linear(8, 4)
    x = torch.randn(2, 8)
    with resolve_precision(AUTO, "cpu", cpu_flags=("avx512_bf16",)).autocast():
        assert lin(x).dtype == torch.bfloat16
    with resolve_precision(AUTO, "cpu", cpu_flags=()).autocast():
        assert lin(x).dtype == torch.float32


def test_unknown_dtype_is_refused_with_the_key():
    with pytest.raises(ConfigError, match="engine.dtype"):
        EngineConfig(name="t", dtype="fp8")
