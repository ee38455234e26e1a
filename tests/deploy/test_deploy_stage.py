"""The deploy stage where TensorRT-LLM is missing: refused before submission on this machine, and a stage
started anyway stops with a message saying where it runs (never a silent skip)."""

from __future__ import annotations

import subprocess
import sys

from helpers import REPO, compose, run_launch

from compactlm.launch.launcher import write_run_dir
from compactlm.launch.validate import to_config
from compactlm.manifest import read_manifest
from compactlm.pipeline import CONFIG_FILE, run_stage


def test_deploy_recipe_on_this_machine_fails_before_anything_runs(tmp_path):
    r = run_launch(["recipe=prune_distill_deploy", f"runs_root={tmp_path}"], timeout=120)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "TensorRT-LLM container on a GPU" in r.stderr and "cluster.deploy_image" in r.stderr
    assert not any(tmp_path.iterdir())


def test_deploy_stage_stops_with_where_it_runs(tmp_path, tiny_llama_dir):
    conf = to_config(
        compose(
            [
                "recipe=eval",
                "recipe.stages=[model,deploy]",
                "model=local",
                f"model.path={tiny_llama_dir}",
                "data=pydoc",
                "data.max_documents=20",
                f"runs_root={tmp_path}",
            ]
        )
    )
    conf.run_dir = str(tmp_path / conf.run_name)
    run_dir = write_run_dir(conf)
    assert run_stage("model", run_dir / CONFIG_FILE) == 0
    r = subprocess.run(
        [sys.executable, "-m", "compactlm.run", "deploy", f"config={run_dir / CONFIG_FILE}"],
        capture_output=True,
        text=True,
        timeout=300,
        env={"PYTHONPATH": str(REPO / "src"), "PATH": ""},
    )
    assert r.returncode == 4, r.stdout + r.stderr
    assert "[deploy] cannot run here" in r.stderr and "nvcr.io/nvidia/tensorrt-llm/release" in r.stderr
    assert read_manifest(run_dir / "deploy") is None


def test_nvfp4_deploy_on_h200_lepton_is_refused():
    from compactlm.config import ConfigError
    from compactlm.deploy.checks import check_deploy

    conf = to_config(compose(["recipe=prune_distill_deploy", "quantize=nvfp4"]))
    conf.cluster.executor, conf.cluster.deploy_image = "lepton", "nvcr.io/nvidia/tensorrt-llm/release:1.2.0"
    try:
        check_deploy(conf)
    except ConfigError as e:
        assert "quantize.format=nvfp4" in str(e) and "gpu.8xh200" in str(e)
    else:
        raise AssertionError("NVFP4 served on H200 was accepted")
