"""The alignment stages on clusters, rendered without contacting anything: like distill, sft, dpo and grpo run
under torchrun on every node (one process per GPU), each after the stage before, on Slurm, DGX Cloud and Lepton."""

from __future__ import annotations

import os
import re

import pytest
from helpers import REPO, compose

from compactlm.launch.executors import render_submission
from compactlm.launch.launcher import place_run
from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES

GOLDEN = REPO / "tests" / "golden"
ALIGN = ["sft", "dpo", "grpo"]
RECIPE = ["recipe=prune_distill_align", "model=bielik_11b_v3", "prune=exp_010", "run_name=bielik_exp010"]
IMAGE = "nvcr.io/acme/compactlm-train:1.0"
CLUSTERS = {
    "slurm": [
        "cluster=slurm",
        "cluster.slurm.account=llm_research",
        "cluster.slurm.partition=batch",
        "cluster.nodes=2",
        "cluster.gpus_per_node=8",
        "distill.global_batch_size=64",  # 2 × 8 processes × micro-batch 4
        "cluster.slurm.tunnel=ssh",
        "cluster.slurm.host=login.example.com",
        "cluster.slurm.user=alice",
        "cluster.slurm.job_dir=/lustre/alice/nemorun",
        "cluster.runs_root=/lustre/alice/runs",
        "cluster.cache_dir=/lustre/alice/cache",
        "cluster.container_image=/lustre/containers/compactlm-train.sqsh",
        "cluster.slurm.time=12:00:00",
    ],
    "lepton": ["cluster=dgx_h200", "cluster.lepton.node_group=h200-pool", f"cluster.container_image={IMAGE}"],
    "dgxc": [
        "cluster=dgxc",
        "distill.global_batch_size=64",  # 2 × 8 processes × micro-batch 4
        "cluster.dgxc.base_url=http://127.0.0.1:9/api/v1",
        "cluster.dgxc.project_name=compactlm",
        "cluster.dgxc.pvcs.0.claim_name=compactlm-ws",
        f"cluster.container_image={IMAGE}",
    ],
}


def _render(cluster):
    conf = to_config(compose([*RECIPE, *CLUSTERS[cluster]]))
    validate(conf, STAGE_NAMES)
    return dict(render_submission(conf, place_run(conf)))


def test_slurm_sft_script_matches_its_golden_file_and_dpo_grpo_are_alike():
    scripts = _render("slurm")
    got = re.sub(
        r"--rdzv-id \d+",
        "--rdzv-id <RDZV_ID>",
        re.sub(r"(bielik_exp010)_\d{10,}", r"\1_<EXPERIMENT_ID>", scripts["sft"]),
    )
    golden = GOLDEN / "slurm_2x8_pyxis_sft.sbatch"
    if os.environ.get("UPDATE_GOLDEN"):
        golden.write_text(got)
    assert got == golden.read_text(), f"{golden} differs; UPDATE_GOLDEN=1 rewrites it after a deliberate change"
    for stage in ALIGN:
        text = scripts[stage]
        assert "#SBATCH --nodes=2" in text and "#SBATCH --gpus-per-node=8" in text
        assert "--nnodes 2 --nproc-per-node 8" in text and f"-m compactlm.run {stage} config=config.yaml" in text
        assert "#SBATCH --signal=USR1@120" in text and 'scontrol requeue "$SLURM_JOB_ID"' in text
    assert "--gpus-per-node=8" not in scripts["align_data"] and "#SBATCH --nodes=1" in scripts["align_data"]


@pytest.mark.parametrize("cluster", ["lepton", "dgxc"])
def test_cloud_renders_torchrun_on_two_nodes_for_each_alignment_stage(cluster):
    text = _render(cluster)
    for stage in ALIGN:
        assert (
            "torchrun --nnodes 2 --nproc-per-node 8" in text[stage]
            and f"-m compactlm.run {stage} config=/nemo_run/code/config.yaml" in text[stage]
        ), text[stage]
    previous = {"sft": "align_data", "dpo": "sft", "grpo": "dpo"}
    for stage, before in previous.items():
        assert f"after stage {before} succeeded" in text[stage]
