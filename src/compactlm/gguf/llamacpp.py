"""llama.cpp, built once into the cache from the sources the `llama-cpp-python` sdist vendors.

llama.cpp has no Debian or PyPI binary for these machines, but the `llama-cpp-python` source distribution
(a registry package) carries the whole of llama.cpp: `convert_hf_to_gguf.py`, its `gguf-py`, and the C++
sources of `llama-quantize`, `llama-perplexity` and `llama-batched-bench`. :func:`ensure` downloads that
sdist with pip, builds the three tools with CMake for this CPU (`GGML_NATIVE`), and publishes

    <cache_dir>/llama.cpp/<version>-<cpu key>/
        src/     the vendored llama.cpp tree (the converter runs from here, with its own gguf-py)
        bin/     llama-quantize, llama-perplexity, llama-batched-bench
        build.json   written last: version, CMake flags, build seconds

A folder without `build.json` is never used (an interrupted build is removed and redone). Concurrent
callers (two stages, two test processes) wait on a file lock instead of building twice. The CPU key is
part of the folder name because a native build may not run on another CPU model.

`gguf.llama_cpp=<folder>` uses an existing llama.cpp build instead (a checkout with `build/bin/` or a
folder with `bin/` and `convert_hf_to_gguf.py`), e.g. on a compute node without network;
`COMPACTLM_LLAMA_CPP_SDIST=<llama_cpp_python-0.3.36.tar.gz>` builds from a downloaded sdist (the training
image sets it) instead of downloading one.

    python -m compactlm.gguf.llamacpp [--cache-dir DIR]    # build now (what `make llama-cpp` runs)
"""

from __future__ import annotations

import argparse
import fcntl
import hashlib
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from compactlm.errors import ConfigError
from compactlm.manifest import atomic_write_text, open_nofollow

LLAMA_CPP_PYTHON = "0.3.36"
"""The `llama-cpp-python` sdist whose vendored llama.cpp is built (pinned: its tools' flags and output
formats are what this package parses)."""
TOOLS = ("llama-quantize", "llama-perplexity", "llama-batched-bench")
CONVERTER = "convert_hf_to_gguf.py"
BUILD_RECORD = "build.json"
CMAKE_FLAGS = (
    "-DCMAKE_BUILD_TYPE=Release",
    "-DGGML_NATIVE=ON",
    "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF",
    "-DLLAMA_BUILD_EXAMPLES=OFF",
    "-DLLAMA_BUILD_SERVER=OFF",
    "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF",
    "-DLLAMA_USE_PREBUILT_UI=OFF",
    "-DLLAMA_OPENSSL=OFF",
)


@dataclass(frozen=True)
class LlamaCpp:
    """Where a usable llama.cpp is: its tools and its converter."""

    root: Path
    """The llama.cpp source tree (holds convert_hf_to_gguf.py and gguf-py)."""
    bin: Path
    version: str

    def tool(self, name: str) -> Path:
        return self.bin / name

    @property
    def converter(self) -> Path:
        return self.root / CONVERTER

    def record(self) -> dict[str, str]:
        return {"version": self.version, "root": str(self.root), "bin": str(self.bin)}


def cpu_key() -> str:
    """A short key for this CPU's instruction sets: a native build is only reused on the same kind of CPU."""
    flags = ""
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.startswith(("flags", "Features")):
                flags = " ".join(sorted(line.split(":", 1)[-1].split()))
                break
    except OSError:
        pass
    return hashlib.sha256(f"{platform.machine()} {flags}".encode()).hexdigest()[:10]


def cache_home(cache_dir: str | Path) -> Path:
    return Path(os.path.expanduser(str(cache_dir))) / "llama.cpp" / f"{LLAMA_CPP_PYTHON}-{cpu_key()}"


def _complete(home: Path) -> bool:
    return (home / BUILD_RECORD).is_file() and all((home / "bin" / t).is_file() for t in TOOLS)


def from_folder(folder: str | Path, key: str = "gguf.llama_cpp") -> LlamaCpp:
    """A llama.cpp the user built: a checkout with build/bin/, or a folder with bin/ and the converter."""
    root = Path(os.path.expanduser(str(folder))).resolve()
    bins = [b for b in (root / "bin", root / "build" / "bin") if b.is_dir()]
    missing_conv = not (root / CONVERTER).is_file()
    if not bins or missing_conv or any(not (bins[0] / t).is_file() for t in TOOLS):
        raise ConfigError(
            f"{key}={str(folder)!r} is not a llama.cpp build: it needs {CONVERTER} and "
            f"{', '.join(TOOLS)} in bin/ or build/bin/ (unset {key} to build llama.cpp into the cache)"
        )
    return LlamaCpp(root=root, bin=bins[0], version=_version_of(root))


def _version_of(root: Path) -> str:
    rec = root.parent / BUILD_RECORD
    if rec.is_file():
        return json.loads(rec.read_text())["version"]
    return "user build"


def find(cache_dir: str | Path, folder: str | None = None) -> LlamaCpp | None:
    """The llama.cpp to use without building: `folder` if given, else a finished build in the cache."""
    if folder:
        return from_folder(folder)
    home = cache_home(cache_dir)
    if _complete(home):
        return LlamaCpp(root=home / "src", bin=home / "bin", version=f"llama-cpp-python {LLAMA_CPP_PYTHON}")
    return None


@contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open_nofollow(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure(
    cache_dir: str | Path,
    folder: str | None = None,
    log: Callable[[str], None] = print,
    sdist: str | Path | None = None,
) -> LlamaCpp:
    """The llama.cpp to use, building it into the cache first if no finished build is there."""
    found = find(cache_dir, folder)
    if found:
        return found
    home = cache_home(cache_dir)
    with _locked(home.parent / f".{home.name}.lock"):
        found = find(cache_dir)  # another process may have finished it while this one waited
        if found:
            return found
        build(home, log=log, sdist=sdist or os.environ.get("COMPACTLM_LLAMA_CPP_SDIST") or None)
    return find(cache_dir)


def _download_sdist(dest: Path, log: Callable[[str], None]) -> Path:
    log(f"[gguf] downloading the llama-cpp-python {LLAMA_CPP_PYTHON} source distribution (vendors llama.cpp)")
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--quiet",
        "--no-deps",
        "--no-binary",
        ":all:",
        f"llama-cpp-python=={LLAMA_CPP_PYTHON}",
        "-d",
        str(dest),
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    found = sorted(dest.glob("llama_cpp_python-*.tar.gz"))
    if proc.returncode or not found:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(
            "could not download the llama-cpp-python sdist (llama.cpp's sources): "
            f"{' / '.join(tail)}; on a machine without network, build llama.cpp elsewhere and set "
            "gguf.llama_cpp=<its folder>"
        )
    return found[0]


def build(home: Path, log: Callable[[str], None] = print, sdist: str | Path | None = None) -> None:
    """Download (unless `sdist` is given), extract and build llama.cpp's tools into `home` (published last)."""
    for tool in ("cmake", "c++"):
        if shutil.which(tool) is None:
            raise RuntimeError(
                f"building llama.cpp needs `{tool}` on PATH (e.g. apt-get install cmake g++), or set "
                "gguf.llama_cpp=<a llama.cpp build>"
            )
    if home.exists():  # an interrupted build: never trusted, redone
        shutil.rmtree(home)
    home.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(dir=home.parent, prefix=f".{home.name}.", suffix=".tmp"))
    try:
        t0 = time.monotonic()
        archive = Path(sdist) if sdist else _download_sdist(work, log)
        prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON}/vendor/llama.cpp/"
        with tarfile.open(archive) as tar:
            members = [m for m in tar.getmembers() if m.name.startswith(prefix)]
            for m in members:
                m.name = m.name[len(prefix) :]
            tar.extractall(work / "src", members=[m for m in members if m.name], filter="data")
        if not sdist:
            archive.unlink()  # 76 MB that the build no longer needs
        build_dir = work / "build"
        gen = ["-G", "Ninja"] if shutil.which("ninja") else []
        jobs = str(os.cpu_count() or 1)
        log(f"[gguf] building llama.cpp ({', '.join(TOOLS)}) with {jobs} jobs; once per machine, into {home}")
        _run(
            ["cmake", "-S", str(work / "src"), "-B", str(build_dir), *gen, *CMAKE_FLAGS], build_dir.with_suffix(".log")
        )
        _run_with_progress(
            ["cmake", "--build", str(build_dir), "-j", jobs, "--target", *TOOLS], build_dir.with_suffix(".log"), log
        )
        (work / "bin").mkdir()
        for t in TOOLS:
            exe = next(build_dir.rglob(t))
            shutil.copy2(exe, work / "bin" / t)  # write-ok: into this build's own mkdtemp folder
        shutil.rmtree(build_dir)
        seconds = round(time.monotonic() - t0, 1)
        atomic_write_text(
            work / BUILD_RECORD,
            json.dumps(
                {
                    "llama_cpp_python": LLAMA_CPP_PYTHON,
                    "version": f"llama-cpp-python {LLAMA_CPP_PYTHON}",
                    "cmake_flags": list(CMAKE_FLAGS),
                    "cpu_key": cpu_key(),
                    "build_seconds": seconds,
                },
                indent=2,
            ),
        )
        os.replace(work, home)
        log(f"[gguf] llama.cpp built in {seconds:.0f} s")
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise


def _run(cmd: list[str], log_file: Path) -> None:
    with open_nofollow(log_file, "a") as fh:
        proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise RuntimeError(
            f"`{' '.join(cmd[:3])} ...` failed (exit {proc.returncode}); see {log_file}:\n"
            + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        )


def _run_with_progress(cmd: list[str], log_file: Path, log: Callable[[str], None]) -> None:
    """Run the build, printing its progress at every tenth of the steps (ninja/make print [i/n] or [ p%])."""
    step = re.compile(r"^\[\s*(\d+)/(\d+)\]|^\[\s*(\d+)%\]")
    shown = -1
    with open_nofollow(log_file, "a") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for line in proc.stdout:
            fh.write(line)
            m = step.match(line)
            if m:
                pct = int(m[1]) * 100 // int(m[2]) if m[1] else int(m[3])
                if pct // 10 > shown:
                    shown = pct // 10
                    log(f"[gguf] building llama.cpp: {pct}%")
        proc.wait()
    if proc.returncode:
        raise RuntimeError(
            f"building llama.cpp failed (exit {proc.returncode}); see {log_file}:\n"
            + "\n".join(log_file.read_text(errors="replace").splitlines()[-15:])
        )


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m compactlm.gguf.llamacpp",
        description="Build llama.cpp's converter and tools into the compactlm cache (once).",
    )
    p.add_argument(
        "--cache-dir",
        default=os.environ.get("COMPACTLM_CACHE", "~/.cache/compactlm"),
        help="the run's cache_dir (default: $COMPACTLM_CACHE or ~/.cache/compactlm)",
    )
    p.add_argument("--sdist", help="a downloaded llama_cpp_python-<version>.tar.gz to build from (no download)")
    args = p.parse_args(argv)
    found = ensure(args.cache_dir, log=lambda m: print(m, flush=True), sdist=args.sdist)
    print(found.bin)
    return 0


if __name__ == "__main__":
    sys.exit(main())
