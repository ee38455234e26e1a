"""Task accuracy through EleutherAI's lm-evaluation-harness, on tasks that run offline.

The project's own tasks are sentence completions built from any folder of plain-text files
(`build_task_data`): each example is the first part of a real sentence and `num_choices` endings of the
same number of words — the sentence's own ending and the endings of other sentences of the same file.
The model picks the ending it gives the highest log-likelihood (`acc`) or the highest log-likelihood
per byte (`acc_norm`); chance is 1 / num_choices. Telling the real ending apart takes agreement
(case, gender, number), word order and topic — language modelling in the language of the text.

The task YAMLs ship in `compactlm/lm_eval_tasks/` and read their examples from a data folder passed
to lm_eval as task metadata, so the same YAMLs serve any run; the equivalent command line is

    lm_eval --model hf --model_args pretrained=<model folder> --include_path src/compactlm/lm_eval_tasks \
        --tasks polish_continuation --metadata '{"data_dir": "<folder written by build_task_data>"}'

Hub tasks ("hellaswag", "arc_easy", ...) are just further names in `tasks` for users with network.
"""

from __future__ import annotations

import json
import random
import re
from pathlib import Path
from typing import Any

from compactlm.manifest import atomic_write_text

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
DEFAULT_EXAMPLES = 200  # SmolLM2-135M evaluates these in ~30 s on 2 CPU cores (see bench numbers in the README)

_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def build_task_data(source_dir: str | Path, out_dir: str | Path, *, name: str = "polish_continuation",
                    num_examples: int = DEFAULT_EXAMPLES, num_choices: int = 4, min_words: int = 8,
                    max_words: int = 40, seed: int = 1234) -> Path:
    """Write `<out_dir>/<name>.jsonl`: sentence-completion examples built from the `*.txt` files of `source_dir`.

    Every non-empty line is split into sentences (a line may hold one sentence or a paragraph); a
    sentence of n words (min_words <= n <= max_words) becomes one example: its first n - m words are the
    context, its last m = clamp(n // 2, 4, 12) words the true ending. The distractors are the last m
    words of other sentences of the same file (same style and spelling, same word count) whose length
    in characters is closest to the true ending's, picked at random among the nearest. Examples are
    taken from the files in turn (round-robin over each file's seeded shuffle), so any prefix — what
    lm_eval's `limit` keeps — is balanced across files. The same inputs and seed give the same file.

    Returns the path of the JSONL file; each line is {"id", "context", "choices", "label", "source", "line"}.
    """
    source_dir, out_dir = Path(source_dir), Path(out_dir)
    files = sorted(source_dir.rglob("*.txt"))
    if not files:
        raise FileNotFoundError(f"build_task_data: no *.txt file under {source_dir}")
    if num_choices < 2:
        raise ValueError(f"build_task_data: num_choices={num_choices} must be at least 2")
    per_file = []
    for path in files:
        sentences = _sentences(path.read_text(encoding="utf-8"))
        rng = random.Random(f"{seed}:{path.relative_to(source_dir)}")
        order = [i for i, (_, words) in enumerate(sentences) if min_words <= len(words) <= max_words]
        rng.shuffle(order)
        per_file.append((path, sentences, order))

    records: list[dict[str, Any]] = []
    position = 0
    while len(records) < num_examples and any(position < len(order) for _, _, order in per_file):
        for path, sentences, order in per_file:
            if position < len(order) and len(records) < num_examples:
                rec = _example(path.relative_to(source_dir).as_posix(), sentences, order[position], num_choices, seed)
                if rec is not None:
                    records.append(rec)
        position += 1
    if not records:
        raise ValueError(f"build_task_data: no sentence of {min_words}..{max_words} words in the *.txt files "
                         f"under {source_dir}")
    out = out_dir / f"{name}.jsonl"
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return out


def _sentences(text: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, words) of every sentence; a split after . ! ? … only where the next piece
    starts a sentence (capital letter, digit, quote or dash), so "5 tys. dolarów" stays whole."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        pieces = _SENTENCE_END.split(line.strip())
        merged: list[str] = []
        for piece in pieces:
            if merged and not (piece[:1].isupper() or piece[:1].isdigit() or piece[:1] in "„\"«»'(—–-"):
                merged[-1] += " " + piece
            else:
                merged.append(piece)
        out.extend((lineno, s.split()) for s in merged if s.strip())
    return out


def _example(source: str, sentences: list[tuple[int, list[str]]], index: int, num_choices: int,
             seed: int) -> dict[str, Any] | None:
    lineno, words = sentences[index]
    m = min(max(len(words) // 2, 4), 12)
    context, ending = " ".join(words[:-m]), " ".join(words[-m:])
    # candidates: tails of other sentences with at least 2 words before them, so that they too start mid-sentence
    tails = {" ".join(w[-m:]) for i, (_, w) in enumerate(sentences) if i != index and len(w) >= m + 2}
    tails.discard(ending)
    if len(tails) < num_choices - 1:
        return None
    nearest = sorted(tails, key=lambda t: (abs(len(t) - len(ending)), t))[: 4 * (num_choices - 1)]
    rng = random.Random(f"{seed}:{source}:{index}")
    choices = rng.sample(nearest, num_choices - 1)
    label = rng.randrange(num_choices)
    choices.insert(label, ending)
    return {"id": f"{source}:{lineno}:{index}", "context": context, "choices": choices, "label": label,
            "source": source, "line": lineno}


def load_task_docs(task_file: str, data_dir: str | None = None, **_: Any):
    """lm_eval `custom_dataset` of the shipped YAMLs: `<data_dir>/<task_file>` as a DatasetDict with a
    "test" split. `data_dir` comes from the task metadata (run_tasks, or `--metadata` on the CLI);
    lm_eval passes the rest of the metadata too, which is ignored."""
    import datasets

    if not data_dir:
        raise ValueError(f"{task_file}: no data_dir in the lm_eval metadata; build the data with "
                         "compactlm.lmeval.build_task_data and pass metadata={'data_dir': <that folder>}")
    path = Path(data_dir) / task_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with compactlm.lmeval.build_task_data")
    with path.open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def run_tasks(model, tokenizer, tasks: list[str], *, data_dir: str | Path | None = None,
              task_dir: str | Path | list[str | Path] = TASK_DIR, limit: int | None = None, batch_size: int = 8,
              num_fewshot: int | None = None, seed: int = 1234,
              samples_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Evaluate an already-loaded `*ForCausalLM` on lm_eval tasks with lm_eval's HF backend (`HFLM`).

    Args:
        model: a transformers `*ForCausalLM`, already on its device (HFLM uses the model's own device).
        tokenizer: its tokenizer. lm_eval sets a pad token on it when it has none.
        tasks: lm_eval task or group names: the project's (found under `task_dir`, reading their examples
            from `data_dir`) and/or lm_eval's own (which download their datasets: network needed).
        data_dir: the folder `build_task_data` wrote; passed to the tasks as metadata.
        task_dir: folder(s) of task YAMLs registered with `TaskManager(include_path=...)`.
        limit: at most this many examples per task (the first ones).
        num_fewshot: examples of the task put before each prompt; None keeps each task's own setting (0 here).
        seed: python / numpy / torch and few-shot sampling seed.
        samples_dir: when set, per-example records (prompt, choices, log-likelihoods, target) are written to
            `<samples_dir>/<task>.jsonl`.
    Returns:
        task (or group) -> {metric: value, f"{metric}_stderr": value, "num_examples": examples evaluated}, plain
        floats; e.g. {"polish_continuation": {"acc": 0.61, "acc_stderr": 0.03, "acc_norm": 0.66, ...}}.
        Metrics of a filter other than lm_eval's "none" keep the filter in their name ("exact_match,strict").
    """
    import numpy as np
    import torch
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    task_dirs = [Path(p) for p in (task_dir if isinstance(task_dir, (list, tuple)) else [task_dir])]
    local = TaskIndex.build(task_dirs)
    # Indexing lm_eval's ~10k bundled YAMLs takes seconds: only when a task is not one of ours.
    manager = TaskManager(include_path=[str(p) for p in task_dirs],
                          include_defaults=any(t not in local for t in tasks),
                          metadata={"data_dir": str(data_dir)} if data_dir is not None else None)
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(f"lm_eval tasks {unknown} are neither in {', '.join(map(str, task_dirs))} nor lm_eval's "
                         f"own tasks; the project's tasks are {sorted(local)}")

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    loaded = manager.load(list(tasks))
    for task in loaded["tasks"].values():
        if num_fewshot is not None:
            task.set_config(key="num_fewshot", value=num_fewshot)
        elif task.get_config("num_fewshot") is None:
            task.set_config(key="num_fewshot", value=0)
        task.set_fewshot_seed(seed=seed)

    lm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)
    # evaluator.evaluate, not simple_evaluate: the latter asks the Hub for the model's SHA and collects
    # environment info through subprocesses, neither of which an offline CPU run wants.
    results = evaluator.evaluate(lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=1000,
                                 log_samples=samples_dir is not None)
    if samples_dir is not None:
        for task_name, samples in results.get("samples", {}).items():
            text = "".join(json.dumps(s, ensure_ascii=False, default=str) + "\n" for s in samples)
            atomic_write_text(Path(samples_dir) / f"{task_name}.jsonl", text)
    return _flatten(results)


def _flatten(results: dict) -> dict[str, dict[str, float]]:
    out: dict[str, dict[str, float]] = {}
    for task, metrics in results["results"].items():
        row: dict[str, float] = {}
        for key, value in metrics.items():
            metric, _, filt = key.partition(",")
            if not filt or not isinstance(value, (int, float)) or isinstance(value, bool):
                continue  # "alias", "N/A" stderrs
            name = metric if filt == "none" else f"{metric},{filt}"
            row[name] = float(value)
        n = results.get("n-samples", {}).get(task)
        if n is not None:
            row["num_examples"] = int(n["effective"])
        out[task] = row
    return out
