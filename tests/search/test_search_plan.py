"""The plan of a search, before anything runs: candidates resolved from presets or enumerated on the meta device,
the Bielik report's ten EXP candidates as Lepton jobs after the shared stages, the task graph each executor
gets, bad search input, and the ranking arithmetic (order, Pareto front, Kendall tau)."""

from __future__ import annotations

import pytest
from helpers import compose, config_error

from compactlm.config import ConfigError
from compactlm.launch.executors import build_experiment, render_submission
from compactlm.launch.launcher import place_run
from compactlm.launch.search import format_candidates, resolve_search
from compactlm.launch.validate import check_force_stages, to_config, validate
from compactlm.pipeline import STAGE_NAMES, Task, run_tasks
from compactlm.results import Architecture, ParamCounts
from compactlm.search.schema import CandidateResult
from compactlm.search.stage import kendall_tau, rank

EXP = [f"exp_{i:03d}" for i in range(1, 11)]
LEPTON = ["cluster=dgx_h200", "cluster.lepton.node_group=h200-pool", "cluster.container_image=nvcr.io/o/compactlm:1"]


def _planned(overrides):
    conf = to_config(compose(overrides))
    resolve_search(conf, validate(conf, STAGE_NAMES))
    return conf


def test_demo_search_enumerates_six_candidates_across_kinds():
    conf = _planned(["recipe=search"])
    kinds = {c.kind for c in conf.search.resolved}
    assert len(conf.search.resolved) == 6 and {"depth", "ffn", "hybrid"} <= kinds
    for c in conf.search.resolved:
        assert abs(c.params / 134_515_008 - 0.67) <= 0.03 * 0.67  # within tolerance of the target
    assert run_tasks(conf)[4:10] == [Task("candidate", c.name) for c in conf.search.resolved]
    assert [t.name for t in run_tasks(conf)[4:10]] == [f"candidate-{c.name}" for c in conf.search.resolved]


def test_force_stages_names_a_stage_or_one_task_of_the_run():
    conf = _planned(["recipe=search", "force_stages=[candidate,candidate-L18,teacher_cache]"])
    check_force_stages(conf)  # a stage (all its candidates), one candidate's task, a plain stage
    conf = _planned(["recipe=search", "force_stages=[candidate-L99]"])
    with pytest.raises(ConfigError, match=r"force_stages contains 'candidate-L99', which recipe=search does not run; "):
        check_force_stages(conf)


def test_bielik_dry_run_lists_the_ten_exp_candidates_as_lepton_jobs_after_the_shared_stages():
    conf = _planned(["recipe=search", "model=bielik_11b_v3", f"search.candidates=[{','.join(EXP)}]", *LEPTON])
    table = format_candidates(conf)
    # the Bielik-Minitron report's Table 2: parameters without lm_head and the change against 11.04B
    assert [c.name for c in conf.search.resolved] == EXP
    assert "exp_010               hybrid       40    4096  11264    32     7.35B  -33.4%" in table
    assert "exp_008               depth        32    4096  14336    32     7.11B  -35.6%" in table
    local_dir = place_run(conf)
    jobs = dict(render_submission(conf, local_dir))
    assert list(jobs) == ["model", "data", "importance", "teacher_cache", *(f"candidate-{n}" for n in EXP), "ranking"]
    for name in EXP:
        spec = jobs[f"candidate-{name}"]
        assert "(after stage teacher_cache succeeded)" in spec and '"resource_shape": "gpu.8xh200"' in spec
        assert "--nnodes 1 --nproc-per-node 8" in spec and f"candidate={name}" in spec
    assert "(after stage " + ",".join(f"candidate-{n}" for n in EXP) + " succeeded)" in jobs["ranking"]


def _dependencies(conf):
    exp = build_experiment(conf, place_run(conf))
    names = {job.id: job.id for job in exp.jobs}
    return {job.id: sorted(names[d] for d in job.dependencies) for job in exp.jobs}


def test_slurm_candidates_depend_only_on_the_shared_stages(tmp_path):
    conf = _planned(
        [
            "recipe=search",
            "cluster=slurm",
            "cluster.slurm.account=a",
            f"runs_root={tmp_path}",
            "search.max_candidates=3",
        ]
    )
    deps = _dependencies(conf)
    cands = [t.name for t in run_tasks(conf) if t.stage == "candidate"]
    assert len(cands) == 3 and all(deps[c] == ["teacher_cache"] for c in cands)
    assert deps["ranking"] == sorted(cands)
    second = run_tasks(conf)[5]
    assert second.instance is not None and second.depends_on == (Task("teacher_cache"),)
    assert [t.name for t in second.upstream] == ["model", "data", "importance", "teacher_cache"]


@pytest.mark.parametrize("parallel", [1, 2])
def test_local_search_parallel_bounds_the_candidates_running_at_once(tmp_path, parallel):
    conf = _planned(
        ["recipe=search", f"search.parallel={parallel}", f"runs_root={tmp_path}", "search.max_candidates=4"]
    )
    deps = _dependencies(conf)
    cands = [t.name for t in run_tasks(conf) if t.stage == "candidate"]
    for i, c in enumerate(cands):
        assert deps[c] == sorted(["teacher_cache", *([cands[i - parallel]] if i >= parallel else [])])


@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["recipe=search", "search.target_params=null"], "search.candidates=[<preset>, ...]"),
        (["recipe=search", "search.candidates=[exp_010]"], "'exp_010' is not a prune preset for model=smollm2_135m"),
        (["recipe=search", "search.target_params=0.05"], "search.target_params"),
        (["recipe=search", "search.target_params=1.5"], "search.target_params=1.5 is neither a fraction"),
        (["recipe=search", "search.tolerance=2"], "search.tolerance=2"),
        (
            ["recipe=search", "recipe.stages=[model,data,importance,teacher_cache,candidate,ranking,prune]"],
            "both prune",
        ),
        (["recipe=search", "recipe.stages=[model,data,importance,candidate,ranking]"], "missing: teacher_cache"),
    ],
)
def test_bad_search_input_is_one_clear_error(overrides, needle):
    with pytest.raises(ConfigError) as e:
        _planned(overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_config_error_line_of_launch_py():
    assert "search.max_candidates=0 must be an integer >= 1" in config_error(
        ["recipe=search", "search.max_candidates=0"]
    )


def _cand(name, params, pruned_loss, loss):
    arch = Architecture("llama", 64, 96, 4, 4, 2, 384)
    return CandidateResult(
        name=name,
        kind="depth",
        export_config={"num_layers": 3},
        architecture=arch,
        params=ParamCounts(total=params, embedding=10, without_lm_head=params),
        params_change=-0.3,
        kept_layers=[0, 1, 2],
        pruned_loss=pruned_loss,
        pruned_kl=1.0,
        loss=loss,
        kl=0.5,
        steps=4,
        tokens=128,
        distill_s=1.0,
    )


def test_ranking_orders_by_distilled_loss_marks_the_pareto_front_and_measures_disagreement():
    # pruned-only order a < b < c; after distillation c < b < a: fully reversed
    teacher = ParamCounts(total=130, embedding=10, without_lm_head=130)  # tied: every weight is read per token
    result = rank([_cand("a", 90, 3.0, 2.6), _cand("b", 80, 3.1, 2.5), _cand("c", 100, 3.2, 2.4)], teacher)
    assert [c.name for c in result.candidates] == ["c", "b", "a"] and result.winner == "c"
    assert [c.pruned_rank for c in result.candidates] == [3, 2, 1]
    assert result.kendall_tau == pytest.approx(-1.0)
    # a (90 params, loss 2.6) is dominated by b (80 params, loss 2.5); b and c are on the front
    assert {c.name: c.pareto for c in result.candidates} == {"c": True, "b": True, "a": False}
    assert result.candidates[0].decode_speedup == pytest.approx(1.3)
    assert kendall_tau([1, 2, 3, 4], [10, 20, 30, 40]) == pytest.approx(1.0)
    assert kendall_tau([1, 2, 3, 4], [10, 30, 20, 40]) == pytest.approx(2 / 3)
