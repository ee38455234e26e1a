"""Held-out quality and speed of one or more models against the teacher.

Quality is measured on the validation split in one pass over its batches, all models side by side, so
the teacher's logits are computed once per batch and never stored: next-token perplexity, KL(teacher ‖
model) per token and top-1 agreement with the teacher. Speed is a batch-1 greedy decode with a KV cache
(time to first token, time per output token, output tokens/s).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm


def quality(
    models: dict[str, Any], teacher: str, sequences: np.ndarray, batch_size: int, device: str, progress: bool = True
) -> dict[str, dict[str, float]]:
    """Perplexity of every model and KL / top-1 agreement of every non-teacher model vs `teacher`.

    Args:
        models: label -> `*ForCausalLM` in eval mode on `device`; all share the teacher's vocabulary.
        teacher: label of the reference model in `models`.
        sequences: int array [num_sequences, seq_len] of token ids.
    Returns:
        label -> {"loss": mean next-token NLL (nats/token), "perplexity", "tokens", "forward_tokens_per_s",
        and for non-teachers "kl_to_teacher" (nats/token) and "top1_agreement" (fraction)}.
    """
    sums = {k: {"nll": 0.0, "kl": 0.0, "agree": 0.0, "time": 0.0} for k in models}
    tokens = 0
    batches = range(0, len(sequences), batch_size)
    with torch.no_grad():
        for start in tqdm(batches, desc="[evaluate] validation", unit="batch", disable=not progress, mininterval=2):
            ids = torch.from_numpy(np.array(sequences[start : start + batch_size], dtype=np.int64)).to(device)
            targets = ids[:, 1:].reshape(-1)
            tokens += targets.numel()
            t_logp = None
            for label in [teacher] + [k for k in models if k != teacher]:
                t0 = time.perf_counter()
                logits = models[label](input_ids=ids).logits[:, :-1].float()
                sums[label]["time"] += time.perf_counter() - t0
                logp = F.log_softmax(logits.reshape(-1, logits.shape[-1]), dim=-1)
                # each row is reduced by one thread and the rows are summed in float64, so the figures do not move
                # with the number of threads (a float32 sum over rows × vocabulary is split between threads)
                sums[label]["nll"] += F.nll_loss(logp, targets, reduction="none").double().sum().item()
                if label == teacher:
                    t_logp = logp
                    continue
                kl_rows = F.kl_div(logp, t_logp, log_target=True, reduction="none").sum(-1)
                sums[label]["kl"] += kl_rows.double().sum().item()
                sums[label]["agree"] += (logp.argmax(-1) == t_logp.argmax(-1)).sum().item()
    out = {}
    for label, s in sums.items():
        loss = s["nll"] / tokens
        row = {
            "loss": loss,
            "perplexity": float(np.exp(loss)),
            "tokens": tokens,
            "forward_tokens_per_s": tokens / s["time"] if s["time"] else float("nan"),
        }
        if label != teacher:
            row["kl_to_teacher"] = s["kl"] / tokens
            row["top1_agreement"] = s["agree"] / tokens
        out[label] = row
    return out


def decode_speed(model, tokenizer, prompt: str, new_tokens: int, device: str, repeats: int = 2) -> dict[str, Any]:
    """Greedy batch-1 decoding with a KV cache: TTFT, TPOT (ms), output tokens/s and the generated text.

    The fastest of `repeats` runs is reported: on a shared machine the minimum is the stable statistic.
    """
    runs = [_decode_once(model, tokenizer, prompt, new_tokens, device) for _ in range(max(repeats, 1))]
    return min(runs, key=lambda r: r["ttft_ms"] + r["tpot_ms"] * (new_tokens - 1))


def _decode_once(model, tokenizer, prompt: str, new_tokens: int, device: str) -> dict[str, Any]:
    ids = tokenizer(prompt, return_tensors="pt").input_ids.to(device)
    with torch.no_grad():
        model(input_ids=ids[:, :2], use_cache=False)  # warm-up: first-call allocations are not decoding speed
        t0 = time.perf_counter()
        out = model(input_ids=ids, use_cache=True)
        t_first = time.perf_counter()
        past, generated = out.past_key_values, [out.logits[:, -1].argmax(-1)]
        for _ in range(new_tokens - 1):
            out = model(input_ids=generated[-1][:, None], past_key_values=past, use_cache=True)
            past = out.past_key_values
            generated.append(out.logits[:, -1].argmax(-1))
        t_end = time.perf_counter()
    text = tokenizer.decode(torch.stack(generated, dim=1)[0], skip_special_tokens=True)
    decode_s = t_end - t_first
    return {
        "ttft_ms": (t_first - t0) * 1e3,
        "tpot_ms": decode_s / max(new_tokens - 1, 1) * 1e3,
        "output_tokens_per_s": new_tokens / (t_end - t0),
        "new_tokens": new_tokens,
        "sample": prompt + text,
    }
