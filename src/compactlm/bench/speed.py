"""Inference speed of a causal LM under transformers' `generate`: TTFT, TPOT, output tokens/s, peak memory.

One measurement is greedy decoding of a fixed batch of prompts, every sequence producing exactly
`new_tokens` tokens (`min_new_tokens == max_new_tokens`, so EOS cannot end a run early and every model
does the same amount of work). Definitions, all from one `generate` call:

- TTFT (ms): from calling `generate` until the first new token of the batch is on the host. A streamer
  records a `time.perf_counter()` stamp every time `generate` hands it tokens (it copies them to the host,
  which synchronises CUDA), so TTFT is prefill + the first token, with generate's own setup included, as a
  server would see it without tokenisation and network.
- TPOT (ms): (stamp of the last token - stamp of the first token) / (new_tokens - 1): one decode step of
  the whole batch. Decoding is memory-bound, so this is the number weight pruning should shrink.
- output tokens/s: batch_size * new_tokens / (end of `generate` - start).
- peak memory: on CUDA `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats` (everything the
  process holds on the device: all resident models' weights, the KV cache, activations). On CPU the peak
  resident set size of the process (`VmHWM` in /proc/self/status, reset before the run by writing "5" to
  /proc/self/clear_refs; where that is not allowed a thread samples `VmRSS` every millisecond). The
  increase over the level just before the call is reported as well: that is the run's working memory
  (activations, plus the KV cache when it is allocated during the run: a static cache is allocated once in
  warm-up and reused, so `kv_cache_bytes`, counted from the cache's own tensors, is reported separately).
  On CPU glibc's free lists are trimmed (`malloc_trim(0)`) before each run so that memory freed by an
  earlier run is not silently reused and missed.

Every measurement is preceded by an untimed warm-up call with the same shapes (first-call allocations,
oneDNN primitive creation, and on CUDA the `torch.compile` that transformers applies automatically to
static-cache decoding), then the fastest of `repeats` calls is reported: on a shared machine the minimum
is the stable statistic. Prompts are deterministic token ids cut from one text, so a teacher and a
student sharing a tokenizer get exactly the same inputs.
"""

from __future__ import annotations

import contextlib
import ctypes
import re
import threading
import time
from pathlib import Path
from pydoc_data.topics import topics
from typing import Any

import torch
from transformers.generation.streamers import BaseStreamer

_STATUS = Path("/proc/self/status")
_CLEAR_REFS = Path("/proc/self/clear_refs")


# ------------------------------------------------------------------------------------------- prompts
def default_text() -> str:
    """English prose that ships with every CPython (`pydoc_data.topics`, ~465 KB), in a fixed order."""
    return "\n\n".join(topics[k] for k in sorted(topics))


def prompt_ids(tokenizer, prompt_tokens: int, batch_size: int, text: str | None = None):
    """Deterministic prompts: LongTensor [batch_size, prompt_tokens] of token ids.

    The text (default: `default_text()`) is tokenized once without special tokens; row i is the
    `prompt_tokens` ids starting at `i * prompt_tokens`, the text being repeated when it is too short.
    Rows therefore differ from one another, and the same tokenizer always gives the same batch.
    """
    if prompt_tokens < 1 or batch_size < 1:
        raise ValueError(f"prompt_tokens={prompt_tokens} and batch_size={batch_size} must both be >= 1")
    text = default_text() if text is None else text
    # Tokenizing ~465 KB takes a while; only as much text as the batch needs (with margin) is used.
    need = prompt_tokens * batch_size
    stream = tokenizer(text[: max(64 * need, 4096)], add_special_tokens=False)["input_ids"]
    if not stream:
        raise ValueError("the prompt text tokenizes to no tokens")
    reps = -(-need // len(stream))
    flat = torch.tensor((stream * reps)[:need], dtype=torch.long)
    return flat.view(batch_size, prompt_tokens)


# -------------------------------------------------------------------------------------------- memory
def _status_kib(field: str) -> int:
    return int(re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.M).group(1))


def _malloc_trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakMemory:
    """Context manager measuring the peak memory of a block; read `.peak_bytes`, `.before_bytes`, `.method`.

    `device` "cuda[:i]": allocated device memory (`torch.cuda.max_memory_allocated`); anything else: the
    process's resident set size (see the module docstring).
    """

    def __init__(self, device: str):
        self.device = device
        self.cuda = device.startswith("cuda")
        self.before_bytes = self.peak_bytes = 0
        self.method = ""
        self._stop: threading.Event | None = None
        self._thread: threading.Thread | None = None

    def __enter__(self) -> PeakMemory:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.before_bytes = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated"
            return self
        _malloc_trim()
        try:
            # resets VmHWM to the current RSS (Linux >= 4.0)
            _CLEAR_REFS.write_text("5")  # write-ok: the kernel's /proc/self/clear_refs, no file
            self.method = "VmHWM after clear_refs"
        except OSError:
            self.method = "VmRSS sampled every 1 ms"
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
        self.before_bytes = _status_kib("VmRSS") * 1024
        self.peak_bytes = self.before_bytes
        if self._thread is not None:
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.001):
            self.peak_bytes = max(self.peak_bytes, _status_kib("VmRSS") * 1024)

    def __exit__(self, *exc) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)
            self.peak_bytes = torch.cuda.max_memory_allocated(self.device)
        elif self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self.peak_bytes, _status_kib("VmRSS") * 1024)
        else:
            self.peak_bytes = _status_kib("VmHWM") * 1024

    @property
    def increase_bytes(self) -> int:
        return max(self.peak_bytes - self.before_bytes, 0)


# ------------------------------------------------------------------------------------------- generate
def _token_clock():
    class TokenClock(BaseStreamer):
        """Timestamps every `put`: the first is the prompt, each later one a step of new tokens [batch]."""

        def __init__(self):
            self.stamps: list[float] = []
            self.steps = 0

        def put(self, value):
            self.stamps.append(time.perf_counter())
            self.steps += 1

        def end(self):
            pass

    return TokenClock()


def _cache_bytes(cache) -> int:
    """Bytes held by the key/value tensors of a transformers `Cache` (0 for layers not yet allocated)."""
    total = 0
    for layer in getattr(cache, "layers", ()):
        for name in ("keys", "values"):
            t = getattr(layer, name, None)
            if t is not None and hasattr(t, "nbytes"):
                total += t.nbytes
    return total


def weights_bytes(model) -> int:
    """Bytes of the model's parameters (tied tensors once, as `model.parameters()` yields them)."""
    return sum(p.numel() * p.element_size() for p in model.parameters())


def _generate_once(model, ids, new_tokens: int, pad_token_id: int, cache_implementation: str | None) -> dict:
    clock = _token_clock()
    mask = torch.ones_like(ids)
    c0, t0 = time.process_time(), time.perf_counter()
    out = model.generate(  # generate runs under no_grad itself
        input_ids=ids,
        attention_mask=mask,
        do_sample=False,
        num_beams=1,
        max_new_tokens=new_tokens,
        min_new_tokens=new_tokens,
        pad_token_id=pad_token_id,
        cache_implementation=cache_implementation,
        streamer=clock,
        return_dict_in_generate=True,
        # Greedy decoding: drop any sampling defaults of the checkpoint's generation_config (no warnings).
        temperature=None,
        top_p=None,
        top_k=None,
    )
    t_end, c_end = time.perf_counter(), time.process_time()
    batch, prompt_len = ids.shape
    if tuple(out.sequences.shape) != (batch, prompt_len + new_tokens) or clock.steps != new_tokens + 1:
        raise RuntimeError(
            f"generate produced {tuple(out.sequences.shape)} with {clock.steps - 1} token steps, "
            f"expected ({batch}, {prompt_len + new_tokens}) with {new_tokens}"
        )
    first, last = clock.stamps[1], clock.stamps[-1]
    return {
        "ttft_ms": (first - t0) * 1e3,
        "tpot_ms": (last - first) / (new_tokens - 1) * 1e3 if new_tokens > 1 else None,
        "total_ms": (t_end - t0) * 1e3,
        "cpu_ms": (c_end - c0) * 1e3,
        "output_tokens_per_s": batch * new_tokens / (t_end - t0),
        "cache_type": type(out.past_key_values).__name__,
        "kv_cache_bytes": _cache_bytes(out.past_key_values),
        "sequences": out.sequences,
    }


def generation_speed(
    model,
    tokenizer,
    *,
    prompt_tokens: int,
    new_tokens: int,
    batch_size: int,
    device: str,
    repeats: int = 2,
    static_cache: bool = True,
    warmup: int | None = None,
    text: str | None = None,
) -> dict[str, Any]:
    """TTFT, TPOT, output tokens/s and peak memory of greedy `generate` on a [batch_size, prompt_tokens] batch.

    Args:
        model: a `*ForCausalLM` in eval mode, already on `device` in the dtype to measure.
        tokenizer: makes the prompts (`prompt_ids`); teacher and student must share it for a fair comparison.
        prompt_tokens, new_tokens, batch_size: the shape; every sequence produces exactly `new_tokens`.
        device: "cpu" or "cuda[:i]" (where `model` lives).
        repeats: timed calls; the fastest (by total time) is reported, memory is the maximum over them.
        static_cache: `cache_implementation="static"` (KV cache pre-allocated for the whole sequence; on CUDA
            transformers then compiles the decode step). If the static cache fails for this model the dynamic
            cache is used and `cache_fallback_reason` says why. False: the dynamic (growing) cache.
        warmup: untimed calls first; default 2 when the decode step gets compiled (CUDA + static), else 1.
        text: source of the prompt ids (default: CPython's pydoc text).
    Returns:
        {"ttft_ms", "tpot_ms" (None when new_tokens == 1), "total_ms", "output_tokens_per_s", "cpu_ms" (CPU
         time of the whole process during the call, all threads: near total_ms x threads on an idle machine,
         far below it when other processes hold the cores — a contention check, not a speed figure),
         "output_tokens" (= batch_size * new_tokens), "peak_memory_bytes", "peak_memory_increase_bytes",
         "memory_method", "kv_cache_bytes", "weights_bytes", "cache" ("static" | "dynamic"),
         "cache_fallback_reason" (None unless static was asked for and not used), "runs" (every timed call:
         ttft_ms, tpot_ms, total_ms, cpu_ms, output_tokens_per_s), shape and environment fields, "wall_s" (the whole
         measurement, warm-up included)}.
    """
    for key, value, low in (
        ("prompt_tokens", prompt_tokens, 1),
        ("new_tokens", new_tokens, 1),
        ("batch_size", batch_size, 1),
        ("repeats", repeats, 1),
    ):
        if value < low:
            raise ValueError(f"{key}={value} must be >= {low}")
    started = time.perf_counter()
    ids = prompt_ids(tokenizer, prompt_tokens, batch_size, text).to(device)
    pad = next(t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if t is not None)
    had_cache = hasattr(model, "_cache")  # generate keeps a static cache on the model between calls

    cache, reason = ("static" if static_cache else "dynamic"), None
    n_warm = warmup if warmup is not None else (2 if static_cache and device.startswith("cuda") else 1)
    for _ in range(max(n_warm, 1)):
        if cache == "static":
            try:
                got = _generate_once(model, ids, new_tokens, pad, "static")["cache_type"]
                if got != "StaticCache":
                    raise RuntimeError(f"generate used a {got}, not a StaticCache")
                continue
            except Exception as exc:  # any failure of the static path means: measure dynamic
                cache, reason = "dynamic", f"{type(exc).__name__}: {exc}"
        _generate_once(model, ids, new_tokens, pad, None)

    runs, peak, increase, method = [], 0, 0, ""
    for _ in range(repeats):
        with PeakMemory(device) as mem:
            run = _generate_once(model, ids, new_tokens, pad, "static" if cache == "static" else None)
        run.pop("sequences")
        runs.append(run)
        peak, increase, method = max(peak, mem.peak_bytes), max(increase, mem.increase_bytes), mem.method
    best = min(runs, key=lambda r: r["total_ms"])
    if not had_cache and hasattr(model, "_cache"):
        del model._cache  # free the static KV cache so it does not count against the next model measured

    return {
        "ttft_ms": best["ttft_ms"],
        "tpot_ms": best["tpot_ms"],
        "total_ms": best["total_ms"],
        "cpu_ms": best["cpu_ms"],
        "output_tokens_per_s": best["output_tokens_per_s"],
        "output_tokens": batch_size * new_tokens,
        "peak_memory_bytes": peak,
        "peak_memory_increase_bytes": increase,
        "memory_method": method,
        "kv_cache_bytes": best["kv_cache_bytes"],
        "weights_bytes": weights_bytes(model),
        "cache": cache,
        "cache_fallback_reason": reason,
        "batch_size": batch_size,
        "prompt_tokens": prompt_tokens,
        "new_tokens": new_tokens,
        "device": device,
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "threads": torch.get_num_threads(),
        "repeats": repeats,
        "warmup": max(n_warm, 1),
        "runs": [{k: r[k] for k in ("ttft_ms", "tpot_ms", "total_ms", "cpu_ms", "output_tokens_per_s")} for r in runs],
        "wall_s": time.perf_counter() - started,
    }


# -------------------------------------------------------------------------------------------- compare
def params_read_per_token(counts: dict[str, int] | int) -> int:
    """Weights read from memory to decode one token, from `compactlm.model.loading.count_parameters`'s dict.

    Every weight matrix is streamed once per decode step except the input embedding table, of which
    only the batch's rows are gathered; a tied output layer is that same table, read in full for the
    logits. So: total - embedding when the output layer is separate, total when it is tied. An int is
    taken as the count itself.
    """
    if isinstance(counts, int):
        return counts
    tied = counts["without_lm_head"] == counts["total"]
    return counts["total"] if tied else counts["total"] - counts["embedding"]


def compare(
    results_teacher: dict,
    results_student: dict,
    params_teacher: dict[str, int] | int,
    params_student: dict[str, int] | int,
) -> dict[str, Any]:
    """Student relative to teacher, with the speed-up the parameter counts promise.

    Single-stream decoding is memory-bandwidth bound: each step streams all the weights, so the ideal
    decode speed-up is the ratio of weights read per token (`params_read_per_token`; the KV cache, small at
    short context, is left out). TTFT (prefill) is compute-bound and tokens/s mixes both.

    Returns:
        {"tokens_per_s_ratio": student / teacher output tokens/s (> 1: student faster),
         "tpot_ratio": student / teacher TPOT (< 1: student faster), "ttft_ratio": student / teacher TTFT,
         "decode_speedup": teacher / student TPOT, "ideal_speedup": params_read teacher / student,
         "fraction_of_ideal": decode_speedup / ideal_speedup, "params_ratio": params_read student / teacher,
         "peak_memory_ratio", "kv_cache_ratio", "weights_ratio", "params_read_teacher", "params_read_student"}.
    Raises:
        ValueError when the two measurements differ in shape, device, dtype or cache.
    """
    for key in ("batch_size", "prompt_tokens", "new_tokens", "device", "dtype", "cache"):
        if key in results_teacher and results_teacher.get(key) != results_student.get(key):
            raise ValueError(
                f"cannot compare: {key}={results_teacher[key]!r} for the teacher but "
                f"{results_student.get(key)!r} for the student; measure both the same way"
            )
    pt, ps = params_read_per_token(params_teacher), params_read_per_token(params_student)
    ratio = lambda key, num, den: (num[key] / den[key]) if num.get(key) and den.get(key) else None  # noqa: E731
    tpot_ratio = ratio("tpot_ms", results_student, results_teacher)
    decode_speedup = 1 / tpot_ratio if tpot_ratio else None
    ideal = pt / ps
    return {
        "tokens_per_s_ratio": ratio("output_tokens_per_s", results_student, results_teacher),
        "tpot_ratio": tpot_ratio,
        "ttft_ratio": ratio("ttft_ms", results_student, results_teacher),
        "decode_speedup": decode_speedup,
        "ideal_speedup": ideal,
        "fraction_of_ideal": decode_speedup / ideal if decode_speedup else None,
        "params_ratio": ps / pt,
        "peak_memory_ratio": ratio("peak_memory_bytes", results_student, results_teacher),
        "kv_cache_ratio": ratio("kv_cache_bytes", results_student, results_teacher),
        "weights_ratio": ratio("weights_bytes", results_student, results_teacher),
        "params_read_teacher": pt,
        "params_read_student": ps,
    }
