"""tests/browser.py against real headless Chromium: tables are read, good images decode, corrupt ones are flagged.

Skipped when Chromium is not installed (failed instead when the CI environment variable is set).
"""

from __future__ import annotations

import base64
import struct
import zlib
from pathlib import Path

import pytest
from browser import find_chromium, inspect_layout, inspect_page, parse_dom, render_dom, require_chromium, screenshot

from compactlm.launch.report import Block, split_columns, to_html


def png_bytes(width: int = 40, height: int = 30, rgb: tuple[int, int, int] = (200, 30, 30)) -> bytes:
    """A valid 8-bit RGB PNG of one colour, built with zlib and struct."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(rgb) * width for _ in range(height))  # filter byte 0 + pixels, per row
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
        + chunk(b"IDAT", zlib.compress(rows))
        + chunk(b"IEND", b"")
    )


def data_uri(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


GOOD = png_bytes()
CORRUPT = {  # id -> src; each keeps something a naive check would accept
    "truncated": data_uri(GOOD[: len(GOOD) // 2]),  # valid header: naturalWidth is still 40
    "bitflip": data_uri(GOOD[:45] + bytes([GOOD[45] ^ 0xFF]) + GOOD[46:]),  # a byte of the IDAT stream
    "not-base64": "data:image/png;base64,!!not*base64??",
    "not-png": data_uri(b"<svg>no</svg>" * 8),
}


def write_page(folder: Path, images: dict[str, str]) -> Path:
    imgs = "\n".join(f'<img id="{k}" alt="{k}" src="{src}">' for k, src in images.items())
    page = folder / "page.html"
    page.write_text(
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>t</title></head><body>"
        "<table><thead><tr><th>model</th><th>tok/s</th></tr></thead>"
        "<tbody><tr><td>teacher</td><td>20.5</td></tr><tr><td>student  &amp; co</td><td>30.1</td></tr></tbody></table>"
        f"{imgs}</body></html>",
        encoding="utf-8",
    )
    return page


def test_find_chromium_returns_a_path_or_none():
    path = find_chromium()
    assert path is None or Path(path).exists()


def test_parse_dom_without_a_browser():
    dom = (
        "<html><body><table><tbody><tr><th>a</th><th>b</th></tr><tr><td> 1\n x </td>"
        "<td><table><tbody><tr><td>inner</td></tr></tbody></table>after</td></tr></tbody></table>"
        "<script>var t = '<td>no</td>';</script><img src='x.png' alt='X'></body></html>"
    )
    page = parse_dom(dom)
    assert page.tables == [[["a", "b"], ["1 x", "after"]], [["inner"]]]
    assert [(i.src, i.alt, i.decoded) for i in page.images] == [("x.png", "X", None)]
    assert page.probed_images is None


def test_render_dom_runs_scripts(tmp_path):
    require_chromium()
    page = tmp_path / "s.html"
    page.write_text(
        "<html><body><p id='p'>static</p><script>document.getElementById('p').textContent = "
        "'from script'</script></body></html>"
    )
    assert '<p id="p">from script</p>' in render_dom(page)


def test_inspect_page_reads_table_and_flags_corrupt_images(tmp_path):
    require_chromium()
    page = write_page(tmp_path, {"good": data_uri(GOOD), **CORRUPT})
    original = page.read_text()
    seen = inspect_page(page)
    assert seen.tables == [[["model", "tok/s"], ["teacher", "20.5"], ["student & co", "30.1"]]]
    images = {img.alt: img for img in seen.images}
    assert list(images) == ["good", *CORRUPT] and seen.probed_images == 5
    good = images["good"]
    assert good.decoded is True and (good.natural_width, good.natural_height) == (40, 30) and good.error is None
    assert good.src == data_uri(GOOD)
    for name in CORRUPT:
        assert images[name].decoded is False, name
        assert images[name].error, name
    assert images["truncated"].natural_width == 40  # the header alone fools naturalWidth, not the probe
    assert page.read_text() == original  # the probe ran on a copy


def test_inspect_page_resolves_relative_image_files(tmp_path):
    require_chromium()
    (tmp_path / "plots").mkdir()
    (tmp_path / "plots" / "ok.png").write_bytes(GOOD)
    (tmp_path / "plots" / "cut.png").write_bytes(GOOD[:60])
    seen = inspect_page(write_page(tmp_path, {"ok": "plots/ok.png", "cut": "plots/cut.png", "gone": "plots/no.png"}))
    assert {i.alt: i.decoded for i in seen.images} == {"ok": True, "cut": False, "gone": False}


def test_report_html_renders_with_its_plot(tmp_path):
    """The report's own HTML writer: its table and embedded base64 plot survive a real browser."""
    require_chromium()
    from compactlm.launch.report import Block, to_html

    plot = tmp_path / "loss.png"
    plot.write_bytes(png_bytes(64, 48, (20, 90, 200)))
    blocks = [
        Block("h1", "run"),
        Block("table", (["model", "perplexity"], [["teacher", "12.3"]])),
        Block("image", (plot, "Loss curve")),
    ]
    page = tmp_path / "report.html"
    page.write_text(to_html(blocks), encoding="utf-8")
    seen = inspect_page(page)
    assert seen.tables == [[["model", "perplexity"], ["teacher", "12.3"]]]
    assert [(i.alt, i.decoded, i.natural_width) for i in seen.images] == [("Loss curve", True, 64)]


def test_render_dom_errors(tmp_path, monkeypatch):
    import browser

    with pytest.raises(FileNotFoundError):
        render_dom(tmp_path / "missing.html")
    page = tmp_path / "p.html"
    page.write_text("<p>x</p>")
    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    with pytest.raises(FileNotFoundError, match="apt-get install -y --no-install-recommends chromium"):
        render_dom(page)


def test_require_chromium_skips_or_fails_under_ci(monkeypatch):
    import browser

    monkeypatch.setattr(browser.shutil, "which", lambda name: None)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="apt-get update && apt-get install"):
        require_chromium()
    monkeypatch.setenv("CI", "1")
    with pytest.raises(pytest.fail.Exception, match="CI is set"):
        require_chromium()


def test_a_wide_table_fits_a_1280px_window(tmp_path):
    """A quality table of many tasks and variants (it ran off the right edge at 1400 px) is split into tables that
    repeat the model column, and no element of the page is wider than the window."""
    require_chromium()
    tasks = ["heldout_continuation", "arc_easy_pl", "hellaswag_pl"]
    header = ["model", "params", "perplexity", "KL to teacher", "top-1 agreement", *[f"{t} acc" for t in tasks]]
    header += ["recovery (ppl)", *[f"recovery ({t})" for t in tasks], "recovery (aggregate)", "decode tok/s", "TPOT ms"]
    labels = ["teacher", "pruned", "distilled", "sft", "dpo", "quantized", "gguf q8_0", "gguf q4_k_m"]
    rows = [[label, *[f"{1234.5678 + i:.4f}" for i in range(len(header) - 1)]] for label in labels]
    parts = split_columns(header, rows)
    assert len(parts) > 1 and all(h[0] == "model" and [r[0] for r in rs] == labels for h, rs in parts)
    assert [c for h, _ in parts for c in h[1:]] == header[1:]  # every column once, in order
    page = tmp_path / "wide.html"
    page.write_text(to_html([Block("h1", "run"), Block("table", (header, rows))]), encoding="utf-8")
    layout = inspect_layout(page, width=1280)
    assert layout.inner_width == 1280 and layout.scroll_width <= 1280
    assert len(layout.tables) == len(parts)
    assert [e for e in layout.elements if e["left"] < 0 or e["right"] > 1280] == []
    assert screenshot(page, tmp_path / "wide.png").stat().st_size > 0


def test_split_columns_keeps_a_table_that_fits():
    header, rows = ["model", "perplexity"], [["teacher", "12.345"]]
    assert split_columns(header, rows) == [(header, rows)]
