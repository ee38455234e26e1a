"""The plan printed before submission (compactlm.launch.plan): its figures against hand calculations on a tiny
config, the activation formula against the tensors transformers really saves, and the refusals (a distillation
that does not fit one GPU, a teacher cache larger than its folder's free space) as launch.py prints them."""

from __future__ import annotations

import shutil
from collections import namedtuple

import pytest
import torch
from conftest import TINY as TINY_ARCHS
from conftest import tiny_config
from helpers import compose, run_launch
from transformers import AutoConfig, AutoModelForCausalLM

from compactlm.config import ConfigError
from compactlm.launch import plan as plan_module
from compactlm.launch.launcher import place_run
from compactlm.launch.plan import (
    DEVICES,
    GPU_RUNTIME,
    HOST_RUNTIME,
    MODELOPT_RUNTIME,
    check_plan,
    checkpoint_layout,
    format_plan,
    layer_activation_bytes,
    model_sizes,
    plan_run,
)
from compactlm.launch.search import resolve_search
from compactlm.launch.validate import to_config, validate
from compactlm.model.params import count_on_meta, pruned_hf_config
from compactlm.pipeline import STAGE_NAMES
from compactlm.search.stage import ranking_rows

# A tiny Llama: 2 layers, hidden 64, FFN 128, 4 heads of 16 (2 KV heads), vocabulary 256, untied output layer.
TINY = {
    "model_type": "llama",
    "hidden_size": 64,
    "intermediate_size": 128,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "vocab_size": 256,
    "tie_word_embeddings": False,
}
# by hand: embedding 256·64; per layer q 64·64, k and v 64·32, o 64·64, MLP 3·64·128, two norms of 64;
# final norm 64; output layer 256·64
LAYER = 64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128 + 2 * 64
TOTAL = 256 * 64 + 2 * LAYER + 64 + 256 * 64
TINY_GPU = [
    "recipe.stages=[distill]",
    "cluster=slurm",
    "cluster.slurm.account=acct",
    "cluster.gpus_per_node=4",
    "cluster.gpu=h100",
    "data.seq_len=32",
    "distill.micro_batch_size=2",
    "distill.global_batch_size=8",
    "distill.max_steps=10",
]
DiskUsage = namedtuple("DiskUsage", "total used free")  # what shutil.disk_usage returns
BIELIK = [
    "recipe=prune_distill",
    "model=bielik_11b_v3",
    "prune=exp_010",
    "cluster=dgx_h200",
    "cluster.lepton.node_group=h200-pool",
    "cluster.container_image=nvcr.io/acme/compactlm-train:1",
    "data.seq_len=8192",
    "distill.max_steps=8000",
    "distill.global_batch_size=128",
]
BIELIK_DDP_H100 = [
    "recipe=prune_distill",
    "model=bielik_11b_v3",
    "prune=exp_010",
    "cluster=slurm",
    "cluster.slurm.account=acct",
    "cluster.gpu=h100",
    "cluster.nodes=2",
    "cluster.gpus_per_node=8",
    "data.seq_len=8192",
    "distill.global_batch_size=128",
    "distill.strategy=ddp",
]


def tiny_plan(extra: list[str] = ()):
    conf = to_config(compose(TINY_GPU + list(extra)))
    return plan_run(conf, dict(TINY)), conf


def launcher_plan(overrides: list[str]):
    """The plan launch.py makes of `overrides`: composed, validated, searched and placed first."""
    conf = to_config(compose(overrides))
    shape = validate(conf, STAGE_NAMES)
    resolve_search(conf, shape)
    place_run(conf)
    return plan_run(conf, shape), conf


# ------------------------------------------------------------------------------------------ counting
SHAPE_KEYS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "vocab_size",
    "tie_word_embeddings",
)


@pytest.mark.parametrize("model_type", sorted(TINY_ARCHS))
@pytest.mark.parametrize(
    "export", [{}, {"num_layers": 2, "ffn_hidden_size": 48, "hidden_size": 48, "num_attention_heads": 2}]
)
@pytest.mark.parametrize("tied", [False, True])
def test_counts_from_sizes_equal_the_meta_device_count(model_type, export, tied):
    """The plan counts without building a model; every architecture of the table, pruned or not, tied or not,
    gives what transformers' module holds (model.params.count_on_meta)."""
    cfg = tiny_config(model_type, tie_word_embeddings=tied)
    shape = {"model_type": model_type, **{k: getattr(cfg, k) for k in SHAPE_KEYS}}
    sizes = model_sizes(shape, export)
    meta = count_on_meta(pruned_hf_config(cfg, export) if export else cfg)
    assert (sizes.total, sizes.without_lm_head) == (meta["total"], meta["without_lm_head"])
    one = count_on_meta(pruned_hf_config(cfg, {**export, "num_layers": 1}))["total"]
    assert sizes.layer == (meta["total"] - one) // (sizes.layers - 1)


def test_bielik_counts_are_the_reports():
    """11.04B without the output layer for Bielik-11B-v3 and 7.35B for EXP_010 (the reports' convention)."""
    shape = to_config(compose(["model=bielik_11b_v3"])).model.shape.known()
    assert round(model_sizes(shape).without_lm_head / 1e9, 2) == 11.04
    assert round(model_sizes(shape, {"num_layers": 40, "ffn_hidden_size": 11264}).without_lm_head / 1e9, 2) == 7.35


# ----------------------------------------------------------------------------------- hand calculations
def test_tiny_distill_plan_matches_the_hand_calculation():
    plan, conf = tiny_plan()
    d = plan.stage("distill")
    assert plan.teacher.total == plan.student.total == TOTAL and plan.teacher.layer == LAYER
    assert (d.processes, d.nodes, d.gpus_per_node) == (4, 1, 4)
    tokens = 2 * 32  # micro-batch × seq_len
    per_token_layer = 26 * 64 + 4 * 64 + 4 * 32 + 8 * 128 + 4 * 4  # bf16 autocast: h, a, k, f, heads
    assert d.memory == {
        "student weights (fp32)": 4 * TOTAL,
        "gradients (fp32)": 4 * TOTAL,
        "AdamW states (2 × fp32)": 8 * TOTAL,
        "DDP gradient buckets (fp32)": 4 * TOTAL,
        "teacher weights (bf16)": 2 * TOTAL,
        "activations (every layer, for backward)": 3 * tokens * per_token_layer,
        "activations (final norm, output layer input)": tokens * 12 * 64,
        "bf16 weight copies (autocast)": 2 * (2 * LAYER + 256 * 64),
        "logits [micro_batch, seq, vocab] (3 × bf16)": 3 * 2 * tokens * 256,
        "teacher forward (one layer, no grad)": tokens * 2 * (2 * 64 + 64 + 2 * 32 + 3 * 128),
        "KL slices (fp32)": 8 * 4 * tokens * 256,
        "runtime": GPU_RUNTIME,
    }
    assert d.memory_total == sum(d.memory.values())
    # bench/flops.py by hand: 2·L·(projections + MLP) + 2·L·2·s·a + 2·h·V per token; teacher = student here
    forward = 2 * 2 * (64 * 64 + 2 * 64 * 32 + 64 * 64 + 3 * 64 * 128) + 2 * 2 * 2 * 32 * 64 + 2 * 64 * 256
    trained = 10 * 8 * 32
    assert d.flops == pytest.approx(trained * (forward + 3 * forward))
    assert d.hours == pytest.approx(d.flops / (4 * 989e12 * 0.40) / 3600)
    assert d.disk == {
        "checkpoint (fp32 weights + AdamW; 2 while one is written)": 2 * 12 * TOTAL,
        "student export (bf16)": 2 * TOTAL,
    }
    faster, _ = tiny_plan(["plan.mfu=0.5"])
    assert faster.stage("distill").hours == pytest.approx(d.hours * 0.40 / 0.5)


def test_fsdp2_shards_the_states_and_gathers_layers():
    plan, _ = tiny_plan(["distill.strategy=fsdp2"])
    d = plan.stage("distill")
    root = TOTAL - 2 * LAYER
    assert d.memory["student weights (fp32)"] == 4 * TOTAL // 4
    assert d.memory["AdamW states (2 × fp32)"] == 8 * TOTAL // 4
    assert d.memory["teacher weights (bf16)"] == 2 * TOTAL // 4
    assert d.memory["FSDP2 gathered (root, 2 layers, 1 layer's gradient)"] == 4 * (root + 3 * LAYER) + 2 * (
        root + 2 * LAYER
    )
    assert "DDP gradient buckets (fp32)" not in d.memory


def test_activation_checkpointing_lowers_the_activation_term():
    plain, _ = tiny_plan()
    ckpt, _ = tiny_plan(["distill.activation_checkpointing=true"])
    a, b = plain.stage("distill"), ckpt.stage("distill")
    tokens = 2 * 32
    per_token_layer = 26 * 64 + 4 * 64 + 4 * 32 + 8 * 128 + 4 * 4
    assert b.memory["activations (layer inputs, checkpointed)"] == 2 * tokens * 4 * 64
    assert b.memory["activations (one layer recomputed + its backward)"] == 2 * tokens * per_token_layer
    assert b.memory["bf16 weight copies (autocast)"] == 2 * (LAYER + 256 * 64)

    def acts(sp):
        return sum(v for k, v in sp.memory.items() if k.startswith("activations") or k.startswith("bf16 weight"))

    assert acts(b) < acts(a) and b.memory_total < a.memory_total
    assert b.flops == pytest.approx(a.flops * 5 / 4)  # the recomputed student forward: 1 + 3 + 1 forwards


@pytest.mark.parametrize("dtype", ["bfloat16", "float32"])
def test_activation_formula_is_what_transformers_saves_for_backward(dtype):
    """Bytes a Llama decoder layer saves for backward per token, counted with saved_tensors_hooks (each storage
    once, parameters excluded) as layer 2 minus layer 1 of the real model: the formula to within 1%."""
    shape = dict(TINY, hidden_size=128, intermediate_size=352, num_attention_heads=8, num_key_value_heads=2)
    batch, seq = 2, 64

    def saved_bytes(layers: int) -> int:
        torch.manual_seed(0)
        cfg = AutoConfig.for_model(**dict(shape, num_hidden_layers=layers))
        model = AutoModelForCausalLM.from_config(cfg).float().train()
        params = {p.untyped_storage().data_ptr() for p in model.parameters()}
        seen = {}

        def pack(t):
            storage = t.untyped_storage()
            if storage.data_ptr() not in params:
                seen[storage.data_ptr()] = storage.nbytes()
            return t

        ids = torch.randint(0, shape["vocab_size"], (batch, seq))
        cast = (
            torch.autocast("cpu", dtype=torch.bfloat16) if dtype == "bfloat16" else torch.autocast("cpu", enabled=False)
        )
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), cast:
            model(input_ids=ids, use_cache=False)
        return sum(seen.values())

    measured = saved_bytes(2) - saved_bytes(1)
    hf = dict(shape, head_dim=16)
    h, f, a, k = 128, 352, 8 * 16, 2 * 16
    layer_params = 2 * h * a + 2 * h * k + 3 * h * f + 2 * h
    copies = 2 * (layer_params - 2 * h) if dtype == "bfloat16" else 0  # autocast's bf16 casts of the matrices
    expected = batch * seq * layer_activation_bytes(hf, 2 if dtype == "bfloat16" else 4) + copies
    assert measured == pytest.approx(expected, rel=0.01)


def test_cpu_plan_is_host_memory_with_the_measured_runtime():
    conf = to_config(compose(["recipe.stages=[distill]", "data.seq_len=32", "distill.micro_batch_size=2"]))
    plan = plan_run(conf, dict(TINY))
    d = plan.stage("distill")
    assert plan.device is None and not d.on_gpu and d.hours is None
    assert d.memory["runtime"] == HOST_RUNTIME + MODELOPT_RUNTIME
    assert "DDP gradient buckets (fp32)" not in d.memory and (d.processes, d.gpus_per_node) == (1, 0)
    assert "memory is the peak resident memory of one stage process" in format_plan(plan)


# ------------------------------------------------------------------------------------------- Bielik
def test_bielik_reference_plan_fits_on_16_h200_with_fsdp2():
    plan, conf = launcher_plan(BIELIK)
    check_plan(plan, conf)  # does not raise
    d = plan.stage("distill")
    assert conf.distill.strategy == "fsdp2" and conf.distill.activation_checkpointing  # conf/cluster/dgx_h200.yaml
    assert plan.device == DEVICES["h200"] and (d.processes, d.nodes, d.gpus_per_node) == (16, 2, 8)
    assert 11.1e9 < plan.teacher.total < 11.2e9 and 7.4e9 < plan.student.total < 7.5e9
    assert d.memory_total < DEVICES["h200"].memory
    assert d.hours > 0 and plan.stage("importance").gpus_per_node == 1
    assert "2×8" in format_plan(plan)


def test_bielik_with_ddp_does_not_fit_an_h200_either():
    plan, conf = launcher_plan(BIELIK + ["distill.strategy=ddp"])
    with pytest.raises(
        ConfigError,
        match=r"^distill needs .* per GPU, more than one H200 SXM 141 GB holds.*"
        r"it fits with distill.strategy=fsdp2",
    ):
        check_plan(plan, conf)


def test_bielik_ddp_on_h100_is_refused_in_one_line_before_submission(tmp_path):
    proc = run_launch(BIELIK_DDP_H100 + [f"runs_root={tmp_path}"])
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert err.startswith("compactlm: configuration error: distill needs ")
    for key in ("H100 SXM 80 GB", "distill.strategy=ddp", "it fits with", "distill.strategy=fsdp2"):
        assert key in err, err
    assert not any(tmp_path.iterdir())  # nothing written, nothing submitted


def test_bielik_dry_run_prints_the_plan(tmp_path):
    proc = run_launch(BIELIK + ["dryrun=true"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    plan = proc.stdout.split("# plan\n", 1)[1].split("# executor", 1)[0]
    rows = {line.split()[0]: line for line in plan.splitlines() if line[:1].isalpha() and "  " in line}
    assert rows["distill"].split()[1:3] == ["16", "2×8"], plan
    assert "H200 SXM 141 GB" in plan and "MFU 0.40" in plan and "activation checkpointing" in plan


def test_search_candidates_are_planned_one_by_one():
    plan, conf = launcher_plan(
        [
            "recipe=search_distill",
            "model=bielik_11b_v3",
            "search.candidates=[exp_001,exp_010]",
            "cluster=slurm",
            "cluster.slurm.account=acct",
            "cluster.gpus_per_node=8",
            "cluster.nodes=2",
            "cluster.gpu=h200",
            "data.seq_len=4096",
            "distill.strategy=fsdp2",
            "distill.global_batch_size=64",
        ]
    )
    tasks = [sp.stage for sp in plan.stages]
    assert "candidate-exp_001" in tasks and "candidate-exp_010" in tasks
    c1, c10 = plan.stage("candidate-exp_001"), plan.stage("candidate-exp_010")
    assert (c1.nodes, c1.gpus_per_node, c1.processes) == (1, 8, 8)
    assert c1.memory["student weights (fp32)"] != c10.memory["student weights (fp32)"]
    assert "teacher weights (bf16)" not in c1.memory  # candidates read the shared teacher cache
    rows = ranking_rows(conf.distill, conf.search.distill_tokens, 4096)  # what the teacher_cache stage caches
    assert plan.stage("teacher_cache").disk["teacher top-k cache"] == (rows + conf.data.validation_sequences) * 4096 * (
        conf.distill.topk * 6 + 4
    )
    exp_001 = next(c for c in conf.search.resolved if c.name == "exp_001").export_config.known()
    assert "teacher top-k cache" not in c1.disk
    assert c1.disk["pruned checkpoint (bf16)"] == 2 * model_sizes(plan.shape, exp_001).total
    assert "largest search candidate" in plan.student_label


# -------------------------------------------------------------------------------------- teacher cache
def test_teacher_cache_larger_than_the_free_space_is_refused(tmp_path, monkeypatch):
    overrides = [
        "recipe.stages=[distill]",
        f"runs_root={tmp_path / 'runs'}",
        "data.seq_len=32",
        "distill.teacher_cache=true",
        "distill.topk=16",
        "distill.max_steps=10",
    ]
    conf = to_config(compose(overrides))
    plan = plan_run(conf, dict(TINY))
    size = plan.stage("distill").disk["teacher top-k cache"]
    assert size == (10 * conf.distill.global_batch_size + conf.data.validation_sequences) * 32 * (16 * 6 + 4)
    seen = []

    def fake_usage(path):
        seen.append(path)
        return DiskUsage(10**12, 10**12 - size + 1, size - 1)

    monkeypatch.setattr(shutil, "disk_usage", fake_usage)
    with pytest.raises(ConfigError, match=r"the teacher cache of distill needs .* free: lower distill.topk=16"):
        check_plan(plan, conf)
    assert seen == [tmp_path]  # the nearest folder that exists above <runs_root>/<run>/distill/teacher_cache
    monkeypatch.setattr(shutil, "disk_usage", lambda path: DiskUsage(10**12, 10**12 - size, size))
    check_plan(plan, conf)


# ------------------------------------------------------------------------------- non-training host memory
def test_checkpoint_layout_reads_the_dtype_and_the_largest_file(tmp_path):
    (tmp_path / "config.json").write_text('{"model_type": "llama", "dtype": "bfloat16"}')
    (tmp_path / "model-00001-of-00002.safetensors").write_bytes(b"\0" * 100)
    (tmp_path / "model-00002-of-00002.safetensors").write_bytes(b"\0" * 300)
    local = to_config(compose(["model=local", f"model.path={tmp_path}", "recipe.stages=[prune]", "prune.model=null"]))
    assert checkpoint_layout(local) == (2, 300)
    (tmp_path / "model-00002-of-00002.safetensors").unlink()
    assert checkpoint_layout(local) == (2, None)  # one file: the whole checkpoint
    assert checkpoint_layout(to_config(compose([]))) == (4, None)  # the demo's GGUF, dequantized to float32


def test_streamed_prune_and_block_upcast_are_what_the_plan_holds(monkeypatch):
    monkeypatch.setattr(plan_module, "checkpoint_layout", lambda conf: (2, 1000))
    conf = to_config(
        compose(
            [
                "recipe.stages=[importance,prune]",
                "engine.dtype=float32",
                "data.seq_len=32",
                "prune.model=null",
                "prune.export_config.num_layers=1",
            ]
        )
    )
    plan = plan_run(conf, dict(TINY))
    imp, prune = plan.stage("importance"), plan.stage("prune")
    # a bf16 checkpoint on a float32 machine: 2 bytes a weight, plus the largest block (here the embedding) in fp32
    assert imp.memory["teacher weights (bf16)"] == 2 * TOTAL
    assert imp.memory["one block upcast (fp32)"] == 4 * max(LAYER, 256 * 64)
    # the teacher is never built: the largest source file (mapped) and one output shard being serialized
    student = plan.student.total  # the preset's sizes on the tiny shape
    assert prune.memory == {
        "largest source safetensors file (memory-mapped)": 1000,
        "output shard + its serialization": int(1.5 * 2 * student),
        "runtime": HOST_RUNTIME,
    }
    assert prune.disk == {"pruned checkpoint (bf16)": 2 * student}


@pytest.mark.parametrize("stages, held", [("quantize", 2), ("prune,quantize", 2), ("prune,distill,quantize", 4)])
def test_quantize_holds_a_bf16_source_in_bf16_and_a_trained_one_in_the_compute_dtype(monkeypatch, stages, held):
    """quantize/stage.py loads the teacher or a pruned checkpoint in its stored bf16 on a float32 machine and
    upcasts one block at a time; a model distilled in this run is saved (and held) in the compute dtype."""
    monkeypatch.setattr(plan_module, "checkpoint_layout", lambda conf: (2, 1000))
    extra = ["prune.model=null", "prune.export_config.num_layers=1"] if "prune" in stages else []
    conf = to_config(compose([f"recipe.stages=[{stages}]", "engine.dtype=float32", "data.seq_len=32", *extra]))
    plan = plan_run(conf, dict(TINY))
    q, source = plan.stage("quantize"), plan.student or plan.teacher
    name = {2: "bf16", 4: "fp32"}[held]
    assert q.memory[f"model ({name})"] == held * source.total
    assert q.memory[f"reference copy ({name})"] == held * source.total  # quantize.evaluate is on by default
    assert ("one block upcast (fp32)" in q.memory) == (held == 2)
