"""End-to-end distillation on tiny random models: outputs, loss reduction, teacher cache, resume, torchrun.

Every run here is real: the ModelOpt loss, the optimizer, checkpoints, the CLI under `python -m` and
`torchrun`. Bitwise checks run with engine.threads=1 in every process, so CPU kernels split work alike.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_tiny_model
from safetensors.torch import load_file

from compactlm.config import ConfigError, EngineConfig
from compactlm.distill.schema import DistillConfig
from compactlm.distill.train import Preempted, distill, lr_at, total_steps

SEQ = 32
# float32: the tests below compare with hand computations to 1e-5; bf16 autocast has its own tests
ENGINE = EngineConfig(name="test", device="cpu", threads=1, dtype="float32")
BF16 = dataclasses.replace(ENGINE, dtype="bfloat16")
# 30 steps of 4 sequences; a checkpoint every 5 steps leaves a mid-run checkpoint to kill after.
BASE = DistillConfig(
    max_steps=30,
    micro_batch_size=2,
    global_batch_size=4,
    eval_every=10,
    save_every=5,
    warmup_steps=3,
    lr=2e-3,
    min_lr=2e-4,
)
SHORT = dataclasses.replace(BASE, max_steps=6, eval_every=3, save_every=3)


@pytest.fixture(scope="module", autouse=True)
def _restore_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def pair(tmp_path_factory, tiny_tokenizer):
    """(teacher, student, data) folders: a 4-layer teacher, a 2-layer narrower student, pydoc text packed by 32."""
    from pydoc_data.topics import topics

    root = tmp_path_factory.mktemp("distill")
    teacher = make_tiny_model("llama", root / "teacher", tiny_tokenizer, seed=0)
    student = make_tiny_model(
        "llama", root / "student", tiny_tokenizer, seed=1, num_hidden_layers=2, intermediate_size=64
    )
    ids = [t for k in sorted(topics)[:40] for t in tiny_tokenizer(topics[k])["input_ids"]]
    seqs = np.asarray(ids[: (len(ids) // SEQ) * SEQ], dtype=np.int32).reshape(-1, SEQ)
    assert len(seqs) >= 56
    data = root / "data"
    data.mkdir()
    np.save(data / "validation.npy", seqs[:8])
    np.save(data / "train.npy", seqs[8:56])
    return teacher, student, data


def run(pair, out, cfg, engine=ENGINE, **kw):
    teacher, student, data = pair
    return distill(teacher, student, data, out, cfg, engine, seed=7, progress=False, **kw)


def history(out) -> dict:
    return json.loads((Path(out) / "history.json").read_text())


WORKER = Path(__file__).with_name("distill_worker.py")


def worker_args(pair, out, cfg: DistillConfig, cache_dtype: str = "float16", engine=ENGINE) -> list[str]:
    """`distill_worker.py` and its one argument: distill() with the same settings as `run` (seed 7, 1 thread)."""
    teacher, student, data = pair
    spec = {
        "teacher": str(teacher),
        "student": str(student),
        "data": str(data),
        "out": str(out),
        "seed": 7,
        "distill": dataclasses.asdict(cfg),
        "engine": dataclasses.asdict(engine),
        "cache_dtype": cache_dtype,
    }
    return [str(WORKER), json.dumps(spec)]


def assert_bitwise_equal_runs(a: Path, b: Path) -> None:
    """Same exported student and same final checkpoint (weights, AdamW moments, scheduler), tensor by tensor."""
    sa, sb = load_file(a / "student" / "model.safetensors"), load_file(b / "student" / "model.safetensors")
    assert sa.keys() == sb.keys()
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k
    ca = torch.load(a / "checkpoint" / "state.pt", weights_only=True)
    cb = torch.load(b / "checkpoint" / "state.pt", weights_only=True)
    for k in ca["model"]:
        assert torch.equal(ca["model"][k], cb["model"][k]), k
    for i, st in ca["optimizer"]["state"].items():
        for name, t in st.items():
            assert torch.equal(t, cb["optimizer"]["state"][i][name]), (i, name)
    assert ca["scheduler"] == cb["scheduler"]
    assert [h["loss"] for h in history(a)["train"]] == [h["loss"] for h in history(b)["train"]]


@pytest.fixture(scope="module")
def reference(pair, tmp_path_factory):
    """One uninterrupted run of BASE: (out_dir, metrics)."""
    out = tmp_path_factory.mktemp("reference") / "out"
    return out, run(pair, out, BASE)


# ------------------------------------------------------------------------------------------ schedule
def test_schedule_and_batch_arithmetic():
    cfg = DistillConfig(lr=1e-3, min_lr=1e-4, warmup_steps=4, max_steps=20)
    assert lr_at(0, cfg, 20) == pytest.approx(2.5e-4) and lr_at(3, cfg, 20) == pytest.approx(1e-3)
    assert lr_at(19, cfg, 20) == pytest.approx(1e-4)
    lrs = [lr_at(s, cfg, 20) for s in range(3, 20)]
    assert all(x >= y for x, y in zip(lrs, lrs[1:]))
    assert total_steps(DistillConfig(max_tokens=1000, global_batch_size=4), seq_len=32) == 8
    assert DistillConfig(micro_batch_size=2, global_batch_size=8).accumulation(world=2) == 2
    with pytest.raises(ConfigError, match="distill.global_batch_size=8 is not a multiple"):
        DistillConfig(micro_batch_size=4, global_batch_size=8).accumulation(world=4)


# ------------------------------------------------------------------------------------------- outputs
def test_outputs_and_metrics(pair, reference):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out, m = reference
    assert m["steps"] == 30 and m["tokens"] == 30 * 4 * SEQ and m["resumed_from_step"] == 0
    for key in ("train_loss", "val_ppl", "val_kl", "tokens_per_s", "wall_s"):
        assert m[key] > 0, key
    assert json.loads((out / "metrics.json").read_text())["val_kl"] == m["val_kl"]
    h = history(out)
    assert [e["step"] for e in h["eval"]] == [0, 10, 20, 30]
    assert h["eval"][-1]["val_kl"] < h["eval"][0]["val_kl"]  # it learns
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert list((out / "tensorboard").glob("events.out.tfevents.*"))
    student = AutoModelForCausalLM.from_pretrained(out / "student")
    assert student.config.num_hidden_layers == 2 and student.config.intermediate_size == 64
    tokenizer = AutoTokenizer.from_pretrained(out / "student")
    assert tokenizer.get_vocab() == AutoTokenizer.from_pretrained(pair[1]).get_vocab()
    assert not list(out.glob(".*tmp*"))


def test_loss_is_the_mean_kl_per_token_whatever_the_accumulation(pair, tmp_path):
    """Step 1's loss equals KL(teacher ‖ student) averaged over all tokens of the global batch, computed by hand,
    and the trajectory does not depend on how the batch is cut into micro-batches."""
    from transformers import AutoModelForCausalLM

    from compactlm.distill.sampler import SequenceOrder

    cfg = dataclasses.replace(SHORT, max_steps=3, temperature=2.0)
    whole = run(pair, tmp_path / "m4", dataclasses.replace(cfg, micro_batch_size=4))  # 1 micro-batch of 4
    accumulated = run(pair, tmp_path / "m1", dataclasses.replace(cfg, micro_batch_size=1))  # 4 of 1
    a, b = history(tmp_path / "m4")["train"], history(tmp_path / "m1")["train"]
    np.testing.assert_allclose([h["loss"] for h in a], [h["loss"] for h in b], rtol=1e-5)
    assert whole["val_kl"] == pytest.approx(accumulated["val_kl"], rel=1e-5)

    teacher, student, data = pair
    rows = SequenceOrder(48, seed=7).global_batch(0, 4)
    ids = torch.from_numpy(np.load(data / "train.npy")[rows]).long()
    with torch.no_grad():
        zt = AutoModelForCausalLM.from_pretrained(teacher)(ids).logits / 2.0
        zs = AutoModelForCausalLM.from_pretrained(student)(ids).logits / 2.0
    p = zt.softmax(-1)
    kl = (p * (p.log() - zs.log_softmax(-1))).sum(-1).mean() * 4.0  # T² = 4
    assert a[0]["loss"] == pytest.approx(kl.item(), rel=1e-5)


def test_cross_entropy_term_is_added_with_its_weight(pair, tmp_path):
    run(pair, tmp_path / "ce", dataclasses.replace(SHORT, max_steps=2, lm_loss_weight=0.5))
    for h in history(tmp_path / "ce")["train"]:
        assert h["ce"] > 0 and h["loss"] == pytest.approx(h["kl"] + 0.5 * h["ce"])


# -------------------------------------------------------------------------------------- teacher cache
def test_teacher_cache_with_whole_vocab_reproduces_the_live_teacher(pair, tmp_path):
    from conftest import TINY_VOCAB

    live = run(pair, tmp_path / "live", SHORT)
    cfg = dataclasses.replace(SHORT, teacher_cache=True, topk=TINY_VOCAB)
    cached = run(pair, tmp_path / "cached", cfg, cache_dtype="float32")
    a, b = history(tmp_path / "live"), history(tmp_path / "cached")
    np.testing.assert_allclose([h["loss"] for h in b["train"]], [h["loss"] for h in a["train"]], rtol=1e-5)
    np.testing.assert_allclose([e["val_kl"] for e in b["eval"]], [e["val_kl"] for e in a["eval"]], rtol=1e-5)
    assert cached["val_ppl"] == pytest.approx(live["val_ppl"], rel=1e-5)
    assert cached["val_kl_source"] == f"teacher_cache_top{TINY_VOCAB}"

    train_cache = tmp_path / "cached" / "teacher_cache" / "train"
    values = np.load(train_cache / "values.npy", mmap_mode="r")
    assert values.shape == (48, SEQ, TINY_VOCAB) and values.dtype == np.float32
    assert np.load(train_cache / "indices.npy", mmap_mode="r").dtype == np.int32
    # A second run with other steps reuses the cache instead of running the teacher again.
    stamp = (train_cache / "meta.json").stat().st_mtime_ns
    run(
        pair,
        tmp_path / "cached2",
        dataclasses.replace(cfg, max_steps=2),
        cache_dtype="float32",
        cache_dir=tmp_path / "cached" / "teacher_cache",
    )
    assert (train_cache / "meta.json").stat().st_mtime_ns == stamp


def test_teacher_cache_top_k_in_float16(pair, tmp_path):
    m = run(pair, tmp_path / "top16", dataclasses.replace(SHORT, max_steps=2, teacher_cache=True, topk=16))
    cache = tmp_path / "top16" / "teacher_cache"
    assert np.load(cache / "train" / "values.npy", mmap_mode="r").shape == (48, SEQ, 16)
    assert np.load(cache / "train" / "values.npy", mmap_mode="r").dtype == np.float16
    assert json.loads((cache / "validation" / "meta.json").read_text())["temperature"] == 1.0
    assert m["val_kl_source"] == "teacher_cache_top16" and 0 < m["val_kl"] < 10 and m["train_loss"] > 0


# ------------------------------------------------------------------------------------------ resume
def test_rerun_of_a_finished_run_trains_nothing(pair, reference, tmp_path):
    import shutil

    out, m = reference
    copy = tmp_path / "again"
    shutil.copytree(out, copy)
    again = run(pair, copy, BASE)
    assert again["resumed_from_step"] == 30 and again["val_kl"] == m["val_kl"]
    assert_bitwise_equal_runs(out, copy)


def test_resume_refuses_changed_settings(pair, reference):
    out, _ = reference
    with pytest.raises(ConfigError, match=r"distill.lr: 0.002 -> 0.001"):
        run(pair, out, dataclasses.replace(BASE, lr=1e-3))


def test_mismatched_vocabularies_and_topk_are_refused(pair, tmp_path, tiny_tokenizer):
    teacher, _, data = pair
    other = make_tiny_model("llama", tmp_path / "other", tiny_tokenizer, vocab_size=400)
    with pytest.raises(ConfigError, match="vocab_size=400 differs from the teacher's 384"):
        distill(teacher, other, data, tmp_path / "o1", SHORT, ENGINE, seed=7, progress=False)
    with pytest.raises(ConfigError, match="distill.topk=1000 exceeds the vocabulary size 384"):
        run(pair, tmp_path / "o2", dataclasses.replace(SHORT, teacher_cache=True, topk=1000))


def test_sigterm_writes_checkpoint_exits_143_and_resumes_bitwise(pair, reference, tmp_path):
    out = tmp_path / "preempted"
    got = []
    previous = signal.signal(signal.SIGTERM, lambda *a: got.append("late"))  # never let a late signal kill pytest

    def send_when_checkpointed():
        deadline = time.time() + 120
        while not (out / "checkpoint").is_dir() and time.time() < deadline:
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGTERM)

    sender = threading.Thread(target=send_when_checkpointed, daemon=True)
    sender.start()
    try:
        with pytest.raises(Preempted) as exc:
            run(pair, out, BASE)
    finally:
        sender.join()
        signal.signal(signal.SIGTERM, previous)
    assert exc.value.code == 143 and not got
    stopped = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert stopped == exc.value.step and 5 <= stopped < 30
    assert not (out / "student").exists()
    resumed = run(pair, out, BASE)
    assert resumed["resumed_from_step"] == stopped
    assert_bitwise_equal_runs(reference[0], out)


@pytest.mark.parametrize("engine", [ENGINE, BF16], ids=["float32", "bf16-autocast"])
def test_sigkill_mid_run_then_rerun_is_bitwise_identical(pair, reference, tmp_path, engine):
    """kill -9 the distilling process right after its first checkpoint appears; re-running resumes to the very same
    weights — in float32, and under bf16 autocast (float32 master weights) against a bf16 reference."""
    if engine is BF16:
        reference = (tmp_path / "reference_bf16", run(pair, tmp_path / "reference_bf16", BASE, engine=BF16))
        assert reference[1]["engine"]["compute"] == "bfloat16" and reference[1]["engine"]["autocast"]
    out = tmp_path / "killed"
    log = tmp_path / "killed.log"
    with log.open("w") as f:
        proc = subprocess.Popen(
            [sys.executable, *worker_args(pair, out, BASE, engine=engine)], stdout=f, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.time() + 240
        while not (out / "checkpoint").is_dir():
            assert proc.poll() is None, log.read_text()[-3000:]
            assert time.time() < deadline, "no checkpoint within 240 s"
            time.sleep(0.005)
        proc.kill()
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"
    stopped = json.loads((out / "checkpoint" / "trainer_state.json").read_text())["step"]
    assert 5 <= stopped < 30 and not (out / "student").exists()
    other = BF16 if engine is ENGINE else ENGINE
    with pytest.raises(ConfigError, match=f"engine.dtype={engine.dtype} to resume"):
        run(pair, out, BASE, engine=other)
    resumed = run(pair, out, BASE, engine=engine)
    assert resumed["resumed_from_step"] == stopped
    assert_bitwise_equal_runs(reference[0], out)


# ------------------------------------------------------------------------------------------ torchrun
def torchrun(pair, out, cfg, nproc=2):
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc-per-node={nproc}",
        *worker_args(pair, out, cfg, cache_dtype="float32"),
    ]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-5000:]
    return json.loads((out / "metrics.json").read_text())


# Same global batch of 4 sequences on 1 process (2 micro-batches of 2) and on 2 processes (1 micro-batch
# of 2 each): the results differ only by float summation order.
RTOL = 1e-4


def _compare_to_single_process(pair, tmp_path, cfg, out):
    m = json.loads((out / "metrics.json").read_text())
    single = run(pair, tmp_path / "single", cfg, cache_dtype="float32")
    a, b = history(tmp_path / "single"), history(out)
    np.testing.assert_allclose([h["loss"] for h in b["train"]], [h["loss"] for h in a["train"]], rtol=RTOL)
    np.testing.assert_allclose([e["val_kl"] for e in b["eval"]], [e["val_kl"] for e in a["eval"]], rtol=RTOL)
    np.testing.assert_allclose([e["val_ppl"] for e in b["eval"]], [e["val_ppl"] for e in a["eval"]], rtol=RTOL)
    assert m["world_size"] == 2 and single["world_size"] == 1
    sa = load_file(tmp_path / "single" / "student" / "model.safetensors")
    sb = load_file(out / "student" / "model.safetensors")
    for k in sa:
        torch.testing.assert_close(sb[k], sa[k], rtol=RTOL, atol=1e-5)


def test_torchrun_two_processes_ddp_matches_one_process(pair, tmp_path):
    out = tmp_path / "ddp"
    assert torchrun(pair, out, SHORT)["strategy"] == "ddp"
    _compare_to_single_process(pair, tmp_path, SHORT, out)


@pytest.mark.slow
@pytest.mark.parametrize(
    "strategy,teacher_cache,checkpointing",
    [("fsdp2", False, False), ("ddp", True, False), ("fsdp2", True, False), ("fsdp2", False, True)],
)
def test_torchrun_two_processes_other_strategies_match_one_process(
    pair, tmp_path, strategy, teacher_cache, checkpointing
):
    cfg = dataclasses.replace(
        SHORT, strategy=strategy, teacher_cache=teacher_cache, topk=16, activation_checkpointing=checkpointing
    )
    out = tmp_path / strategy
    assert torchrun(pair, out, cfg)["strategy"] == strategy
    _compare_to_single_process(pair, tmp_path, cfg, out)


# ------------------------------------------------------------------------------ activation checkpointing
@pytest.mark.parametrize("teacher_cache", [False, True])
def test_activation_checkpointing_trains_to_the_same_losses(pair, tmp_path, teacher_cache, monkeypatch):
    """Recomputing each student layer in the backward pass changes memory, not the mathematics: the same losses
    and gradient norms step after step (float32: only the order of a few float sums may differ); and the
    student's layers do go through torch.utils.checkpoint (transformers' gradient_checkpointing_enable)."""
    import transformers.modeling_utils as mu

    calls = []
    original = mu.checkpoint

    def counting(fn, *args, **kwargs):
        calls.append(kwargs.get("use_reentrant"))
        return original(fn, *args, **kwargs)

    monkeypatch.setattr(mu, "checkpoint", counting)
    cfg = dataclasses.replace(SHORT, max_steps=3, teacher_cache=teacher_cache, topk=16)
    plain = run(pair, tmp_path / "plain", cfg)
    assert not calls
    ckpt = run(pair, tmp_path / "ckpt", dataclasses.replace(cfg, activation_checkpointing=True))
    # 3 steps x 2 micro-batches x 2 student layers at least; validation runs in eval mode, without it
    assert len(calls) >= 3 * 2 * 2 and set(calls) == {False}
    a, b = history(tmp_path / "plain")["train"], history(tmp_path / "ckpt")["train"]
    assert len(a) == len(b) == 3
    np.testing.assert_allclose([h["loss"] for h in b], [h["loss"] for h in a], rtol=1e-5)
    np.testing.assert_allclose([h["grad_norm"] for h in b], [h["grad_norm"] for h in a], rtol=1e-4)
    assert ckpt["val_kl"] == pytest.approx(plain["val_kl"], rel=1e-4)
