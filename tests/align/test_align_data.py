"""Alignment data: every bad file is refused before anything runs, with its file, line and field named."""

from __future__ import annotations

import json

import pytest
from helpers import config_error

from compactlm.align.data import BadExample, read_jsonl, split_heldout, to_conversational
from compactlm.config import ConfigError

GOOD = {
    "sft": {"messages": [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]},
    "dpo": {"prompt": "2+2?", "chosen": "4", "rejected": "5"},
    "grpo": {"prompt": "2+2?", "answer": "4"},
}


def _file(tmp_path, lines, name="data.jsonl"):
    path = tmp_path / name
    path.write_bytes(b"".join((x if isinstance(x, bytes) else json.dumps(x).encode()) + b"\n" for x in lines))
    return path


# (kind, bad line, words the one-line error must contain besides the file and "line 2")
BAD = [
    ("sft", {"text": "hi"}, ["field 'messages' is missing"]),
    ("sft", {"messages": []}, ["field 'messages'", "non-empty list"]),
    ("sft", {"messages": [{"role": "bot", "content": "x"}]}, ["'messages[0].role'", "'bot'", "system, user, assistant"]),
    ("sft", {"messages": [{"role": "user", "content": "x"}]}, ["'messages[0].role'", "last message must be the assistant"]),
    ("sft", {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
     ["'messages[1].content'", "non-empty string"]),
    ("sft", {"messages": [{"role": "user", "content": "x"}, {"role": "system", "content": "y"},
                          {"role": "assistant", "content": "z"}]}, ["'messages[1].role'", "after the first message"]),
    ("dpo", {"prompt": "q", "chosen": "a"}, ["field 'rejected' is missing"]),
    ("dpo", {"prompt": "q", "chosen": "same", "rejected": "same"}, ["'chosen' and 'rejected' are the same"]),
    ("dpo", {"prompt": "q", "chosen": ["a"], "rejected": "b"}, ["field 'chosen' must be a string", "list"]),
    ("grpo", {"prompt": "q", "answer": "  "}, ["field 'answer' is empty"]),
    ("grpo", {"prompt": "q"}, ["field 'answer' is missing"]),
    ("grpo", ["q", "4"], ["expected a JSON object"]),
    ("grpo", b'{"prompt": "q", "answer": ', ["not valid JSON"]),
    ("dpo", b'{"prompt": "za\xbf\xf3\xb3\xe6", "chosen": "a", "rejected": "b"}', ["not UTF-8"]),
]


@pytest.mark.parametrize("kind,bad,words", BAD, ids=[f"{k}-{i}" for i, (k, _, _) in enumerate(BAD)])
def test_a_bad_line_is_refused_with_file_line_and_field(tmp_path, kind, bad, words):
    path = _file(tmp_path, [GOOD[kind], bad])
    with pytest.raises(BadExample) as e:
        read_jsonl(kind, path)
    message = str(e.value)
    assert message.startswith(f"{path} line 2: ") and "\n" not in message
    for w in words:
        assert w in message, message


def test_empty_and_missing_files_are_refused(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(BadExample, match="no examples"):
        read_jsonl("sft", empty)
    with pytest.raises(BadExample, match="not a file"):
        read_jsonl("sft", tmp_path / "missing.jsonl")


def test_good_files_read_back_as_trl_conversations(tmp_path):
    rows = read_jsonl("grpo", _file(tmp_path, [{"prompt": "q", "answer": 42, "extra": 1}]))
    assert rows == [{"prompt": "q", "answer": "42"}]  # numbers become text; other fields are dropped
    conv = to_conversational("dpo", GOOD["dpo"])
    assert conv["prompt"] == [{"role": "user", "content": "2+2?"}]
    assert conv["chosen"] == [{"role": "assistant", "content": "4"}]
    train, heldout = split_heldout(list(range(10)), 3, "align_data.sft")
    assert train == list(range(7)) and heldout == [7, 8, 9]
    with pytest.raises(ConfigError, match="align_data.sft.heldout=3: only 5 examples"):
        split_heldout(list(range(5)), 3, "align_data.sft")


def test_launch_refuses_a_bad_file_before_submitting(tmp_path):
    good = {k: _file(tmp_path, [GOOD[k]] * 40, f"{k}.jsonl") for k in GOOD}
    bad = _file(tmp_path, [GOOD["dpo"], GOOD["dpo"], {"prompt": "q", "chosen": 1, "rejected": "b"}], "bad.jsonl")
    base = ["recipe=prune_distill_align", "align_data=jsonl", f"align_data.sft.paths=[{good['sft']}]",
            f"align_data.grpo.paths=[{good['grpo']}]", f"runs_root={tmp_path}"]
    message = config_error([*base, f"align_data.dpo.paths=[{bad}]"])
    assert message == f"{bad} line 3: field 'chosen' must be a string, got int"
    assert "matches no file" in config_error([*base, f"align_data.dpo.paths=[{tmp_path}/nope*.jsonl]"])
    assert "align_data.dpo.paths" in config_error(["recipe=prune_distill_align", "align_data=jsonl",
                                                   f"align_data.sft.paths=[{good['sft']}]"])
    message = config_error([*base, f"align_data.dpo.paths=[{good['dpo']}]", "grpo.rewards=[mypkg_nowhere.rewards:fn]"])
    assert "grpo.rewards" in message and "mypkg_nowhere.rewards" in message
    message = config_error([*base, f"align_data.dpo.paths=[{good['dpo']}]", "grpo.rewards=[compactlm.rewards.nothing]"])
    assert "has no function 'nothing'" in message
    assert "dpo.loss='dpo_positive' is not allowed" in config_error(["recipe=prune_distill_align", "dpo.loss=dpo_positive"])
    message = config_error(["recipe=prune_distill_align", "recipe.stages=[model,data,sft]"])
    assert "add align_data before them" in message


def test_hf_source_reads_a_dataset_and_checks_every_row(tmp_path):
    from compactlm.align.data import read_hf
    from compactlm.config import AlignSource

    folder = tmp_path / "pairs"
    folder.mkdir()
    _file(folder, [GOOD["dpo"]] * 12, "train.jsonl")  # a dataset folder, as load_dataset reads it offline
    train, heldout = read_hf("dpo", AlignSource(source="hf", hf_path=str(folder), heldout=4))
    assert len(train) == 8 and len(heldout) == 4 and train[0] == GOOD["dpo"]
    _file(folder, [GOOD["dpo"], {**GOOD["dpo"], "rejected": "4"}], "train.jsonl")
    with pytest.raises(BadExample, match=r"\[train\] row 1: fields 'chosen' and 'rejected' are the same"):
        read_hf("dpo", AlignSource(source="hf", hf_path=str(folder), heldout=1))
