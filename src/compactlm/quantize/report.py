"""The quantized variants' report rows: the quantize stage's export and the gguf stage's files, each against its own
unquantized source. Torch-free."""

from __future__ import annotations

from typing import Any

from compactlm import stages
from compactlm.report_blocks import Block, num, pct, text_table


def quantized_rows(rs: dict[str, Any]) -> tuple[list[str], list[list[str]]] | None:
    """FP8/NVFP4 (quantize stage) and GGUF (gguf stage) variants side by side: size, bits per weight, and
    quality retention against their own unquantized source measured the same way."""
    header = [
        "variant",
        "from",
        "size MiB",
        "bits/weight",
        "size vs source",
        "perplexity",
        "source perplexity",
        "retention (ppl)",
        "measured by",
        "KL to source",
        "top-1 vs source",
    ]
    rows = []
    q = rs.get("quantize")
    if q is not None:
        fq = q.quality or {}
        ref, quant = fq.get("reference"), fq.get("quantized")
        rows.append(
            [
                q.format,
                stages.model_labels()[q.source_stage],
                f"{q.export['safetensors_bytes'] / 2**20:.1f}",
                "-",
                f"{q.export['ratio_to_bf16']:.3f}x of bf16",
                num(quant and quant["perplexity"], ".3f"),
                num(ref and ref["perplexity"], ".3f"),
                pct(ref["perplexity"] / quant["perplexity"]) if quant else "-",
                "ModelOpt fake-quant",
                num(quant and quant.get("kl_to_teacher"), ".5f"),
                pct(quant and quant.get("top1_agreement")),
            ]
        )
    g = rs.get("gguf")
    if g is not None:
        for f in g.files:
            base = g.file(f.model, g.outtype)
            ppl = f.perplexity and f.perplexity["perplexity"]
            ref = base.perplexity and base.perplexity["perplexity"]
            rows.append(
                [
                    f"gguf {f.type}",
                    f.model,
                    f"{f.size_bytes / 2**20:.1f}",
                    f"{f.bits_per_weight:.2f}",
                    f"{f.size_ratio:.3f}x of {g.outtype}",
                    num(ppl, ".3f"),
                    num(ref, ".3f"),
                    pct(ref / ppl) if ppl and ref else "-",
                    "llama-perplexity" if ppl else "-",
                    num(f.hf and f.hf["kl_to_source"], ".5f"),
                    pct(f.hf and f.hf["top1_agreement_to_source"]),
                ]
            )
    return (header, rows) if rows else None


def report(conf, rs: dict[str, Any]) -> list:
    """The "Quantized variants" section."""
    blocks = []
    quantized = quantized_rows(rs)
    if quantized:
        blocks += [
            Block("h2", "Quantized variants"),
            Block(
                "p",
                "Each variant against its own unquantized source, measured the same way: FP8/NVFP4 by "
                "ModelOpt's fake-quantized forward on the validation split; GGUF by llama.cpp's "
                "llama-perplexity on the held-out documents (the source is its own unquantized GGUF). "
                "KL and top-1 for GGUF: the file dequantized by transformers vs the source checkpoint.",
            ),
            Block("table", quantized),
        ]
    return blocks


def summary(conf, rs: dict[str, Any]) -> list:
    """The launcher's terminal lines."""
    lines = []
    quantized = quantized_rows(rs)
    if quantized:
        lines += ["", "  quantized variants (each against its own unquantized source, measured the same way)"]
        lines += ["  " + row for row in text_table(*quantized)]
    return lines
