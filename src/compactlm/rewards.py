"""Verifiable rewards for the grpo stage, in TRL's reward-function form: `fn(prompts, completions, **columns)`
returns one float per completion; the grpo examples' `answer` column arrives as `answer`.

Use your own by dotted path: `grpo.rewards=[compactlm.rewards.numeric_match, mypkg.rewards:brevity]`.
Torch-free; the launcher resolves every path before anything is submitted.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from collections.abc import Callable
from typing import Any

from compactlm.errors import ConfigError

# "Answer: 42" (the demo problems ask for it), the last one in the completion
ANSWER = re.compile(r"answer\s*(?:is)?\s*[:=]?\s*\$?(-?\d[\d,]*(?:\.\d+)?)", re.IGNORECASE)
NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
FORMAT = re.compile(r"\bAnswer:\s*-?\d")


def completion_text(completion: Any) -> str:
    """The text of a completion: a string, or TRL's conversational form (a list of messages)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion if isinstance(m, dict))
    return str(completion)


def _number(text: str) -> float | None:
    try:
        return float(text.replace(",", ""))
    except ValueError:
        return None


def extract_answer(text: str) -> float | None:
    """The number a completion answers with: after its last "Answer:", else its last number."""
    found = ANSWER.findall(text) or NUMBER.findall(text)
    return _number(found[-1]) if found else None


def numeric_match(prompts: list[Any], completions: list[Any], answer: list[str], **_: Any) -> list[float]:
    """1.0 when the completion's answer equals the reference number (within 1e-6), else 0.0."""
    out = []
    for completion, ref in zip(completions, answer):
        got, want = extract_answer(completion_text(completion)), _number(str(ref))
        out.append(1.0 if got is not None and want is not None and abs(got - want) < 1e-6 else 0.0)
    return out


def answer_format(prompts: list[Any], completions: list[Any], **_: Any) -> list[float]:
    """1.0 when the completion states its result as "Answer: <number>" (what the demo problems ask), 0.5 when it
    gives a number in another form, else 0.0 (graded, so that a small model's first attempts differ)."""
    out = []
    for c in completions:
        text = completion_text(c)
        out.append(1.0 if FORMAT.search(text) else 0.5 if NUMBER.search(text) else 0.0)
    return out


def split_path(path: str) -> tuple[str, str]:
    """(module, function) of `pkg.mod.fn` or `pkg.mod:fn`; ConfigError when it is neither."""
    module, sep, name = path.partition(":")
    if not sep:
        module, _, name = path.rpartition(".")
    if not module or not name:
        raise ConfigError(f"grpo.rewards: {path!r} is not a dotted path to a function (pkg.mod.fn or pkg.mod:fn)")
    return module, name


def resolve(path: str) -> Callable[..., list[float]]:
    """The function named by `pkg.mod.fn` or `pkg.mod:fn`; ConfigError names the path and what is wrong."""
    module, name = split_path(path)
    try:
        mod = importlib.import_module(module)
    except ImportError as e:
        raise ConfigError(f"grpo.rewards: {path!r}: module {module!r} cannot be imported ({e})") from None
    fn = getattr(mod, name, None)
    if not callable(fn):
        raise ConfigError(f"grpo.rewards: {path!r}: module {module!r} has no function {name!r}")
    return fn


def check_paths(paths: list[str]) -> None:
    """Submit side: every reward's module exists and, for compactlm's own, the function too (a user module is
    only located, not imported: it may need the training environment)."""
    for path in paths:
        module, name = split_path(path)
        if module == __name__:
            resolve(path)
            continue
        try:
            found = importlib.util.find_spec(module)
        except (ImportError, ValueError):
            found = None
        if found is None:
            raise ConfigError(f"grpo.rewards: {path!r}: no module {module!r} on this Python's path")
