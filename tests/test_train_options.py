"""One vocabulary of training knobs (compactlm.train_options): the same key in distill, sft, dpo and grpo, today's
old keys mapped onto it with one deprecation line, and bad values refused naming the key."""

from __future__ import annotations

import dataclasses

import pytest
from helpers import compose, config_error

from compactlm import train_options
from compactlm.align.schema import DPOConfig, GRPOConfig, SFTConfig
from compactlm.distill.schema import DistillConfig
from compactlm.errors import ConfigError
from compactlm.launch.records import resolved_yaml
from compactlm.launch.validate import to_config
from compactlm.manifest import sha256_json
from compactlm.pipeline import load_config
from compactlm.train_options import TrainingOptions

SECTIONS = {"distill": DistillConfig, "sft": SFTConfig, "dpo": DPOConfig, "grpo": GRPOConfig}
ALIGN_RECIPE = "recipe=prune_distill_align"


@pytest.fixture(autouse=True)
def fresh_announcements(monkeypatch):
    """Each test sees the deprecation lines its own process would print first."""
    monkeypatch.setattr(train_options, "_ANNOUNCED", set())


def test_every_training_section_shares_the_vocabulary():
    shared = {f.name for f in dataclasses.fields(TrainingOptions)}
    for name, cls in SECTIONS.items():
        assert issubclass(cls, TrainingOptions) and cls.section == name
        assert shared <= {f.name for f in dataclasses.fields(cls)}, name


@pytest.mark.parametrize(
    "old,new,value",
    [
        ("distill.checkpoint_every", "distill.save_every", 3),
        ("sft.save_steps", "sft.save_every", 5),
        ("dpo.batch_size", "dpo.micro_batch_size", 2),
        ("grpo.batch_size", "grpo.micro_batch_size", 4),
    ],
)
def test_old_key_maps_onto_the_new_one_with_one_deprecation_line(capsys, old, new, value):
    conf = to_config(compose([ALIGN_RECIPE, f"{old}={value}"]))
    section, old_name = old.split(".")
    assert getattr(getattr(conf, section), new.split(".")[1]) == value
    assert getattr(getattr(conf, section), old_name) is None  # the resolved config carries the new key only
    lines = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert lines == [f"compactlm: {old} is deprecated, use {new} (the old key is read until the next release)"]


def test_the_deprecation_line_is_printed_once_per_run(capsys, tmp_path):
    """Converted twice in the launcher, and the stages' processes read a config.yaml without the old key."""
    conf = to_config(compose(["distill.checkpoint_every=3"]))
    to_config(compose(["distill.checkpoint_every=3"]))
    (tmp_path / "config.yaml").write_text(resolved_yaml(conf))  # write-ok: test's own temporary folder
    train_options._ANNOUNCED.clear()  # a fresh process on a node
    assert load_config(tmp_path / "config.yaml").distill.save_every == 3
    assert capsys.readouterr().err.count("deprecated") == 1


def test_old_and_new_key_with_different_values_is_one_error():
    with pytest.raises(ConfigError) as e:
        to_config(compose([ALIGN_RECIPE, "sft.save_steps=3", "sft.save_every=4"]))
    assert str(e.value) == (
        "sft.save_steps=3 and sft.save_every=4 disagree: sft.save_steps is the deprecated name of sft.save_every; "
        "set only sft.save_every"
    )
    assert to_config(compose([ALIGN_RECIPE, "sft.save_steps=4", "sft.save_every=4"])).sft.save_every == 4


def test_old_keys_give_the_same_config_and_hash_as_the_new_ones():
    """A run moved from the old keys to the new ones keeps its stage config hash (the hash covers the section)."""
    old = to_config(compose([ALIGN_RECIPE, "distill.checkpoint_every=3", "grpo.batch_size=4", "grpo.save_steps=2"]))
    new = to_config(compose([ALIGN_RECIPE, "distill.save_every=3", "grpo.micro_batch_size=4", "grpo.save_every=2"]))
    for section in ("distill", "grpo"):
        a, b = dataclasses.asdict(getattr(old, section)), dataclasses.asdict(getattr(new, section))
        assert a == b and sha256_json(a) == sha256_json(b)


def test_the_shipped_align_recipe_composes_with_the_new_keys():
    keys = [f"{s}.{k}" for s in SECTIONS for k in ("micro_batch_size=4", "save_every=4", "min_lr=1e-6")]
    conf = to_config(compose([ALIGN_RECIPE, *keys, "sft.warmup_steps=1", "distill.warmup_ratio=0.1"]))
    for s in SECTIONS:
        cfg = getattr(conf, s)
        assert (cfg.micro_batch_size, cfg.save_every, cfg.min_lr) == (4, 4, 1e-6)
    assert conf.sft.warmup(24) == 1 and conf.dpo.warmup(24) == 2  # warmup_steps wins over the ratio 0.1
    assert conf.distill.warmup_steps == 4 and conf.distill.warmup(56) == 4


def test_warmup_ratio_is_used_when_warmup_steps_is_null():
    assert DistillConfig(warmup_steps=None, warmup_ratio=0.25).warmup(20) == 5
    assert SFTConfig(max_steps=24).warmup(24) == 2  # floor(0.1 × 24), as the align stages always computed


@pytest.mark.parametrize(
    "kwargs,message",
    [
        (dict(lr=0.0), "distill.lr=0.0 must be > 0"),
        (dict(min_lr=1.0), "distill.min_lr=1.0 must be between 0 and distill.lr=0.0005"),
        (dict(warmup_ratio=1.0), "distill.warmup_ratio=1.0 must be in [0, 1)"),
        (dict(warmup_steps=-1), "distill.warmup_steps=-1 must be an integer >= 0"),
        (dict(micro_batch_size=0), "distill.micro_batch_size=0 must be an integer >= 1"),
        (dict(save_every=0), "distill.save_every=0 must be an integer >= 1"),
        (dict(weight_decay=-0.1), "distill.weight_decay=-0.1 must be >= 0"),
        (dict(grad_clip=-1.0), "distill.grad_clip=-1.0 must be >= 0"),
        (dict(nproc_per_node=0), "distill.nproc_per_node=0 must be an integer >= 1"),
    ],
)
def test_bad_values_name_the_key(kwargs, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace(")", r"\)")):
        DistillConfig(**kwargs)


def test_align_stages_need_a_step_budget():
    with pytest.raises(ConfigError, match=r"grpo.max_steps is null; the grpo stage trains a fixed number of steps"):
        GRPOConfig(max_steps=None)


# ------------------------------------------------------------------------------------------ the batch, one way
@pytest.mark.parametrize("section", list(SECTIONS))
def test_the_global_batch_is_said_one_way_in_every_section(section):
    """global_batch_size = micro_batch_size × accumulation × processes, in distill and in the align stages."""
    conf = to_config(compose([ALIGN_RECIPE, f"{section}.micro_batch_size=4", f"{section}.global_batch_size=16"]))
    cfg = getattr(conf, section)
    assert (cfg.accumulation(1), cfg.accumulation(2), cfg.accumulation(4)) == (4, 2, 1)
    with pytest.raises(ConfigError, match=rf"^{section}.global_batch_size=16 is not a multiple of {section}.micro"):
        cfg.accumulation(8)
    with pytest.raises(ConfigError, match=rf"^{section}.global_batch_size=6 is not a multiple of {section}.micro"):
        to_config(compose([ALIGN_RECIPE, f"{section}.micro_batch_size=4", f"{section}.global_batch_size=6"]))


def test_the_align_stages_accumulate_nothing_without_a_global_batch():
    conf = to_config(compose([ALIGN_RECIPE]))
    assert all(
        getattr(conf, s).global_batch_size is None and getattr(conf, s).accumulation(2) == 1
        for s in "sft dpo grpo".split()
    )


def test_grad_accum_still_works_for_one_release_with_one_line(capsys):
    conf = to_config(compose([ALIGN_RECIPE, "sft.micro_batch_size=2", "sft.grad_accum=3"]))
    assert conf.sft.accumulation(1) == 3 and conf.sft.accumulation(4) == 3  # its old meaning: per process
    lines = [line for line in capsys.readouterr().err.splitlines() if "deprecated" in line]
    assert lines == [
        "compactlm: sft.grad_accum is deprecated, use sft.global_batch_size (= micro_batch_size × grad_accum × "
        "processes) (the old key is read until the next release)"
    ]
    with pytest.raises(ConfigError, match=r"^sft.grad_accum=3 and sft.global_batch_size=6 are both set"):
        to_config(compose([ALIGN_RECIPE, "sft.grad_accum=3", "sft.global_batch_size=6", "sft.micro_batch_size=2"]))


def test_grpo_steps_hold_whole_groups():
    assert GRPOConfig(micro_batch_size=2, global_batch_size=8, num_generations=4).accumulation(2) == 2
    with pytest.raises(ConfigError, match=r"^grpo.global_batch_size = 6 must be a multiple of grpo.num_generations=4"):
        GRPOConfig(micro_batch_size=2, global_batch_size=6, num_generations=4)


def test_launch_refuses_a_global_batch_that_does_not_divide_over_the_processes():
    """2 nodes × 8 GPUs = 16 processes: a global batch of 24 sequences of micro-batch 2 cannot be dealt out."""
    cluster = ["cluster=slurm", "cluster.slurm.account=a", "cluster.gpus_per_node=8", "cluster.nodes=2"]
    assert config_error([*cluster, "distill.micro_batch_size=2", "distill.global_batch_size=24"]) == (
        "distill.global_batch_size=24 is not a multiple of distill.micro_batch_size=2 × 16 processes; choose a "
        "global batch divisible by 32 or a smaller micro batch"
    )
    align = [ALIGN_RECIPE, *cluster, "distill.global_batch_size=32", "distill.micro_batch_size=2"]
    assert config_error([*align, "dpo.micro_batch_size=1", "dpo.global_batch_size=8"]).startswith(
        "dpo.global_batch_size=8 is not a multiple of dpo.micro_batch_size=1 × 16 processes"
    )
