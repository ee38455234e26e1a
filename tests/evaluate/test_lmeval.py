"""lm-evaluation-harness tasks over local text: data building, the shipped YAMLs, and real lm_eval runs
of tiny models on the Polish sample in ../shared/data/polish/, with the network blocked."""

from __future__ import annotations

import json
import socket

import pytest
from conftest import POLISH, build_tiny_model, needs_polish

from compactlm.evaluate.lmeval import TASK_DIR, build_task_data, run_tasks

pytest.importorskip("lm_eval")


@pytest.fixture(scope="module")
def polish_data(tmp_path_factory):
    out = tmp_path_factory.mktemp("lmeval-data")
    build_task_data(POLISH, out, num_examples=40)
    return out


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a connection or resolve a name fails the test."""

    def refuse(*args, **kwargs):
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread, and on a busy machine OpenMP's waiting threads
    make their many small ops many times slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _records(path):
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


@needs_polish
def test_task_data_is_deterministic_balanced_and_well_formed(tmp_path):
    a = build_task_data(POLISH, tmp_path / "a", num_examples=30, num_choices=4, seed=7)
    b = build_task_data(POLISH, tmp_path / "b", num_examples=30, num_choices=4, seed=7)
    c = build_task_data(POLISH, tmp_path / "c", num_examples=30, num_choices=4, seed=8)
    short = build_task_data(POLISH, tmp_path / "d", num_examples=10, num_choices=4, seed=7)
    assert a.name == "polish_continuation.jsonl"
    assert a.read_bytes() == b.read_bytes()
    assert a.read_bytes() != c.read_bytes()
    rows = _records(a)
    assert _records(short) == rows[:10]  # a smaller build (or lm_eval's limit) is a prefix of a larger one
    assert [r["source"] for r in rows[:4]] == ["mpdt.txt", "pud.txt", "mpdt.txt", "pud.txt"]
    assert not list(tmp_path.glob("*/.*.tmp"))  # written atomically, no temporary left behind

    lines = {name: (POLISH / name).read_text(encoding="utf-8").splitlines() for name in ("mpdt.txt", "pud.txt")}
    labels = set()
    for r in rows:
        assert len(r["contexts"]) == 4 == len(set(r["contexts"])) and 0 <= r["label"] < 4
        # the gold beginning and the ending make the real sentence on the recorded line
        assert f"{r['contexts'][r['label']]} {r['ending']}" in " ".join(lines[r["source"]][r["line"] - 1].split())
        # every beginning has the same number of words, so none is given away by its length in words
        assert {len(c.split()) for c in r["contexts"]} == {len(r["contexts"][r["label"]].split())}
        assert len(r["ending"].split()) >= 4
        labels.add(r["label"])
    assert len(labels) > 2  # the gold position is shuffled


@needs_polish
def test_any_text_folder_works_and_errors_name_the_problem(tmp_path):
    from pydoc_data.topics import topics

    src = tmp_path / "english"
    src.mkdir()
    for name in ("assert", "while", "for", "if"):  # paragraphs: several sentences per line
        (src / f"{name}.txt").write_text(topics[name], encoding="utf-8")
    rows = _records(build_task_data(src, tmp_path / "out", name="text_continuation", num_examples=12))
    assert len(rows) == 12 and {r["source"] for r in rows} == {"assert.txt", "while.txt", "for.txt", "if.txt"}

    with pytest.raises(FileNotFoundError, match="no \\*.txt file"):
        build_task_data(tmp_path / "out", tmp_path / "x")
    with pytest.raises(ValueError, match="num_choices=1"):
        build_task_data(POLISH, tmp_path / "x", num_choices=1)


@needs_polish
def test_shipped_yamls_load_in_lm_eval_task_manager(polish_data):
    from lm_eval.tasks import TaskManager

    tm = TaskManager(include_path=str(TASK_DIR), include_defaults=False, metadata={"data_dir": str(polish_data)})
    assert {"polish_continuation", "text_continuation"} <= set(tm.all_tasks)
    task = tm.load(["polish_continuation"])["tasks"]["polish_continuation"]
    assert task.OUTPUT_TYPE == "multiple_choice"
    assert task.multiple_input == 2  # one ending scored after each of the 2 (default) beginnings
    docs = list(task.test_docs())
    assert len(docs) == 40
    first = _records(polish_data / "polish_continuation.jsonl")[0]
    assert task.doc_to_text(docs[0]) == first["label"]
    assert task.doc_to_choice(docs[0]) == first["contexts"]
    assert task.doc_to_target(docs[0]) == first["ending"]
    requests = task.construct_requests(doc=docs[0], ctx=task.fewshot_context(doc=docs[0], num_fewshot=0))
    assert [r.arguments for r in requests] == [(c, " " + first["ending"]) for c in first["contexts"]]

    with pytest.raises(ValueError, match="no data_dir"):
        TaskManager(include_path=str(TASK_DIR), include_defaults=False).load(["polish_continuation"])


@needs_polish
def test_run_tasks_offline_returns_accuracy_and_samples(polish_data, tiny_tokenizer, tmp_path, no_network, one_thread):
    model = build_tiny_model("llama")
    out = run_tasks(
        model, tiny_tokenizer, ["polish_continuation"], data_dir=polish_data, limit=12, samples_dir=tmp_path / "samples"
    )
    row = out["polish_continuation"]
    assert row["num_examples"] == 12
    assert 0.0 <= row["acc"] <= 1.0 and type(row["acc"]) is float
    assert row["acc_stderr"] > 0
    samples = _records(tmp_path / "samples" / "polish_continuation.jsonl")
    assert len(samples) == 12
    assert sum(s["acc"] for s in samples) / 12 == pytest.approx(row["acc"])


@needs_polish
def test_run_tasks_rejects_unknown_local_data(polish_data, tiny_tokenizer, tmp_path):
    with pytest.raises(FileNotFoundError, match="text_continuation.jsonl"):
        run_tasks(build_tiny_model("llama"), tiny_tokenizer, ["text_continuation"], data_dir=polish_data, limit=2)


@needs_polish
def test_a_model_that_learned_the_text_beats_a_random_one(tiny_tokenizer, tmp_path, no_network, one_thread):
    """The metric measures the model: a tiny model trained on the true sentences picks their endings,
    its untrained twin stays near chance (guards label / choice order mistakes end to end)."""
    import torch

    n = 8  # short sentences, so that a few steps on 2 CPU cores memorize them
    data = tmp_path / "data"
    rows = _records(build_task_data(POLISH, data, num_examples=n, num_choices=4, max_words=12))
    random_model = build_tiny_model("llama", seed=1)
    trained = build_tiny_model("llama", seed=1).train()
    texts = [f"{r['contexts'][r['label']]} {r['ending']}" for r in rows]
    batch = tiny_tokenizer(texts, return_tensors="pt", padding=True)
    labels = batch.input_ids.masked_fill(batch.attention_mask == 0, -100)
    torch.manual_seed(0)
    opt = torch.optim.AdamW(trained.parameters(), lr=3e-3)
    for _ in range(40):
        loss = trained(**batch, labels=labels).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    trained.eval()

    acc = {
        label: run_tasks(m, tiny_tokenizer, ["polish_continuation"], data_dir=data)["polish_continuation"]["acc"]
        for label, m in {"trained": trained, "random": random_model}.items()
    }
    # 7 of 8 by chance has probability 8 * 0.75 * 0.25**7 < 1e-3; a label / choice mix-up scores at chance
    assert acc["trained"] >= 7 / 8 > acc["random"], acc
