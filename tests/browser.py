"""Check an HTML page the way a reader sees it: headless Chromium renders it, the stdlib parses the result.

    find_chromium()            -> path of chromium / chromium-browser / google-chrome, or None
    render_dom(path)           -> the DOM Chromium serialises after loading the page (scripts run)
    parse_dom(dom)             -> Page(tables, images) from that DOM, with html.parser
    inspect_page(path)         -> Page for `path`, every <img> marked decoded or not by the browser itself
    require_chromium()         -> the path, or pytest.skip with the install line (pytest.fail when $CI is set)
    inspect_layout(path, width) -> Layout at a `width` px wide window: page scroll width, every element's box,
                                  the order of the body's first children (measured by the browser's own JS)
    screenshot(path, png, width, height) -> a PNG of the page's first screen (`--screenshot`)

Whether an image decoded is decided in the browser, not guessed from its bytes: `inspect_page` renders a
copy of the page with a small probe script appended. After the `load` event it asks Chromium for a
fully decoded bitmap of every <img> (`createImageBitmap(img)`), and writes the outcome into data-probe-*
attributes, which `--dump-dom` then serialises. `img.naturalWidth` and `img.decode()` alone are not
enough: Chromium decodes PNGs progressively, so a truncated PNG, one with a bad CRC or a corrupt IDAT
stream still reports its header's size and a resolved `decode()`; `createImageBitmap` rejects them.
An invalid base64 payload or bytes that are not an image leave the element "broken" (naturalWidth 0).

`--virtual-time-budget` makes headless Chromium wait until the page is idle (the probe's promises have
settled) before dumping; without it the dump can race the probe. The probe stamps <html> when done, and
`inspect_page` raises if that stamp is missing rather than report images it never checked.
"""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path

INSTALL = "apt-get update && apt-get install -y --no-install-recommends chromium"
NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")

# Root needs --no-sandbox (and containers often lack the user namespaces the sandbox wants);
# --disable-dev-shm-usage because a container's /dev/shm is often 64 MB, too small for Chromium
# (Debian's launcher tries to add it itself, but its /dev/shm check is broken when findmnt prints
# two lines); a throw-away --user-data-dir so runs never share or lock a profile.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--no-first-run",
    "--no-default-browser-check",
    "--disable-extensions",
    "--mute-audio",
)

PROBE_DONE = "data-probe-done"
PROBE = """<script id="compactlm-image-probe">
addEventListener("load", async () => {
  const settle = img => img.complete ? null : new Promise(ok => {
    img.addEventListener("load", ok); img.addEventListener("error", ok); img.loading = "eager"; });
  await Promise.all(Array.from(document.images, async img => {
    await settle(img);
    const d = img.dataset;
    d.probeNaturalWidth = img.naturalWidth;
    d.probeNaturalHeight = img.naturalHeight;
    try {
      const bitmap = await createImageBitmap(img);  // a full decode: rejects truncated or corrupt data
      d.probeDecoded = bitmap.width > 0 && bitmap.height > 0 ? "yes" : "no";
      bitmap.close();
    } catch (e) {
      d.probeDecoded = "no";
      d.probeError = e.name + ": " + e.message;
    }
  }));
  document.documentElement.setAttribute("data-probe-done", String(document.images.length));
});
</script>"""


@dataclass
class Image:
    """One <img> of the rendered page. `decoded` is None when the page was not probed (`parse_dom` alone)."""

    src: str
    alt: str = ""
    decoded: bool | None = None
    natural_width: int | None = None
    natural_height: int | None = None
    error: str | None = None


@dataclass
class Page:
    """Tables in document order, each a list of rows of cell texts (whitespace collapsed), and images."""

    tables: list[list[list[str]]] = field(default_factory=list)
    images: list[Image] = field(default_factory=list)
    probed_images: int | None = None  # how many images the probe checked; None when there was no probe


def find_chromium() -> str | None:
    """The first of chromium, chromium-browser, google-chrome(-stable) found on PATH, else None."""
    return next((p for p in map(shutil.which, NAMES) if p), None)


def require_chromium() -> str:
    """Chromium's path for a test; skips the test (fails it when the CI env variable is set) when absent."""
    import pytest

    path = find_chromium()
    if path is None:
        message = f"headless Chromium is not installed; install it with: {INSTALL}"
        if os.environ.get("CI"):
            pytest.fail(message + " (CI is set, so this is not skipped)")
        pytest.skip(message)
    return path


def render_dom(
    html_path: str | Path,
    timeout: float = 60,
    *,
    virtual_time_budget_ms: int = 5000,
    chromium: str | None = None,
    flags: tuple[str, ...] = (),
    dump: bool = True,
) -> str:
    """Load `html_path` in headless Chromium and return the DOM it serialises (`--dump-dom`) as a string.

    Scripts run; the dump happens once the page is idle or `virtual_time_budget_ms` of virtual time has
    passed. Raises FileNotFoundError without Chromium or page, TimeoutError after `timeout` seconds
    (the whole process group is killed), RuntimeError when Chromium fails or prints nothing.
    """
    html_path = Path(html_path).resolve()
    if not html_path.is_file():
        raise FileNotFoundError(html_path)
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError(f"no Chromium on PATH ({', '.join(NAMES)}); install it with: {INSTALL}")
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile:
        cmd = [
            chromium,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--virtual-time-budget={virtual_time_budget_ms}",
            *flags,
            *(["--dump-dom"] if dump else []),
            html_path.as_uri(),
        ]
        # Own process group: on timeout the browser's helper processes (zygote, renderer) die with it.
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
            raise TimeoutError(f"chromium did not render {html_path} within {timeout} s") from None
    if proc.returncode != 0 or (dump and not out.strip()):
        noise = re.compile(r"dbus|unexpected operator")  # harmless in a container without a session bus
        lines = [ln for ln in err.decode(errors="replace").splitlines() if not noise.search(ln)]
        raise RuntimeError(f"chromium exited with {proc.returncode} rendering {html_path}:\n" + "\n".join(lines[-20:]))
    return out.decode("utf-8", errors="replace")


class _DomParser(HTMLParser):
    """Collects tables (cell texts) and <img> attributes; Chromium's serialisation closes every element."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.page = Page()
        self._tables: list[list[list[str]]] = []  # open tables, innermost last
        self._cell: list[str] | None = None
        self._cells: list[list[str] | None] = []  # the open cell of each enclosing table
        self._skip = 0  # inside <script> / <style>

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag in ("script", "style"):
            self._skip += 1
        elif tag == "html" and PROBE_DONE in a:
            self.page.probed_images = int(a[PROBE_DONE])
        elif tag == "table":
            self._cells.append(self._cell)
            self._cell = None
            self._tables.append([])
            self.page.tables.append(self._tables[-1])
        elif tag == "tr" and self._tables:
            self._tables[-1].append([])
        elif tag in ("td", "th") and self._tables:
            if not self._tables[-1]:
                self._tables[-1].append([])
            self._cell = []
        elif tag == "img":
            decoded = a.get("data-probe-decoded")
            number = lambda k: int(a[k]) if a.get(k, "").isdigit() else None  # noqa: E731
            self.page.images.append(
                Image(
                    src=a.get("src") or "",
                    alt=a.get("alt") or "",
                    decoded=None if decoded is None else decoded == "yes",
                    natural_width=number("data-probe-natural-width"),
                    natural_height=number("data-probe-natural-height"),
                    error=a.get("data-probe-error"),
                )
            )

    def handle_endtag(self, tag):
        if tag in ("script", "style"):
            self._skip = max(self._skip - 1, 0)
        elif tag in ("td", "th") and self._cell is not None and self._tables:
            self._tables[-1][-1].append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "table" and self._tables:
            self._tables.pop()
            self._cell = self._cells.pop()

    def handle_data(self, data):
        if self._cell is not None and not self._skip:
            self._cell.append(data)


def parse_dom(dom: str) -> Page:
    """Tables and images of a serialised DOM (from `render_dom`); image `decoded` is set only for probed DOMs."""
    parser = _DomParser()
    parser.feed(dom)
    parser.close()
    return parser.page


def inspect_page(
    html_path: str | Path, timeout: float = 60, *, virtual_time_budget_ms: int = 10000, chromium: str | None = None
) -> Page:
    """Render a probed copy of `html_path` and return its tables and images, each image marked decoded or not.

    The copy lives in a temporary folder with a <base href> to the original's folder, so relative image
    paths still resolve; the original file is never modified. Raises RuntimeError when the probe did not
    finish (a page whose own scripts block it, or a budget too small), besides `render_dom`'s errors.
    """
    html_path = Path(html_path).resolve()
    text = html_path.read_text(encoding="utf-8", errors="replace")
    if not re.search(r"<base\s", text, re.I):
        base = f'<base href="{html.escape(html_path.parent.as_uri() + "/")}">'
        # right after <head>, else <html>, else the doctype: a <base> before the doctype means quirks mode
        at = next(
            (
                m.end()
                for p in (r"<head\b[^>]*>", r"<html\b[^>]*>", r"<!doctype[^>]*>")
                if (m := re.search(p, text, re.I))
            ),
            0,
        )
        text = text[:at] + base + text[at:]
    ends = [m.start() for m in re.finditer(r"</body\s*>", text, re.I)]
    text = text[: ends[-1]] + PROBE + text[ends[-1] :] if ends else text + PROBE
    with tempfile.TemporaryDirectory(prefix="inspect-page-") as tmp:
        copy = Path(tmp) / html_path.name
        copy.write_text(text, encoding="utf-8")
        page = parse_dom(render_dom(copy, timeout, virtual_time_budget_ms=virtual_time_budget_ms, chromium=chromium))
    if page.probed_images is None:
        raise RuntimeError(
            f"the image probe did not finish rendering {html_path}: its scripts may block "
            f"it, or virtual_time_budget_ms={virtual_time_budget_ms} is too small"
        )
    if page.probed_images != len(page.images):
        raise RuntimeError(f"the probe saw {page.probed_images} images but the DOM has {len(page.images)}")
    return page


LAYOUT_PROBE = """<script id="compactlm-layout-probe">
addEventListener("load", () => {
  const box = e => { const b = e.getBoundingClientRect();
    return {tag: e.tagName.toLowerCase(), cls: e.className || "", left: b.left, right: b.right, width: b.width}; };
  const shown = Array.from(document.body.children).filter(e => !["SCRIPT", "STYLE"].includes(e.tagName));
  const layout = {
    innerWidth: window.innerWidth,
    scrollWidth: document.documentElement.scrollWidth,
    tables: Array.from(document.querySelectorAll("table"), box),
    elements: Array.from(document.body.querySelectorAll("*"), box),
    first: shown.slice(0, 6).map(e => e.tagName.toLowerCase() + (e.className ? "." + e.className : "")),
  };
  document.documentElement.setAttribute("data-layout", JSON.stringify(layout));
});
</script>"""


@dataclass
class Layout:
    """What the browser measured at one window width (CSS px): the page's scroll width, every table's and every
    element's box (tag, cls, left, right, width), and the body's first children as 'tag' or 'tag.class'."""

    inner_width: int
    scroll_width: int
    tables: list[dict]
    elements: list[dict]
    first: list[str]


def _with_script(html_path: Path, script: str) -> str:
    text = html_path.read_text(encoding="utf-8", errors="replace")
    ends = [m.start() for m in re.finditer(r"</body\s*>", text, re.I)]
    return text[: ends[-1]] + script + text[ends[-1] :] if ends else text + script


def inspect_layout(html_path: str | Path, width: int = 1280, height: int = 900, timeout: float = 60) -> Layout:
    """Render `html_path` in a `width` x `height` window and return what the page's own layout measured.

    The probe runs on a copy in a temporary folder, so relative links do not resolve: the page must be
    self-contained, as the report is (its images are embedded)."""
    html_path = Path(html_path).resolve()
    with tempfile.TemporaryDirectory(prefix="inspect-layout-") as tmp:
        copy = Path(tmp) / html_path.name
        copy.write_text(_with_script(html_path, LAYOUT_PROBE), encoding="utf-8")
        dom = render_dom(copy, timeout, flags=(f"--window-size={width},{height}", "--hide-scrollbars"))
    match = re.search(r'<html[^>]*\sdata-layout="([^"]*)"', dom)
    if match is None:
        raise RuntimeError(f"the layout probe did not finish rendering {html_path}")
    data = json.loads(html.unescape(match.group(1)))
    return Layout(data["innerWidth"], data["scrollWidth"], data["tables"], data["elements"], data["first"])


def screenshot(
    html_path: str | Path, png: str | Path, width: int = 1280, height: int = 900, timeout: float = 60
) -> Path:
    """Save the first `width` x `height` px of `html_path` as rendered by headless Chromium (`--screenshot`)."""
    png = Path(png).resolve()
    # every compositor stage runs before the capture, so the page is painted whole, not tile by tile
    flags = (
        f"--window-size={width},{height}",
        "--hide-scrollbars",
        "--run-all-compositor-stages-before-draw",
        f"--screenshot={png}",
    )
    render_dom(html_path, timeout, flags=flags, dump=False)
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {html_path} to {png}")
    return png
