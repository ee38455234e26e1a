"""The search space: enumerated candidates fit the target, sit on the divisors, and carry exact parameter counts
(the count of the instantiated pruned model), fast enough for an 11B model's grid; presets are counted the same."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import CONF
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from compactlm.config import ConfigError, check_run_name
from compactlm.model.params import count_on_meta, hf_config_from_shape, pruned_hf_config
from compactlm.prune.schema import EXPORT_TO_HF
from compactlm.search import space
from compactlm.search.schema import SearchConfig
from compactlm.search.space import DIMENSIONS, enumerate_candidates, preset_candidate, target_count

BIELIK_SEARCH = dict(target_params=7.35e9, hidden_size_divisor=256, ffn_hidden_size_divisor=512)


def shape_config(model: str):
    return hf_config_from_shape(OmegaConf.to_container(OmegaConf.load(CONF / "model" / f"{model}.yaml").shape))


def instantiated_without_lm_head(cfg) -> int:
    """sum(p.numel()) of the model built on the meta device (tied embeddings once), less an untied lm_head."""
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(cfg)
    head = model.get_output_embeddings()
    tied = head.weight is model.get_input_embeddings().weight
    return sum(p.numel() for p in model.parameters()) - (0 if tied else head.weight.numel())


def check_candidates(base, search: SearchConfig, candidates, instantiate: bool) -> None:
    teacher = {key: getattr(base, EXPORT_TO_HF[key]) for key in EXPORT_TO_HF}
    teacher_params = count_on_meta(base)["without_lm_head"]
    target = target_count(search.target_params, teacher_params)
    divisors = {
        "num_layers": search.num_layers_divisor,
        "hidden_size": search.hidden_size_divisor,
        "ffn_hidden_size": search.ffn_hidden_size_divisor,
        "num_attention_heads": base.num_key_value_heads,
    }
    kinds = {key: kind for key, _, kind in DIMENSIONS}
    assert 0 < len(candidates) <= search.max_candidates
    assert [(-c.params, c.name) for c in candidates] == sorted((-c.params, c.name) for c in candidates)
    assert len({c.name for c in candidates}) == len(candidates)
    for c in candidates:
        export = c.export_config.known()
        assert export and all(teacher[k] != v for k, v in export.items()), c.name
        for key, value in export.items():
            assert value % divisors[key] == 0 and value <= teacher[key], (c.name, key)
        assert abs(c.params - target) <= search.tolerance * target, c.name
        assert c.kind == (kinds[next(iter(export))] if len(export) == 1 else "hybrid"), c.name
        assert c.name == "_".join(f"{letter}{export[k]}" for k, letter, _ in DIMENSIONS if k in export)
        check_run_name(c.name)
        cfg = pruned_hf_config(base, export)
        assert cfg.hidden_size % cfg.num_attention_heads == 0, c.name  # transformers saves nothing else
        assert c.params == count_on_meta(cfg)["without_lm_head"], c.name
        if instantiate:
            assert c.params == instantiated_without_lm_head(cfg), c.name
        assert c.change == pytest.approx(c.params / teacher_params - 1)


def test_target_count():
    assert target_count(0.67, 1000) == 670
    assert target_count(1, 1000) == 1000
    assert target_count(7.35e9, 11_000_000_000) == 7_350_000_000


@pytest.mark.parametrize("value", [0.67, 1, 1.0, 1000, 7.35e9, 134_515_008])
def test_target_params_accepts_fractions_and_whole_counts(value):
    assert SearchConfig(target_params=value).target_params == value


@pytest.mark.parametrize(
    "value,hint", [(1.5, ""), (67, " (a percentage? use 0.67)"), (999, ""), (7.35e9 + 0.5, ""), (0, ""), (-0.5, "")]
)
def test_target_params_between_a_fraction_and_a_count_is_refused(value, hint):
    with pytest.raises(ConfigError) as e:
        SearchConfig(target_params=value)
    assert str(e.value) == (
        f"search.target_params={value:g} is neither a fraction of the teacher's parameters in "
        "(0, 1] (0.67) nor a whole parameter count of at least 1,000 (7.35e9)" + hint
    )


def test_a_count_above_the_teacher_is_refused_not_sent_to_widen_the_tolerance():
    with pytest.raises(
        ConfigError,
        match=r"^search.target_params=2e\+11 asks for 200,000,000,000 parameters without "
        r"lm_head, but the teacher has only 134,515,008: a search prunes",
    ):
        enumerate_candidates(shape_config("smollm2_135m"), SearchConfig(target_params=2e11))


def test_smollm2_at_two_thirds():
    base = shape_config("smollm2_135m")
    search = SearchConfig(target_params=0.67)
    candidates = enumerate_candidates(base, search)
    assert len(candidates) == search.max_candidates
    assert {"depth", "ffn", "hybrid"} <= {c.kind for c in candidates}
    check_candidates(base, search, candidates, instantiate=True)
    assert candidates == enumerate_candidates(base, search)
    # FFN alone reaches -33% only below half the FFN width (the embeddings are a fifth of SmolLM2-135M): with at
    # most half of every width removed there is no FFN-only candidate
    narrower = SearchConfig(target_params=0.67, max_width_pruning=0.5)
    candidates = enumerate_candidates(base, narrower)
    assert "ffn" not in {c.kind for c in candidates} and "depth" in {c.kind for c in candidates}
    check_candidates(base, narrower, candidates, instantiate=True)


def test_smollm2_without_head_pruning_and_fewer_candidates():
    base = shape_config("smollm2_135m")
    search = SearchConfig(target_params=0.67, prune_heads=False, max_candidates=2)
    candidates = enumerate_candidates(base, search)
    assert [c.kind for c in sorted(candidates, key=lambda c: c.kind)] == ["depth", "ffn"], "kind preference"
    assert all("num_attention_heads" not in c.export_config.known() for c in candidates)
    check_candidates(base, search, candidates, instantiate=False)


def test_bielik_absolute_target():
    # 4,860 grid points: counted with the affine counts (a meta model each would take minutes), exact all the same
    base = shape_config("bielik_11b_v3")
    search = SearchConfig(**BIELIK_SEARCH)
    candidates = enumerate_candidates(base, search)
    assert len(candidates) == search.max_candidates
    assert {"depth", "ffn", "hybrid"} <= {c.kind for c in candidates}
    check_candidates(base, search, candidates, instantiate=True)


@pytest.mark.parametrize(
    "shape",
    [
        # q/k/v biases (Qwen2.5-0.5B's sizes, smaller vocabulary)
        dict(
            model_type="qwen2",
            hidden_size=896,
            intermediate_size=4864,
            num_hidden_layers=24,
            num_attention_heads=14,
            num_key_value_heads=2,
            vocab_size=4096,
            tie_word_embeddings=True,
        ),
        # q_norm/k_norm over head_dim, head_dim * heads != hidden (Qwen3-0.6B's sizes)
        dict(
            model_type="qwen3",
            hidden_size=1024,
            intermediate_size=3072,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            vocab_size=4096,
            tie_word_embeddings=False,
        ),
    ],
    ids=lambda s: s["model_type"],
)
def test_counts_are_exact_for_other_architectures(shape):
    base = hf_config_from_shape(shape)
    search = SearchConfig(target_params=0.7)
    check_candidates(base, search, enumerate_candidates(base, search), instantiate=True)


def test_a_count_off_the_formula_is_caught(monkeypatch):
    """The per-layer formula is checked against a full meta count of every candidate kept."""
    affine = space._affine_count

    def off_by_one(*args):
        count = affine(*args)
        return dataclasses.replace(count, per_layer=count.per_layer + 1)

    monkeypatch.setattr(space, "_affine_count", off_by_one)
    with pytest.raises(RuntimeError, match="not affine"):
        enumerate_candidates(shape_config("smollm2_135m"), SearchConfig(target_params=0.67))


def test_presets_on_bielik():
    base = shape_config("bielik_11b_v3")
    teacher_params = count_on_meta(base)["without_lm_head"]

    def preset(name: str):
        export = OmegaConf.to_container(OmegaConf.load(CONF / "prune" / f"{name}.yaml").export_config)
        return preset_candidate(name, export, base, teacher_params)

    exp_010 = preset("exp_010")  # the report: Bielik-11B-v3 11.04B -> 7.35B without lm_head, -33.4%
    assert (exp_010.name, exp_010.kind) == ("exp_010", "hybrid")
    assert exp_010.export_config.known() == {"ffn_hidden_size": 11264, "num_layers": 40}
    assert round(exp_010.params / 1e9, 2) == 7.35 and round(exp_010.change * 100, 1) == -33.4
    assert (
        exp_010.params
        == count_on_meta(pruned_hf_config(base, {"ffn_hidden_size": 11264, "num_layers": 40}))["without_lm_head"]
    )
    assert [preset(n).kind for n in ("exp_001", "exp_002", "exp_003")] == ["hidden", "ffn", "depth"]
    with pytest.raises(ConfigError, match="prunes? nothing|keeps every size"):
        preset_candidate("exp_same", {"num_layers": 50}, base, teacher_params)


def test_an_impossible_target_names_the_setting():
    base = shape_config("smollm2_135m")
    with pytest.raises(ConfigError, match=r"search\.target_params=0\.05 .* nearest has") as e:
        enumerate_candidates(base, SearchConfig(target_params=0.05))
    assert "\n" not in str(e.value)
    with pytest.raises(ConfigError, match="search.max_width_pruning"):
        enumerate_candidates(base, SearchConfig(target_params=0.67, max_depth_pruning=0, max_width_pruning=0))
