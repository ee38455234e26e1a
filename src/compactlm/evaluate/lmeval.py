"""Task accuracy through EleutherAI's lm-evaluation-harness, on tasks that run offline.

The project's own tasks are built from any folder of plain-text files (`build_task_data`): the run's held-out
documents (heldout_continuation, the default) or a folder the user names (polish_continuation, text_continuation). Each example
is the ending of a real sentence and `num_choices` beginnings of the same number of words: the
sentence's own and those of other sentences of the same file. The model must tell which beginning the
ending continues: lm_eval scores log P(ending | beginning) for every beginning (Winogrande-style "partial"
scoring, `multiple_input` in lm_eval) and `acc` is the fraction where the real one scores highest;
chance is 1 / num_choices. As the scored text is the same for all choices, how likely the ending is on
its own cancels out: only the use of the context counts — agreement (case, gender, number) across the
junction, word order, topic. On SmolLM2-135M (Polish sample, 100 examples, 4 choices) this scored 0.44
where scoring 4 different endings after the one true beginning scored 0.35 (chance 0.25).

The task YAMLs ship in `compactlm/lm_eval_tasks/` and read their examples from a data folder passed
to lm_eval as task metadata, so the same YAMLs serve any run; the equivalent command line is

    lm_eval --model hf --model_args pretrained=<model folder> --include_path src/compactlm/evaluate/lm_eval_tasks \
        --tasks polish_continuation --metadata '{"data_dir": "<folder written by build_task_data>"}'

Hub tasks ("hellaswag", "arc_easy", ...) are just further names in `tasks` for users with network.

The launcher imports this module (to check `evaluate.tasks` before submitting), so torch, datasets and lm_eval
(seconds to import) are imported only in the functions that use them.
"""

from __future__ import annotations

import difflib
import functools
import json
import random
import re
from pathlib import Path
from typing import Any

import numpy as np

from compactlm.manifest import atomic_write_text

TASK_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"
# 100 examples x 2 choices: ~10.7k tokens of forward passes for SmolLM2-135M (about 50 s on one busy CPU core),
# which scores 0.63 on them and its random-init twin 0.46 (chance 0.5). Per forward pass two choices separate
# the model from chance better than four (0.67 vs 0.5 against 0.37 vs 0.25 on another 100 examples).
DEFAULT_EXAMPLES = 100
DEFAULT_CHOICES = 2


_SENTENCE_END = re.compile(r"(?<=[.!?…])\s+")


def build_task_data(
    source_dir: str | Path,
    out_dir: str | Path,
    *,
    name: str = "polish_continuation",
    num_examples: int = DEFAULT_EXAMPLES,
    num_choices: int = DEFAULT_CHOICES,
    min_words: int = 8,
    max_words: int = 24,
    seed: int = 1234,
) -> Path:
    """Write `<out_dir>/<name>.jsonl`: "which beginning does this ending continue" examples built from the
    `*.txt` files of `source_dir` (searched recursively).

    Every non-empty line is split into sentences (a line may hold one sentence or a paragraph); a
    sentence of n words (min_words <= n <= max_words) becomes one example: its last m = clamp(n // 2, 4, 12)
    words are the ending, its first n - m words the true beginning. The other beginnings are the first
    n - m words of other sentences of the same file (same style and spelling) with n words too (the
    nearest word count when fewer), picked at random among those closest in characters. Examples are
    taken from the files in turn (round-robin over each file's seeded shuffle), so any prefix — what
    lm_eval's `limit` keeps — is balanced across files. The same inputs and seed give the same file.

    Returns the path of the JSONL file; each line is
    {"id", "contexts": [num_choices beginnings], "label": index of the true one, "ending", "source", "line"}.
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
        rng = random.Random(f"{seed}:{path.relative_to(source_dir).as_posix()}")
        order = [i for i, (_, words) in enumerate(sentences) if min_words <= len(words) <= max_words]
        rng.shuffle(order)
        per_file.append((path.relative_to(source_dir).as_posix(), sentences, order))

    records: list[dict[str, Any]] = []
    position = 0
    while len(records) < num_examples and any(position < len(order) for _, _, order in per_file):
        for source, sentences, order in per_file:
            if position < len(order) and len(records) < num_examples:
                rec = _example(source, sentences, order[position], num_choices, seed)
                if rec is not None:
                    records.append(rec)
        position += 1
    if not records:
        raise ValueError(
            f"build_task_data: no sentence of {min_words}..{max_words} words (with {num_choices - 1} "
            f"others to compare with) in the *.txt files under {source_dir}"
        )
    out = out_dir / f"{name}.jsonl"
    atomic_write_text(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
    return out


def _sentences(text: str) -> list[tuple[int, list[str]]]:
    """(1-based line number, words) of every sentence; a split after . ! ? … only where the next piece
    starts a sentence (capital letter, digit, quote or dash), so "5 tys. dolarów" stays whole."""
    out = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        merged: list[str] = []
        for piece in _SENTENCE_END.split(line.strip()):
            if merged and not (piece[:1].isupper() or piece[:1].isdigit() or piece[:1] in "„\"«»'(—–-"):
                merged[-1] += " " + piece
            else:
                merged.append(piece)
        out.extend((lineno, s.split()) for s in merged if s.strip())
    return out


def _example(
    source: str, sentences: list[tuple[int, list[str]]], index: int, num_choices: int, seed: int
) -> dict[str, Any] | None:
    lineno, words = sentences[index]
    m = min(max(len(words) // 2, 4), 12)
    context, ending = " ".join(words[:-m]), " ".join(words[-m:])
    # other beginnings of as many words, from sentences at least as long as this one's beginning + 2 words
    others = {
        " ".join(w[: len(words) - m]): len(w)
        for i, (_, w) in enumerate(sentences)
        if i != index and len(w) >= len(words) - m + 2
    }
    others.pop(context, None)
    if len(others) < num_choices - 1:
        return None
    nearest = sorted(others, key=lambda c: (abs(others[c] - len(words)), abs(len(c) - len(context)), c))
    rng = random.Random(f"{seed}:{source}:{index}")
    contexts = rng.sample(nearest[: 4 * (num_choices - 1)], num_choices - 1)
    label = rng.randrange(num_choices)
    contexts.insert(label, context)
    return {
        "id": f"{source}:{lineno}:{index}",
        "contexts": contexts,
        "label": label,
        "ending": ending,
        "source": source,
        "line": lineno,
    }


def load_task_docs(task_file: str, data_dir: str | None = None, **_: Any):
    """lm_eval `custom_dataset` of the shipped YAMLs: `<data_dir>/<task_file>` as a DatasetDict with a
    "test" split. `data_dir` comes from the task metadata (run_tasks, or `--metadata` on the CLI);
    lm_eval passes the rest of the metadata too, which is ignored."""
    if not data_dir:
        raise ValueError(
            f"{task_file}: no data_dir in the lm_eval metadata; build the data with "
            "compactlm.evaluate.lmeval.build_task_data and pass metadata={'data_dir': <that folder>}"
        )
    path = Path(data_dir) / task_file
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; build it with compactlm.evaluate.lmeval.build_task_data")
    import datasets  # heavy (pyarrow, fsspec): see the module docstring

    with path.open(encoding="utf-8") as f:
        docs = [json.loads(line) for line in f if line.strip()]
    return datasets.DatasetDict({"test": datasets.Dataset.from_list(docs)})


def unknown_tasks(names: list[str], task_dir: str | Path = TASK_DIR) -> dict[str, str | None]:
    """The names of `names` that are neither a task of `task_dir` (the project's) nor a task, group or tag lm_eval
    knows offline, each with the closest known name (difflib) or None; {} when all are known.

    The project's tasks are looked up first; lm_eval's own index (~15k YAMLs, ~30 s on 2 CPU cores) is built only
    when a name is not one of them, with the same TaskManager run_tasks uses, and once per process.
    """
    from lm_eval.tasks._index import TaskIndex  # heavy (datasets, lm_eval): the launcher imports this module

    local = TaskIndex.build([Path(task_dir)])
    missing = [n for n in names if n not in local]
    if not missing:
        return {}
    known = _registered_tasks(str(task_dir))
    known_set = set(known)
    return {n: next(iter(difflib.get_close_matches(n, known, n=1)), None) for n in missing if n not in known_set}


@functools.lru_cache(maxsize=4)
def _registered_tasks(task_dir: str) -> tuple[str, ...]:
    """Every task, group and tag of lm_eval's own index plus those of `task_dir`."""
    from lm_eval.tasks import TaskManager  # heavy (datasets, lm_eval): the launcher imports this module

    return tuple(TaskManager(include_path=[task_dir], include_defaults=True).all_tasks)


def run_tasks(
    model,
    tokenizer,
    tasks: list[str],
    *,
    data_dir: str | Path | None = None,
    task_dir: str | Path | list[str | Path] = TASK_DIR,
    limit: int | None = None,
    batch_size: int = 8,
    num_fewshot: int | None = None,
    seed: int = 1234,
    samples_dir: str | Path | None = None,
) -> dict[str, dict[str, float]]:
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
        floats; e.g. {"polish_continuation": {"acc": 0.67, "acc_stderr": 0.047, "num_examples": 100}}.
        Metrics of a filter other than lm_eval's "none" keep the filter in their name ("exact_match,strict").
    """
    import torch  # heavy: see the module docstring
    from lm_eval import evaluator
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import TaskIndex

    task_dirs = [Path(p) for p in (task_dir if isinstance(task_dir, (list, tuple)) else [task_dir])]
    local = TaskIndex.build(task_dirs)
    # Indexing lm_eval's ~15k bundled tasks takes ~30 s on 2 CPU cores: only when a task is not one of ours.
    manager = TaskManager(
        include_path=[str(p) for p in task_dirs],
        include_defaults=any(t not in local for t in tasks),
        metadata={"data_dir": str(data_dir)} if data_dir is not None else None,
    )
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        raise ValueError(
            f"lm_eval tasks {unknown} are neither in {', '.join(map(str, task_dirs))} nor lm_eval's "
            f"own tasks; the project's tasks are {sorted(local)}"
        )

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
    results = evaluator.evaluate(
        lm=lm, task_dict=loaded, limit=limit, bootstrap_iters=1000, log_samples=samples_dir is not None
    )
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
