"""The alignment demo's examples, built offline from the run itself (nothing is downloaded).

- SFT: "continue this text" prompts made from the run's own training sequences, answered by the teacher.
- DPO: other prompts of the same kind; chosen = the teacher's answer, rejected = the pruned student's.
- GRPO: generated arithmetic word problems (addition, subtraction, multiplication) with exact answers, asking for
  "Answer: <number>".

This demonstrates the pipeline end to end; it is not an instruction dataset, and a 135M model trained on it does
not become an assistant.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from compactlm.align.data import split_heldout
from compactlm.align.schema import AlignDataConfig
from compactlm.align.train import generate

NAMES = ("Ala", "Bartek", "Celina", "Darek", "Ewa", "Filip", "Gosia", "Henryk", "Iga", "Janek")
ITEMS = ("apple", "book", "pencil", "coin", "stamp", "marble", "card", "shell")
ASK = "Reply with the result as 'Answer: <number>'."


def problems(n: int, seed: int) -> list[dict[str, str]]:
    """`n` arithmetic word problems with their exact answers (deterministic for a seed)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        name, item = rng.choice(NAMES), rng.choice(ITEMS)
        kind = rng.randrange(3)
        if kind == 0:
            a, b = rng.randint(2, 30), rng.randint(2, 30)
            text, answer = f"{name} has {a} {item}s and gets {b} more. How many {item}s does {name} have now?", a + b
        elif kind == 1:
            a = rng.randint(10, 40)
            b = rng.randint(1, a - 1)
            text, answer = f"{name} had {a} {item}s and gave away {b}. How many {item}s are left?", a - b
        else:
            a, b = rng.randint(2, 9), rng.randint(2, 9)
            text, answer = f"A box holds {a} rows of {b} {item}s. How many {item}s are in the box?", a * b
        out.append({"prompt": f"{text} {ASK}", "answer": str(answer)})
    return out


def continuation_prompts(train_tokens: np.ndarray, tok, n: int, prompt_tokens: int, seed: int) -> list[str]:
    """`n` prompts asking to continue the opening of distinct training sequences."""
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(train_tokens), size=min(n, len(train_tokens)), replace=False)
    out = []
    for r in rows:
        snippet = tok.decode(np.asarray(train_tokens[r][:prompt_tokens]).tolist(), skip_special_tokens=True).strip()
        out.append(f"Continue this text:\n\n{snippet}")
    return out


def answers(
    model, tok, prompts: list[str], new_tokens: int, device: str, seed: int, label: str, batch: int = 16
) -> list[str]:
    """Sampled answers (temperature 0.7, top-p 0.9, seeded, at least 8 tokens) of `model` to user `prompts`."""
    torch.manual_seed(seed)
    chats = [[{"role": "user", "content": p}] for p in prompts]
    # at least a few tokens: a weak model (the pruned student) often ends its turn at once
    texts = generate(
        model,
        tok,
        chats,
        new_tokens,
        device,
        batch=batch,
        desc=f"[align_data] {label} answers",
        do_sample=True,
        temperature=0.7,
        top_p=0.9,
        min_new_tokens=min(8, new_tokens),
    )
    return [t.strip() for t in texts]


def build(
    cfg: AlignDataConfig, kinds: list[str], teacher, pruned, tok, train_tokens: np.ndarray, device: str, seed: int
) -> dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]]:
    """(train, heldout) demo examples for each of `kinds` (sft, dpo, grpo)."""
    out: dict[str, tuple[list[dict[str, Any]], list[dict[str, Any]]]] = {}
    if "grpo" in kinds:
        out["grpo"] = split_heldout(problems(cfg.demo_problems, seed), cfg.grpo.heldout, "align_data.grpo")
    text_kinds = [k for k in ("sft", "dpo") if k in kinds]
    if not text_kinds:
        return out
    prompts = continuation_prompts(train_tokens, tok, cfg.demo_prompts, cfg.prompt_tokens, seed)
    teacher_answers = answers(teacher, tok, prompts, cfg.answer_tokens, device, seed, "teacher")
    share = len(prompts) // len(text_kinds)
    for i, kind in enumerate(text_kinds):
        ps, ts = prompts[i * share : (i + 1) * share], teacher_answers[i * share : (i + 1) * share]
        if kind == "sft":
            rows = [
                {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": t}]}
                for p, t in zip(ps, ts)
                if t
            ]
        else:
            rejected = answers(pruned, tok, ps, cfg.answer_tokens, device, seed + 1, "pruned student")
            rows = [
                {"prompt": p, "chosen": t, "rejected": r} for p, t, r in zip(ps, ts, rejected) if t and r and t != r
            ]
        out[kind] = split_heldout(rows, getattr(cfg, kind).heldout, f"align_data.{kind}")
    return out
