"""The gguf stage's schema: GGUFConfig and GGUFResult (one GGUFFile per file).

Torch-free: the launcher and the registry's root config read it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

from compactlm.config import ConfigError, _choice, _positive
from compactlm.results import ParamCounts

# llama.cpp quantization types by the name llama-quantize takes (lower case here), without those that need an
# importance matrix (IQ1/IQ2/IQ3 types); f16/bf16 are the unquantized conversions.
GGUF_TYPES = (
    "q8_0",
    "q6_k",
    "q5_k_m",
    "q5_k_s",
    "q5_0",
    "q5_1",
    "q4_k_m",
    "q4_k_s",
    "q4_0",
    "q4_1",
    "iq4_nl",
    "iq4_xs",
    "q3_k_l",
    "q3_k_m",
    "q3_k_s",
    "q2_k",
    "f16",
    "bf16",
)
GGUF_IMATRIX_TYPES = (
    "iq1_s",
    "iq1_m",
    "iq2_xxs",
    "iq2_xs",
    "iq2_s",
    "iq2_m",
    "iq3_xxs",
    "iq3_xs",
    "iq3_s",
    "iq3_m",
    "q2_k_s",
)
GGUF_OUTTYPES = ("f16", "bf16", "f32")
# model_type values whose checkpoints llama.cpp's converter turns into GGUF (Mistral becomes GGUF "llama").
GGUF_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3")


@dataclass
class GGUFConfig:
    """GGUF export with llama.cpp (converter and quantizer), its verification, and llama.cpp's CPU benchmark."""

    types: list[str] = field(default_factory=lambda: ["q8_0", "q6_k", "q4_k_m"])
    """llama.cpp quantization types made from the student's GGUF (any llama-quantize type by name)."""
    outtype: str = "f16"
    """Precision of the unquantized conversion every type is made from (f16, bf16 or f32)."""
    teacher: bool = True
    """Also convert the teacher (outtype only): the reference of the perplexity and speed tables."""
    perplexity: bool = True
    """llama.cpp's own perplexity (llama-perplexity) of every file on the run's held-out documents."""
    perplexity_chunks: Optional[int] = 32
    """Chunks of data.seq_len tokens llama-perplexity scores (None: all of the held-out text)."""
    hf_check: bool = True
    """Load every file back with transformers' GGUF loader (dequantized) and measure perplexity and KL to the
    source on the validation split, the evaluate stage's own measure (its GGUF rows come from here). Holds two
    float32 copies of the student at a time (source and file): turn it off for models that do not fit twice."""
    bench: bool = True
    """Serving speed with llama-batched-bench: teacher and student files, prompt and generation tokens/s, TTFT,
    TPOT; the bench stage takes its table from here."""
    concurrency: list[int] = field(default_factory=lambda: [1, 8])
    """Sequences decoded together in each benchmark run (1: the single-user latency)."""
    prompt_tokens: int = 64
    new_tokens: int = 32
    repeats: int = 2
    """Benchmark runs per file; the fastest is reported."""
    threads: Optional[int] = None
    """CPU threads for llama.cpp's tools (None: every core of the machine)."""
    llama_cpp: Optional[str] = None
    """A llama.cpp build to use (a checkout with build/bin/, or a folder with bin/ and convert_hf_to_gguf.py);
    None: build llama.cpp once into cache_dir from the llama-cpp-python sdist."""

    def __post_init__(self) -> None:
        types = list(self.types) if isinstance(self.types, (list, tuple)) else None
        if not types:
            raise ConfigError(
                f"gguf.types={self.types!r} must be a non-empty list of llama.cpp types, e.g. [q8_0, q4_k_m]"
            )
        normalized = []
        for t in types:
            name = str(t).lower()
            if name in GGUF_IMATRIX_TYPES:
                raise ConfigError(
                    f"gguf.types: {t!r} needs an importance matrix (llama-imatrix), which compactlm does "
                    f"not compute; choose from: {', '.join(GGUF_TYPES)}"
                )
            _choice("gguf.types", name, GGUF_TYPES)
            if name in normalized:
                raise ConfigError(f"gguf.types lists {t!r} twice")
            normalized.append(name)
        self.types = normalized
        _choice("gguf.outtype", self.outtype, GGUF_OUTTYPES)
        conc = list(self.concurrency) if isinstance(self.concurrency, (list, tuple)) else None
        if not conc:
            raise ConfigError(
                f"gguf.concurrency={self.concurrency!r} must be a non-empty list of integers >= 1, e.g. [1, 8]"
            )
        for c in conc:
            _positive("gguf.concurrency", c)
        self.concurrency = sorted(set(conc))
        for key in ("prompt_tokens", "new_tokens", "repeats"):
            _positive(f"gguf.{key}", getattr(self, key))
        _positive("gguf.perplexity_chunks", self.perplexity_chunks)
        _positive("gguf.threads", self.threads)


@dataclass
class GGUFFile:
    """One GGUF file of the gguf stage, verified against its source checkpoint."""

    model: str
    """Label of the source model (teacher, pruned, distilled)."""
    type: str
    """f16 / bf16 / f32 (the conversion) or a llama-quantize type (q8_0, q4_k_m, ...)."""
    file: str
    """Path relative to the stage folder."""
    size_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]
    """ggml type -> number of tensors (K-quants fall back to other types on rows not a multiple of 256)."""
    size_ratio: float
    """size / size of the same model's unquantized conversion."""
    perplexity: Optional[dict[str, Any]] = None
    """llama-perplexity on the held-out documents: {perplexity, stderr, chunks, ctx}."""
    hf: Optional[dict[str, Any]] = None
    """Dequantized through transformers on the validation split: {perplexity, loss, tokens, kl_to_source,
    top1_agreement_to_source}."""
    speed: list[dict[str, Any]] = field(default_factory=list)
    """llama-batched-bench rows: {concurrency, ttft_ms, tpot_ms, prompt_tokens_per_s, output_tokens_per_s, ...}."""


@dataclass
class GGUFResult:
    """gguf stage: llama.cpp files of the run's models, their quality and llama.cpp's serving speed."""

    llama_cpp: dict[str, str]
    student: str
    """Label of the model the quantized types were made from (distilled, else pruned, else teacher)."""
    outtype: str
    files: list[GGUFFile]
    params: dict[str, ParamCounts]
    """label -> parameter counts of each converted model (from its safetensors), for the ideal speed-up."""
    source_hf: Optional[dict[str, Any]] = None
    """The student checkpoint's own perplexity on the validation split (the reference of the `hf` figures)."""

    def file(self, model: str, type_: str) -> Optional[GGUFFile]:
        return next((f for f in self.files if f.model == model and f.type == type_), None)

    def summary(self) -> str:
        quant = [f for f in self.files if f.model == self.student and f.type != self.outtype]
        return f"{self.student}: " + ", ".join(
            f"{f.type} {f.size_bytes / 2**20:.0f} MiB"
            + (f" ppl {f.perplexity['perplexity']:.2f}" if f.perplexity else "")
            for f in quant
        )
