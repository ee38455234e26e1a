"""What a report is made of, torch-free and shared by the launcher's renderer (compactlm.launch.report) and every
stage's own report rows (`<package>/report.py`, named by the stage registry): blocks, and the plain text table the
terminal summary prints."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from compactlm import stages


@dataclass
class Block:
    """One piece of report.md / report.html: kind "h1" | "h2" | "p" (text), "table" ((header, rows)) or "image"
    ((path, caption))."""

    kind: str
    content: Any


def text_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right-aligned."""
    widths = [max(len(str(c)) for c in col) for col in zip(header, *rows)]

    def fmt(cells):
        return "  ".join(str(c).rjust(w) if i else str(c).ljust(w) for i, (c, w) in enumerate(zip(cells, widths)))

    return [fmt(header), "-" * len(fmt(header))] + [fmt(r) for r in rows]


def pct(x: float | None) -> str:
    """A fraction as a percentage with one decimal ("-" for none)."""
    return "-" if x is None else f"{x * 100:.1f}%"


def num(x, fmt: str) -> str:
    """`x` formatted with `fmt` ("-" for none)."""
    return "-" if x is None else format(x, fmt)


def ordered(models: dict[str, Any]) -> list[tuple[str, Any]]:
    """(label, value) of `models` in pipeline order (the registry's model labels), unknown labels last."""
    # pipeline order (the registry's), whatever order the manifest's JSON (sorted keys) stored them in
    rank = {k: i for i, k in enumerate(dict.fromkeys(stages.model_labels().values()))}
    return sorted(models.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))
