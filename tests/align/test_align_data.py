"""Alignment data: every bad file is refused before anything runs, with its file, line and field named."""

from __future__ import annotations

import copy
import json

import pytest
from helpers import config_error, run_launch

from compactlm.align.data import CHARS_PER_TOKEN, BadExample, budgets, read_jsonl, split_heldout, to_conversational
from compactlm.align.schema import DPOConfig, GRPOConfig, SFTConfig
from compactlm.align.train import CHATML, chat_tokens, fit_prompts, report_over
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
    (
        "sft",
        {"messages": [{"role": "bot", "content": "x"}]},
        ["'messages[0].role'", "'bot'", "system, user, assistant"],
    ),
    (
        "sft",
        {"messages": [{"role": "user", "content": "x"}]},
        ["'messages[0].role'", "last message must be the assistant"],
    ),
    (
        "sft",
        {"messages": [{"role": "user", "content": "x"}, {"role": "assistant", "content": ""}]},
        ["'messages[1].content'", "non-empty string"],
    ),
    (
        "sft",
        {
            "messages": [
                {"role": "user", "content": "x"},
                {"role": "system", "content": "y"},
                {"role": "assistant", "content": "z"},
            ]
        },
        ["'messages[1].role'", "after the first message"],
    ),
    ("dpo", {"prompt": "q", "chosen": "a"}, ["field 'rejected' is missing"]),
    ("dpo", {"prompt": "q", "chosen": "same", "rejected": "same"}, ["'chosen' and 'rejected' are the same"]),
    ("dpo", {"prompt": "q", "chosen": ["a"], "rejected": "b"}, ["field 'chosen' must be a string", "list"]),
    ("grpo", {"prompt": "q", "answer": "  "}, ["field 'answer' is empty"]),
    ("grpo", {"prompt": "q"}, ["field 'answer' is missing"]),
    ("grpo", ["q", "4"], ["expected a JSON object"]),
    ("grpo", b'{"prompt": "q", "answer": ', ["not valid JSON"]),
    ("dpo", b'{"prompt": "za\xbf\xf3\xb3\xe6", "chosen": "a", "rejected": "b"}', ["not UTF-8"]),
    # JSON itself keeps the last of two equal keys: a pair edited by hand would train on the wrong answer
    ("dpo", b'{"prompt": "q", "chosen": "a", "rejected": "b", "chosen": "c"}', ["field 'chosen' appears twice"]),
    ("sft", b'{"messages": [{"role": "user", "content": "x", "role": "assistant"}]}', ["field 'role' appears twice"]),
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
    base = [
        "recipe=prune_distill_align",
        "align_data=jsonl",
        f"align_data.sft.paths=[{good['sft']}]",
        f"align_data.grpo.paths=[{good['grpo']}]",
        f"runs_root={tmp_path}",
    ]
    message = config_error([*base, f"align_data.dpo.paths=[{bad}]"])
    assert message == f"{bad} line 3: field 'chosen' must be a string, got int"
    assert "matches no file" in config_error([*base, f"align_data.dpo.paths=[{tmp_path}/nope*.jsonl]"])
    assert "align_data.dpo.paths" in config_error(
        ["recipe=prune_distill_align", "align_data=jsonl", f"align_data.sft.paths=[{good['sft']}]"]
    )
    message = config_error([*base, f"align_data.dpo.paths=[{good['dpo']}]", "grpo.rewards=[mypkg_nowhere.rewards:fn]"])
    assert "grpo.rewards" in message and "mypkg_nowhere.rewards" in message
    message = config_error([*base, f"align_data.dpo.paths=[{good['dpo']}]", "grpo.rewards=[compactlm.rewards.nothing]"])
    assert "has no function 'nothing'" in message
    assert "dpo.loss='dpo_positive' is not allowed" in config_error(
        ["recipe=prune_distill_align", "dpo.loss=dpo_positive"]
    )
    message = config_error(["recipe=prune_distill_align", "recipe.stages=[model,data,sft]"])
    assert "add align_data before them" in message


def test_hf_source_reads_a_dataset_and_checks_every_row(tmp_path):
    from compactlm.align.data import read_hf
    from compactlm.align.schema import AlignSource

    folder = tmp_path / "pairs"
    folder.mkdir()
    _file(folder, [GOOD["dpo"]] * 12, "train.jsonl")  # a dataset folder, as load_dataset reads it offline
    train, heldout = read_hf("dpo", AlignSource(source="hf", hf_path=str(folder), heldout=4))
    assert len(train) == 8 and len(heldout) == 4 and train[0] == GOOD["dpo"]
    _file(folder, [GOOD["dpo"], {**GOOD["dpo"], "rejected": "4"}], "train.jsonl")
    with pytest.raises(BadExample, match=r"\[train\] row 1: fields 'chosen' and 'rejected' are the same"):
        read_hf("dpo", AlignSource(source="hf", hf_path=str(folder), heldout=1))


# ------------------------------------------------------------------------------------------ length budgets
LIMITS = budgets(
    SFTConfig(max_length=16),
    DPOConfig(max_length=16),
    GRPOConfig(max_length=16, max_completion_length=6, micro_batch_size=4, num_generations=2),
)
LONG = "x" * (16 * CHARS_PER_TOKEN + 1)  # one character past what 16 tokens can hold


@pytest.mark.parametrize(
    "kind,bad,field,tokens",
    [
        (
            "sft",
            {"messages": [{"role": "user", "content": LONG}, {"role": "assistant", "content": "a"}]},
            "messages[0].content",
            "16 tokens (sft.max_length=16)",
        ),
        (
            "sft",
            {"messages": [{"role": "user", "content": LONG[:300]}, {"role": "assistant", "content": LONG[:300]}]},
            "messages",
            "16 tokens (sft.max_length=16)",
        ),
        ("dpo", {"prompt": "q", "chosen": "a", "rejected": LONG}, "rejected", "16 tokens (dpo.max_length=16)"),
        (
            "grpo",
            {"prompt": "q" * (10 * CHARS_PER_TOKEN + 1), "answer": "4"},
            "prompt",
            "10 tokens (grpo.max_length=16 - grpo.max_completion_length=6)",
        ),
    ],
)
def test_a_field_longer_than_its_token_budget_is_refused(tmp_path, kind, bad, field, tokens):
    path = _file(tmp_path, [GOOD[kind], bad])
    with pytest.raises(BadExample) as e:
        read_jsonl(kind, path, LIMITS[kind])
    message = str(e.value)
    assert message.startswith(f"{path} line 2: field {field!r} has ") and tokens in message and "\n" not in message
    read_jsonl(kind, path)  # the stages' reading (no limits) takes it: they measure in tokens and truncate


def test_launch_refuses_a_50_mb_grpo_prompt_in_one_line_before_any_stage(tmp_path):
    good = {k: _file(tmp_path, [GOOD[k]] * 40, f"{k}.jsonl") for k in GOOD}
    huge = _file(tmp_path, [GOOD["grpo"], {"prompt": "7 + 5 = ? " * 5_000_000, "answer": "12"}], "huge.jsonl")
    assert huge.stat().st_size > 50_000_000
    proc = run_launch(
        [
            "recipe=prune_distill_align",
            "align_data=jsonl",
            f"align_data.sft.paths=[{good['sft']}]",
            f"align_data.dpo.paths=[{good['dpo']}]",
            f"align_data.grpo.paths=[{huge}]",
            f"runs_root={tmp_path / 'runs'}",
        ],
        timeout=300,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(
        f"compactlm: configuration error: {huge} line 2: field 'prompt' has 50,000,000 "
        "characters, more than its 144 tokens (grpo.max_length=160 - "
        "grpo.max_completion_length=16)"
    ), lines[0]
    assert not (tmp_path / "runs").exists()  # nothing written, no stage started


def test_align_max_length_must_fit_the_models_context():
    message = config_error(["recipe=prune_distill_align", "grpo.max_length=9000"])
    assert message == (
        "grpo.max_length=9000 exceeds the model's max_position_embeddings=8192 (smollm2_135m); "
        "use grpo.max_length<=8192"
    )
    with pytest.raises(
        ConfigError,
        match=r"^grpo.max_completion_length=16 leaves no room for the prompt in "
        r"grpo.max_length=16 tokens",
    ):
        GRPOConfig(max_length=16)


@pytest.fixture
def chat_tok(tiny_tokenizer):
    tok = copy.deepcopy(tiny_tokenizer)  # the session's tokenizer keeps no chat template
    tok.chat_template = CHATML
    return tok


def test_grpo_stage_truncates_long_prompts_to_their_end_and_says_so(chat_tok, capsys):
    rows = [
        {"prompt": "Ala has 7 books and gets 5 more. " * 40 + "How many now?", "answer": "12"},
        {"prompt": "2+2?", "answer": "4"},
    ]
    fitted = fit_prompts("grpo", rows, chat_tok, 80)
    assert fitted[1] == rows[1] and fitted[0]["answer"] == "12"
    assert fitted[0]["prompt"].endswith("How many now?") and len(fitted[0]["prompt"]) < len(rows[0]["prompt"])
    assert chat_tokens(chat_tok, [{"role": "user", "content": fitted[0]["prompt"]}], prompt_only=True) <= 80
    assert "[grpo] 1 of 2 prompts are longer than 80 tokens" in capsys.readouterr().out


def test_sft_and_dpo_stages_say_how_many_sequences_trl_truncates(chat_tok, capsys):
    short = [{"role": "user", "content": "2+2?"}, {"role": "assistant", "content": "4"}]
    long = [{"role": "user", "content": "Name a keyword. " * 30}, {"role": "assistant", "content": "yield"}]
    limit = chat_tokens(chat_tok, short) + 1
    assert report_over("sft", [short, long, short], chat_tok, limit) == 1
    assert (
        f"[sft] 1 of 3 sequences are longer than sft.max_length={limit} tokens; TRL truncates"
        in capsys.readouterr().out
    )
    assert report_over("dpo", [short], chat_tok, limit) == 0 and capsys.readouterr().out == ""
