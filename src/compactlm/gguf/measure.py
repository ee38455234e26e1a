"""What a GGUF file is worth, measured by llama.cpp itself: perplexity (`llama-perplexity`) and serving speed
(`llama-batched-bench`: prompt processing and generation tokens/s at several concurrencies).

Both run the real inference engine on this machine's CPU (or whatever backend the build has); no figure
here comes from transformers. The dequantized check through transformers' GGUF loader lives in the stage.
"""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from compactlm.gguf.llamacpp import LlamaCpp
from compactlm.manifest import open_nofollow

_PPL = re.compile(r"Final estimate: PPL = ([0-9.]+) \+/- ([0-9.]+)")


def _tool(cmd: list[str], log_file: Path, what: str) -> str:
    with open_nofollow(log_file, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
    proc = subprocess.run(cmd, capture_output=True, text=True)
    with open_nofollow(log_file, "a") as fh:
        fh.write(proc.stdout + proc.stderr)
    if proc.returncode:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-10:])
        raise RuntimeError(f"{Path(cmd[0]).name} failed (exit {proc.returncode}) on {what}; see {log_file}:\n{tail}")
    return proc.stdout + "\n" + proc.stderr


def perplexity(
    llama: LlamaCpp, model: Path, text: Path, ctx: int, threads: int, log_file: Path, chunks: int | None = None
) -> dict[str, float]:
    """llama.cpp's perplexity of `model` on `text`: chunks of `ctx` tokens, each scored on its second half
    (llama-perplexity's own protocol, so GGUF files are compared with each other, not with transformers)."""
    cmd = [
        str(llama.tool("llama-perplexity")),
        "-m",
        str(model),
        "-f",
        str(text),
        "-c",
        str(ctx),
        "-b",
        str(ctx),
        "-t",
        str(threads),
    ]
    if chunks:
        cmd += ["--chunks", str(chunks)]
    out = _tool(cmd, log_file, model.name)
    m = _PPL.search(out)
    if not m:
        raise RuntimeError(f"llama-perplexity printed no final estimate for {model.name}; see {log_file}")
    n = re.search(r"calculating perplexity over (\d+) chunks", out)
    return {"perplexity": float(m[1]), "stderr": float(m[2]), "chunks": int(n[1]) if n else None, "ctx": ctx}


def serving_speed(
    llama: LlamaCpp,
    model: Path,
    prompt_tokens: int,
    new_tokens: int,
    concurrency: list[int],
    threads: int,
    repeats: int,
    log_file: Path,
) -> dict[int, dict[str, float]]:
    """`llama-batched-bench` at every concurrency (separate prompts per sequence): the fastest of `repeats` runs.

    Per concurrency c: ttft_ms (the c prompts processed together), tpot_ms (one decode step of all c
    sequences), prompt_tokens_per_s and output_tokens_per_s (summed over the c sequences).
    """
    ctx = max(concurrency) * (prompt_tokens + new_tokens)
    cmd = [
        str(llama.tool("llama-batched-bench")),
        "-m",
        str(model),
        "-c",
        str(ctx),
        "-b",
        "2048",
        "-ub",
        "512",
        "-npp",
        str(prompt_tokens),
        "-ntg",
        str(new_tokens),
        "-npl",
        ",".join(map(str, concurrency)),
        "-t",
        str(threads),
        "--output-format",
        "jsonl",
    ]
    best: dict[int, dict[str, float]] = {}
    for _ in range(repeats):
        out = _tool(cmd, log_file, model.name)
        rows = [json.loads(line) for line in out.splitlines() if line.startswith('{"n_kv_max"')]
        if len(rows) != len(concurrency):
            raise RuntimeError(
                f"llama-batched-bench reported {len(rows)} of {len(concurrency)} runs for {model.name}; see {log_file}"
            )
        for r in rows:
            row = {
                "ttft_ms": r["t_pp"] * 1e3,
                "tpot_ms": r["t_tg"] * 1e3 / r["tg"],
                "prompt_tokens_per_s": r["speed_pp"],
                "output_tokens_per_s": r["speed_tg"],
                "prompt_tokens": r["pp"],
                "new_tokens": r["tg"],
                "threads": r["n_threads"],
            }
            if r["pl"] not in best or row["output_tokens_per_s"] > best[r["pl"]]["output_tokens_per_s"]:
                best[r["pl"]] = row
    return best


def summary_row(speed: dict[str, Any]) -> str:
    return (
        f"pp {speed['prompt_tokens_per_s']:.0f} tok/s, tg {speed['output_tokens_per_s']:.1f} tok/s, "
        f"TTFT {speed['ttft_ms']:.0f} ms, TPOT {speed['tpot_ms']:.1f} ms"
    )
