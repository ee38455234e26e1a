"""The alignment stages' examples: their three formats, strict checking, reading, and the held-out split.

Torch-free: the launcher checks local files with these functions before anything is submitted, and the
align_data stage reads them with the same ones, so what passed the check is exactly what is trained on.

    sft   {"messages": [{"role": "system"|"user"|"assistant", "content": "..."}, ...]}   last turn: assistant
    dpo   {"prompt": "...", "chosen": "...", "rejected": "..."}                          chosen != rejected
    grpo  {"prompt": "...", "answer": "..." or a number}

A bad example is refused with one line naming the file, the line and the field: a key given twice on a line
(JSON would keep the last), and, at launch, a field too long for its stage's token budget (`Budget`, measured in
characters: the launcher has no tokenizer; the stages measure in tokens and truncate, `compactlm.align.train`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactlm.align.schema import AlignSource, GRPOConfig, TrainerOptions
from compactlm.config import ConfigError
from compactlm.data.splits import expand_globs
from compactlm.manifest import atomic_write_text

ROLES = ("system", "user", "assistant")
FIELDS = {"sft": ("messages",), "dpo": ("prompt", "chosen", "rejected"), "grpo": ("prompt", "answer")}
SPLIT_FILES = ("train.jsonl", "heldout.jsonl")
# No tokenizer is at hand on the submit side, so token budgets are checked in characters: a text longer than this many
# characters per token of its budget cannot fit it unless its tokens average more than 32 characters, which only
# runs of one repeated character (spaces, "=====") reach. The bound refuses what is certainly too long (a 50 MB
# prompt) and lets the stage truncate what is slightly too long, saying so (compactlm.align.train.fit_budget).
CHARS_PER_TOKEN = 32


class BadExample(ConfigError):
    """One example of an alignment data file does not fit its stage's format."""


@dataclass(frozen=True)
class Budget:
    """The most tokens one field of an example may take in its stage's sequence, and the settings that say so."""

    tokens: int
    why: str
    """The settings, e.g. 'grpo.max_length=160 - grpo.max_completion_length=16'."""

    @property
    def chars(self) -> int:
        return self.tokens * CHARS_PER_TOKEN

    def check(self, text: str, where: str, field: str) -> None:
        if len(text) > self.chars:
            raise BadExample(
                f"{where}: field {field!r} has {len(text):,} characters, more than its {self.tokens} "
                f"tokens ({self.why}) can hold at {CHARS_PER_TOKEN} characters per token "
                f"({self.chars:,}); shorten it or raise the setting"
            )


def budgets(sft: TrainerOptions, dpo: TrainerOptions, grpo: GRPOConfig) -> dict[str, dict[str, Budget]]:
    """kind -> field -> Budget: sft and dpo sequences (prompt + answer) are `max_length` tokens; a grpo prompt
    leaves `max_completion_length` of `grpo.max_length` for the sampled answer."""
    prompt = grpo.max_length - grpo.max_completion_length
    return {
        "sft": {"messages": Budget(sft.max_length, f"sft.max_length={sft.max_length}")},
        "dpo": {k: Budget(dpo.max_length, f"dpo.max_length={dpo.max_length}") for k in FIELDS["dpo"]},
        "grpo": {
            "prompt": Budget(
                prompt, f"grpo.max_length={grpo.max_length} - grpo.max_completion_length={grpo.max_completion_length}"
            ),
            "answer": Budget(grpo.max_length, f"grpo.max_length={grpo.max_length}"),
        },
    }


def check_example(kind: str, row: Any, where: str, limits: dict[str, Budget] | None = None) -> dict[str, Any]:
    """`row` as the `kind` stage reads it (only its fields), or BadExample naming `where` and the field; with
    `limits` (field -> Budget), a field longer than its budget is refused too."""
    if not isinstance(row, dict):
        raise BadExample(f"{where}: expected a JSON object with {', '.join(FIELDS[kind])}, got {type(row).__name__}")
    for name in FIELDS[kind]:
        if name not in row:
            raise BadExample(f"{where}: field {name!r} is missing ({kind} examples need {', '.join(FIELDS[kind])})")
    if kind == "sft":
        return {"messages": _check_messages(row["messages"], where, (limits or {}).get("messages"))}
    out: dict[str, Any] = {}
    for name in FIELDS[kind]:
        value = row[name]
        if kind == "grpo" and name == "answer" and isinstance(value, (int, float)) and not isinstance(value, bool):
            value = str(value)
        if not isinstance(value, str):
            raise BadExample(f"{where}: field {name!r} must be a string, got {type(value).__name__}")
        if not value.strip():
            raise BadExample(f"{where}: field {name!r} is empty")
        if limits:
            limits[name].check(value, where, name)
        out[name] = value
    if kind == "dpo" and out["chosen"].strip() == out["rejected"].strip():
        raise BadExample(
            f"{where}: fields 'chosen' and 'rejected' are the same text (a preference pair needs two different answers)"
        )
    return out


def _check_messages(messages: Any, where: str, limit: Budget | None) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise BadExample(f"{where}: field 'messages' must be a non-empty list of {{role, content}} objects")
    out = []
    for i, m in enumerate(messages):
        key = f"messages[{i}]"
        if not isinstance(m, dict):
            raise BadExample(f"{where}: field {key!r} must be an object with role and content")
        role, content = m.get("role"), m.get("content")
        if role not in ROLES:
            raise BadExample(f"{where}: field '{key}.role' is {role!r}; allowed: {', '.join(ROLES)}")
        if role == "system" and i != 0:
            raise BadExample(f"{where}: field '{key}.role' is 'system' after the first message")
        if not isinstance(content, str) or not content.strip():
            raise BadExample(f"{where}: field '{key}.content' must be a non-empty string")
        if limit:
            limit.check(content, where, f"{key}.content")
        out.append({"role": role, "content": content})
    if out[-1]["role"] != "assistant":
        raise BadExample(
            f"{where}: field 'messages[{len(out) - 1}].role' is {out[-1]['role']!r}; the last message "
            "must be the assistant's answer (what SFT trains on)"
        )
    if limit:  # the whole conversation is one sequence of sft.max_length tokens
        limit.check("".join(m["content"] for m in out), where, "messages")
    return out


def _unique_keys(where: str):
    """A json.loads object_pairs_hook that refuses a key given twice in one object (JSON would keep the last)."""

    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in pairs:
            if key in out:
                raise BadExample(
                    f"{where}: field {key!r} appears twice in one object (JSON would silently keep the "
                    "last value); keep one"
                )
            out[key] = value
        return out

    return hook


def read_jsonl(kind: str, path: Path, limits: dict[str, Budget] | None = None) -> list[dict[str, Any]]:
    """Every example of `path`, checked (against `limits`, field -> Budget, when given); BadExample names the file,
    the line and the field."""
    path = Path(path)
    if not path.is_file():
        raise BadExample(f"{path}: not a file")
    rows = []
    with path.open("rb") as f:
        for n, raw in enumerate(f, 1):
            where = f"{path} line {n}"
            try:
                line = raw.decode("utf-8", errors="strict")
            except UnicodeDecodeError as e:
                raise BadExample(
                    f"{where}: not UTF-8 (byte {e.start} of the line: 0x{raw[e.start]:02x}); convert the file to UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line, object_pairs_hook=_unique_keys(where))
            except json.JSONDecodeError as e:
                raise BadExample(f"{where}: not valid JSON ({e.msg} at column {e.colno})") from None
            rows.append(check_example(kind, row, where, limits))
    if not rows:
        raise BadExample(f"{path}: no examples (the file is empty)")
    return rows


def read_files(
    kind: str, src: AlignSource, limits: dict[str, Budget] | None = None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, heldout) examples of a jsonl source (checked against `limits`, field -> Budget, when given)."""
    train = [r for p in expand_globs(src.paths, f"align_data.{kind}.paths") for r in read_jsonl(kind, p, limits)]
    if src.heldout_paths:
        heldout = [
            r
            for p in expand_globs(src.heldout_paths, f"align_data.{kind}.heldout_paths")
            for r in read_jsonl(kind, p, limits)
        ]
    else:
        train, heldout = split_heldout(train, src.heldout, f"align_data.{kind}")
    return cap(train, src.max_examples), heldout


def read_hf(kind: str, src: AlignSource) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(train, heldout) examples of a Hugging Face dataset, checked row by row like a file."""
    import datasets  # heavy, and only this source needs it

    ds = datasets.load_dataset(src.hf_path, src.hf_name, split=src.hf_split)
    where = f"{src.hf_path}[{src.hf_split}]"
    rows = [
        check_example(kind, {k: row.get(k) for k in FIELDS[kind] if k in row}, f"{where} row {i}")
        for i, row in enumerate(ds)
    ]
    if not rows:
        raise BadExample(f"{where}: no rows")
    train, heldout = split_heldout(rows, src.heldout, f"align_data.{kind}")
    return cap(train, src.max_examples), heldout


def split_heldout(rows: list[dict[str, Any]], n: int, key: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The last `n` examples are held out; at least as many must remain to train on."""
    if len(rows) < 2 * n:
        raise ConfigError(
            f"{key}.heldout={n}: only {len(rows)} examples; holding out {n} needs at least {2 * n} "
            f"(lower {key}.heldout or give {key}.heldout_paths)"
        )
    return rows[:-n], rows[-n:]


def cap(rows: list[dict[str, Any]], limit: int | None) -> list[dict[str, Any]]:
    return rows[:limit] if limit else rows


def check_sources(sources: dict[str, AlignSource], limits: dict[str, dict[str, Budget]]) -> None:
    """Submit-side check of every local file the alignment stages will read (jsonl sources), each field against
    its stage's budget (`limits`: kind -> field -> Budget, from :func:`budgets`)."""
    for kind, src in sources.items():
        if src.source == "jsonl":
            read_files(kind, src, limits[kind])


def write_split(folder: Path, train: list[dict[str, Any]], heldout: list[dict[str, Any]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, rows in zip(SPLIT_FILES, (train, heldout)):
        atomic_write_text(folder / name, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))


def load_split(folder: Path, kind: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The align_data stage's (train, heldout) of one kind, read back through the same checks."""
    return read_jsonl(kind, Path(folder) / SPLIT_FILES[0]), read_jsonl(kind, Path(folder) / SPLIT_FILES[1])


# ---------------------------------------------------------------------------------------- as TRL reads them
def to_conversational(kind: str, row: dict[str, Any]) -> dict[str, Any]:
    """TRL's conversational form of an example (the tokenizer's chat template is applied by the trainers)."""
    if kind == "sft":
        return {"messages": row["messages"]}
    prompt = [{"role": "user", "content": row["prompt"]}]
    if kind == "dpo":
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": row["chosen"]}],
            "rejected": [{"role": "assistant", "content": row["rejected"]}],
        }
    return {"prompt": prompt, "answer": row["answer"]}
