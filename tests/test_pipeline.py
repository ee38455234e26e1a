"""Stages in-process on a tiny model: manifests, skipping, forcing, and clean restarts."""

from __future__ import annotations

import json
import os
import stat

import pytest
from conftest import POLISH, needs_polish
from helpers import compose

from compactlm.config import ConfigError
from compactlm.evaluate.schema import EvaluateResult
from compactlm.launch.launcher import write_run_dir
from compactlm.launch.validate import to_config
from compactlm.manifest import MANIFEST, LinkRefused, read_manifest
from compactlm.pipeline import CONFIG_FILE, Task, _clean, run_stage, stage_folder
from compactlm.pipeline import main as pipeline_main
from compactlm.results import read_result

STAGES = ["model", "data", "evaluate"]


def _conf(tmp_path, model_dir, *extra):
    conf = to_config(
        compose(
            [
                "recipe=eval",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=8",
                "evaluate.generate_tokens=4",
                f"runs_root={tmp_path}",
                *extra,
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    return conf


def _run_all(conf):
    run_dir = write_run_dir(conf)
    for stage in STAGES:
        assert run_stage(stage, run_dir / CONFIG_FILE) == 0
    return run_dir


def test_stages_write_manifests_last_with_hashes_metrics_and_versions(tmp_path, tiny_llama_dir, capsys):
    run_dir = _run_all(_conf(tmp_path, tiny_llama_dir))
    for stage in STAGES:
        m = read_manifest(run_dir / stage)
        assert m["stage"] == stage and len(m["config_hash"]) == 64
        assert set(m["input_hashes"]) == set(STAGES[: STAGES.index(stage)])
        assert set(m["output_digests"]) == set(m["outputs"])
        assert "torch" in m["versions"] and m["wall_time_s"] >= 0
        assert m["peak_rss_bytes"] > 0 and m["peak_rss_children_bytes"] >= 0
    assert sorted(read_manifest(run_dir / "data")["outputs"]) == ["calibration", "heldout", "train", "validation"]
    evaluation = read_result(run_dir, "evaluate")
    assert isinstance(evaluation, EvaluateResult)
    ev = evaluation.models["teacher"]
    assert ev.perplexity > 1 and ev.tokens == 4 * 31 and ev.output_tokens_per_s > 0
    # lm-eval, offline, on sentences of the run's own held-out documents (never trained or calibrated on)
    task = ev.tasks["heldout_continuation"]
    assert task["num_examples"] == 100 and 0 <= task["acc"] <= 1
    assert (run_dir / "evaluate" / "lm_eval_samples" / "teacher" / "heldout_continuation.jsonl").is_file()
    heldout = (run_dir / "data" / "heldout" / "documents.txt").read_text()
    assert read_result(run_dir, "data").heldout_documents >= 1 and len(heldout) > 1000
    launch = json.loads((run_dir / "launch.json").read_text())
    assert launch["git_sha"] and "compactlm" in launch["versions"]


def test_rerun_skips_up_to_date_stages_and_force_reruns(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = _run_all(conf)
    before = {s: (run_dir / s / MANIFEST).stat().st_mtime_ns for s in STAGES}
    capsys.readouterr()
    _run_all(conf)
    out = capsys.readouterr().out
    assert out.count("up to date") == 3
    assert before == {s: (run_dir / s / MANIFEST).stat().st_mtime_ns for s in STAGES}

    # A changed data setting re-runs data and, because its outputs changed, evaluate; not the model stage.
    changed = _conf(tmp_path, tiny_llama_dir, "data.seq_len=16")
    _run_all(changed)
    after = {s: (run_dir / s / MANIFEST).stat().st_mtime_ns for s in STAGES}
    assert (
        after["model"] == before["model"]
        and after["data"] != before["data"]
        and after["evaluate"] != before["evaluate"]
    )

    capsys.readouterr()
    _run_all(_conf(tmp_path, tiny_llama_dir, "data.seq_len=16", "force_stages=[evaluate]"))
    out = capsys.readouterr().out
    assert "[model] up to date" in out and "[data] up to date" in out and "[evaluate] running" in out


def test_a_crashed_stage_leaves_no_manifest_and_restarts_clean(tmp_path, tiny_llama_dir, monkeypatch):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = write_run_dir(conf)
    assert run_stage("model", run_dir / CONFIG_FILE) == 0
    import compactlm.data.stage as data_mod

    def boom(*a, **k):
        (run_dir / "data" / "train.npy").write_bytes(b"half-written")
        raise KeyboardInterrupt("killed")

    monkeypatch.setattr(data_mod, "write_splits", boom)
    with pytest.raises(KeyboardInterrupt):
        run_stage("data", run_dir / CONFIG_FILE)
    assert read_manifest(run_dir / "data") is None
    # evaluate refuses to start on an unfinished upstream stage
    assert run_stage("evaluate", run_dir / CONFIG_FILE) == 3
    monkeypatch.undo()
    (run_dir / "data" / "leftover.tmp").write_text("junk from the killed attempt")
    assert run_stage("data", run_dir / CONFIG_FILE) == 0
    assert not (run_dir / "data" / "leftover.tmp").exists()
    assert read_manifest(run_dir / "data") is not None


def test_missing_output_invalidates_the_manifest(tmp_path, tiny_llama_dir, capsys):
    run_dir = _run_all(_conf(tmp_path, tiny_llama_dir))
    (run_dir / "data" / "train.npy").unlink()
    capsys.readouterr()
    assert run_stage("data", run_dir / CONFIG_FILE) == 0
    assert "[data] running" in capsys.readouterr().out
    assert (run_dir / "data" / "train.npy").is_file()


@needs_polish
def test_polish_task_from_a_folder_the_user_names(tmp_path, tiny_llama_dir):
    conf = _conf(tmp_path, tiny_llama_dir, "evaluate.tasks=[polish_continuation]", f"evaluate.task_text={POLISH}")
    run_dir = _run_all(conf)
    task = read_result(run_dir, "evaluate").models["teacher"].tasks["polish_continuation"]
    assert task["num_examples"] == 100 and 0 <= task["acc"] <= 1


# ------------------------------------------------------------------------------------------ integrity
def _ran(out: str) -> list[str]:
    return [s for s in STAGES if f"[{s}] running" in out]


def test_a_truncated_output_reruns_exactly_its_stage_and_the_ones_after(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = _run_all(conf)
    npy = run_dir / "data" / "validation.npy"
    with npy.open("r+b") as f:
        f.truncate(100)
    capsys.readouterr()
    _run_all(conf)
    captured = capsys.readouterr()
    assert _ran(captured.out) == ["data", "evaluate"]
    assert f"output 'validation': {npy} changed size" in captured.err
    assert read_manifest(run_dir / "data") is not None and npy.stat().st_size > 100


def test_same_size_changed_bytes_are_found_by_hashing(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = _run_all(conf)
    npy = run_dir / "data" / "train.npy"
    data = bytearray(npy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte in the middle, same size
    npy.write_bytes(bytes(data))
    capsys.readouterr()
    _run_all(conf)
    captured = capsys.readouterr()
    assert _ran(captured.out) == ["data", "evaluate"]
    assert f"{npy} changed content (same size, different SHA-256)" in captured.err


def test_a_touched_but_unchanged_output_is_still_up_to_date(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = _run_all(conf)
    os.utime(run_dir / "data" / "train.npy", None)  # new mtime, same bytes: hashed again, found equal
    capsys.readouterr()
    _run_all(conf)
    assert _ran(capsys.readouterr().out) == []


def test_a_hand_edited_manifest_is_not_trusted_and_not_reported(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path, tiny_llama_dir)
    run_dir = _run_all(conf)
    path = run_dir / "evaluate" / MANIFEST
    m = json.loads(path.read_text())
    m["result"]["models"]["teacher"]["perplexity"] = 1.0001
    path.write_text(json.dumps(m))
    assert read_manifest(run_dir / "evaluate") is None
    assert read_result(run_dir, "evaluate") is None
    capsys.readouterr()
    _run_all(conf)
    assert _ran(capsys.readouterr().out) == ["evaluate"]
    assert read_result(run_dir, "evaluate").models["teacher"].perplexity != 1.0001


def test_files_and_folders_get_the_umask_permissions(tmp_path, tiny_llama_dir):
    old = os.umask(0o022)
    try:
        run_dir = _run_all(_conf(tmp_path, tiny_llama_dir))
    finally:
        os.umask(old)
    modes = {p: stat.S_IMODE(p.stat().st_mode) for p in [run_dir, *run_dir.rglob("*")] if not p.is_symlink()}
    bad = {
        str(p.relative_to(run_dir)): oct(m)
        for p, m in modes.items()
        if m != (0o755 if p.is_dir() else 0o644) and p.name != ".launch.lock"
    }
    assert bad == {}


def test_a_stage_never_cleans_outside_its_run_folder(tmp_path, tiny_llama_dir):
    conf = _conf(tmp_path / "runs", tiny_llama_dir)
    run_dir = write_run_dir(conf)
    precious = tmp_path / "runs" / "model" / "precious.txt"
    precious.parent.mkdir(parents=True)
    precious.write_text("not compactlm's")
    # a config whose run folder is not <runs_root>/<run_name> (hand-edited, or from before run names were checked)
    text = (run_dir / CONFIG_FILE).read_text().replace(f"run_dir: {run_dir}", f"run_dir: {run_dir.parent}")
    (run_dir / CONFIG_FILE).write_text(text)
    with pytest.raises(ConfigError, match="is not a folder named after run_name"):
        run_stage("model", run_dir / CONFIG_FILE)
    assert precious.read_text() == "not compactlm's"
    assert stage_folder(run_dir, conf.run_name, Task("model")) == run_dir / "model"
    for bad in ("..", "."):
        with pytest.raises(ConfigError):
            stage_folder(tmp_path / bad, bad, Task("model"))


# ------------------------------------------------------------------------------------------ run folder safety (#28)
PRUNE_DISTILL = ["model", "data", "importance", "prune", "distill"]


def _prune_distill(tmp_path, model_dir):
    conf = to_config(
        compose(
            [
                "recipe=prune_distill",
                f"recipe.stages=[{','.join(PRUNE_DISTILL)}]",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=4",
                "data.max_train_sequences=16",
                "prune.model=null",
                "prune.export_config.num_layers=3",
                "prune.export_config.ffn_hidden_size=64",
                "distill.max_steps=2",
                "distill.micro_batch_size=2",
                "distill.global_batch_size=2",
                "distill.eval_every=2",
                "distill.save_every=1",
                f"runs_root={tmp_path}",
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    return conf


@pytest.mark.parametrize(
    "mask, file_mode, dir_mode", [(0o022, 0o644, 0o755), (0o002, 0o664, 0o775)], ids=["umask022", "umask002"]
)
def test_every_file_and_folder_of_a_whole_run_gets_the_umasks_mode(tmp_path, tiny_llama_dir, mask, file_mode, dir_mode):
    """#28 item 4: model.safetensors written by save_pretrained (the pruned checkpoint, the distilled student) and
    the distill checkpoint were 0600 (safetensors' own mode), unreadable for teammates on a shared file system."""
    old = os.umask(mask)
    try:
        run_dir = write_run_dir(_prune_distill(tmp_path, tiny_llama_dir))
        for stage in PRUNE_DISTILL:
            assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
    finally:
        os.umask(old)
    paths = [run_dir, *run_dir.rglob("*")]
    assert [p for p in paths if p.is_symlink()] == []
    bad = {
        str(p.relative_to(run_dir)): oct(stat.S_IMODE(p.stat().st_mode))
        for p in paths
        if stat.S_IMODE(p.stat().st_mode) != (dir_mode if p.is_dir() else file_mode)
    }
    assert bad == {}
    weights = {str(p.relative_to(run_dir)) for p in run_dir.rglob("*.safetensors")}
    assert {"prune/checkpoint/model.safetensors", "distill/student/model.safetensors"} <= weights, weights
    assert (run_dir / "distill" / "checkpoint" / "state.pt").is_file()


def test_a_link_planted_at_a_stage_output_is_removed_not_followed(tmp_path, tiny_llama_dir):
    conf = _conf(tmp_path / "runs", tiny_llama_dir)
    run_dir = write_run_dir(conf)
    victim = tmp_path / "victim.npy"
    victim.write_bytes(b"not compactlm's")
    (run_dir / "data").mkdir()
    (run_dir / "data" / "train.npy").symlink_to(victim)  # where the data stage writes
    (run_dir / "data" / MANIFEST).symlink_to(victim)  # and where its manifest goes
    assert run_stage("model", run_dir / CONFIG_FILE) == 0 and run_stage("data", run_dir / CONFIG_FILE) == 0
    assert victim.read_bytes() == b"not compactlm's"
    assert not (run_dir / "data" / "train.npy").is_symlink() and read_manifest(run_dir / "data") is not None


def test_a_linked_stage_folder_or_a_link_in_a_kept_checkpoint_is_refused_in_one_line(tmp_path, tiny_llama_dir, capsys):
    conf = _conf(tmp_path / "runs", tiny_llama_dir)
    run_dir = write_run_dir(conf)
    outside = tmp_path / "outside"
    outside.mkdir()
    (run_dir / "model").symlink_to(outside)
    capsys.readouterr()
    assert pipeline_main(["model", f"config={run_dir / CONFIG_FILE}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"{run_dir / 'model'} is a symbolic link (to {outside})" in err[0], err
    assert os.listdir(outside) == []

    # distill keeps its checkpoint across a restart and writes into it again: a link inside it is refused
    (run_dir / "model").unlink()
    stage_dir = run_dir / "distill"
    (stage_dir / "checkpoint").mkdir(parents=True)
    (stage_dir / "checkpoint" / "state.pt").symlink_to(outside / "state.pt")
    key = {"config_hash": "h", "input_hashes": {}}
    (stage_dir / "resume_key.json").write_text(json.dumps(key))
    with pytest.raises(LinkRefused, match="state.pt is a symbolic link"):
        _clean(stage_dir, ("checkpoint",), key, fresh=False)
    assert os.listdir(outside) == []
