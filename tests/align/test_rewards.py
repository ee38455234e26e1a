"""GRPO's verifiable rewards and the dotted paths that name them."""

from __future__ import annotations

import pytest

from compactlm.align.demo import problems
from compactlm.config import ConfigError
from compactlm.rewards import answer_format, extract_answer, numeric_match, resolve


def test_numeric_match_reads_the_stated_answer_else_the_last_number():
    completions = [
        "3 + 4 = 7. Answer: 7",
        "Answer: 8",
        "I think it is 12",
        [{"role": "assistant", "content": "Answer: 1,200"}],
        "no idea",
    ]
    assert numeric_match(None, completions, answer=["7", "7", "12", "1200", "3"]) == [1.0, 0.0, 1.0, 1.0, 0.0]
    assert extract_answer("Answer: 5, not 6") == 5.0 and extract_answer("the answer is -3.5") == -3.5


def test_answer_format_is_graded():
    assert answer_format(None, ["so Answer: 12", "twelve is 12", "twelve"]) == [1.0, 0.5, 0.0]


def test_demo_problems_are_exact_and_deterministic():
    ps = problems(50, seed=3)
    assert ps == problems(50, seed=3) and ps != problems(50, seed=4)
    for p in ps:
        assert "Answer: <number>" in p["prompt"] and int(p["answer"]) > 0


def test_resolve_takes_both_path_forms_and_names_what_is_wrong():
    assert resolve("compactlm.rewards.numeric_match") is numeric_match
    assert resolve("compactlm.rewards:answer_format") is answer_format
    with pytest.raises(ConfigError, match="cannot be imported"):
        resolve("no_such_pkg.mod:fn")
    with pytest.raises(ConfigError, match="not a dotted path"):
        resolve("numeric_match")
