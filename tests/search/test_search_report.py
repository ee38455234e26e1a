"""The candidate search in the run report: a fake search run whose manifests are written the way the stage runner
writes them (typed results, `to_json`, sealed), and the real plots; the report's candidate table, the winner,
Kendall's tau, a failed candidate and the multi-run comparison are read back from report.md / report.html."""

from __future__ import annotations

import base64
import uuid
from dataclasses import replace
from datetime import datetime, timezone
from itertools import combinations
from pathlib import Path

import pytest
from helpers import compose
from matplotlib.image import imread

from compactlm import stages
from compactlm.data.schema import DataResult
from compactlm.launch.report import results, summary_table, write_comparison, write_report
from compactlm.launch.validate import to_config
from compactlm.manifest import MANIFEST, atomic_write_json, read_manifest, seal, versions
from compactlm.model.schema import ModelResult
from compactlm.pipeline import RUNNING, run_tasks
from compactlm.prune.schema import ExportConfig
from compactlm.results import Architecture, ParamCounts, read_result, result_class, to_json
from compactlm.search.plots import plot_pareto, plot_search_curves
from compactlm.search.report import search_rows
from compactlm.search.schema import (
    CandidateResult,
    RankedCandidate,
    RankingResult,
    SearchCandidate,
    TeacherCacheResult,
    agreement,
)

TEACHER_ARCH = Architecture(
    "llama",
    hidden_size=576,
    ffn_hidden_size=1536,
    num_layers=30,
    num_attention_heads=9,
    num_key_value_heads=3,
    vocab_size=49152,
)
TEACHER_PARAMS = ParamCounts(total=134_515_008, embedding=28_311_552, without_lm_head=134_515_008)
# name -> (kind, export_config, params without lm_head, pruned-only loss, loss after the short distillation, KL)
CANDIDATES = {
    "L20": ("depth", {"num_layers": 20}, 90_000_000, 7.9, 3.10, 0.52),
    "F960": ("ffn", {"ffn_hidden_size": 960}, 95_000_000, 5.2, 3.02, 0.44),
    "H384": ("hidden", {"hidden_size": 384}, 88_000_000, 6.4, 2.95, 0.40),
    "hyb": ("hybrid", {"num_layers": 24, "ffn_hidden_size": 1152}, 86_000_000, 6.9, 3.20, 0.61),
}
FAILED = ("hd6", "heads", {"num_attention_heads": 6}, 100_000_000)  # planned, but its task wrote no manifest


def kendall_tau(a: list[int], b: list[int]) -> float:
    pairs = list(combinations(range(len(a)), 2))
    return sum((a[i] - a[j]) * (b[i] - b[j]) > 0 for i, j in pairs) / len(pairs) * 2 - 1


def ranking_of(cands: dict[str, tuple]) -> RankingResult:
    """What the ranking stage would write for these candidates: ranks, Pareto front, Kendall tau, the winner."""
    names = list(cands)
    by_loss = sorted(names, key=lambda n: cands[n][4])
    by_pruned = sorted(names, key=lambda n: cands[n][3])
    rows = []
    for n in by_loss:
        kind, export, params, pruned, loss, kl = cands[n]
        pareto = not any(o[2] < params and o[4] < loss for m, o in cands.items() if m != n)
        rows.append(
            RankedCandidate(
                name=n,
                kind=kind,
                export_config=export,
                params=params,
                params_change=params / TEACHER_PARAMS.without_lm_head - 1,
                pruned_loss=pruned,
                loss=loss,
                kl=kl,
                rank=by_loss.index(n) + 1,
                pruned_rank=by_pruned.index(n) + 1,
                decode_speedup=TEACHER_PARAMS.total / params,
                pareto=pareto,
            )
        )
    tau = kendall_tau([r.rank for r in rows], [r.pruned_rank for r in rows])
    return RankingResult(
        metric="val_nll",
        candidates=rows,
        winner=by_loss[0],
        kendall_tau=tau,
        teacher_params=TEACHER_PARAMS.without_lm_head,
        teacher_loss=2.61,
    )


def candidate_of(
    name: str, kind: str, export: dict, params: int, pruned: float, loss: float, kl: float
) -> CandidateResult:
    steps = 40
    curve = [
        {"step": s, "val_nll": loss + (pruned - loss) * (1 - s / steps) ** 3, "val_kl": kl * (1 + 3 * (1 - s / steps))}
        for s in range(10, steps + 1, 10)
    ]
    return CandidateResult(
        name=name,
        kind=kind,
        export_config=export,
        architecture=replace(TEACHER_ARCH, **export),
        params=ParamCounts(total=params, embedding=TEACHER_PARAMS.embedding, without_lm_head=params),
        params_change=params / TEACHER_PARAMS.without_lm_head - 1,
        kept_layers=list(range(export.get("num_layers", 30))),
        pruned_loss=pruned,
        pruned_kl=kl * 4,
        loss=loss,
        kl=kl,
        steps=steps,
        tokens=steps * 4 * 256,
        distill_s=12.5,
        curve=curve,
    )


def write_manifest(run_dir, task: str, result) -> None:
    """A sealed manifest with the fields pipeline.run_stage writes, its result the stage's typed result."""
    now = datetime.now(timezone.utc).isoformat(timespec="seconds")
    atomic_write_json(
        run_dir / task / MANIFEST,
        seal(
            {
                "stage": next(stage for stage in stages.names() if result_class(stage) is type(result)),
                "task": task,
                "config_hash": "test",
                "input_hashes": {},
                "outputs": {},
                "output_files": {},
                "output_digests": {},
                "result": to_json(result),
                "engine": {},
                "versions": versions(),
                "attempt": uuid.uuid4().hex,
                "started_at": now,
                "finished_at": now,
                "wall_time_s": 1.5,
            }
        ),
    )


def make_run(tmp, run_name: str, cands: dict[str, tuple]):
    conf = to_config(compose(["recipe=search", f"runs_root={tmp}", f"run_name={run_name}"]))
    conf.run_dir = str(tmp / run_name)
    name, kind, export, params = FAILED
    conf.search.resolved = [
        SearchCandidate(
            name=n,
            export_config=ExportConfig(**c[1]),
            kind=c[0],
            params=c[2],
            change=c[2] / TEACHER_PARAMS.without_lm_head - 1,
        )
        for n, c in cands.items()
    ] + [
        SearchCandidate(
            name=name,
            export_config=ExportConfig(**export),
            kind=kind,
            params=params,
            change=params / TEACHER_PARAMS.without_lm_head - 1,
        )
    ]
    run_dir = tmp / run_name
    write_manifest(run_dir, "model", ModelResult("smollm2_135m", TEACHER_ARCH, TEACHER_PARAMS))
    write_manifest(
        run_dir,
        "data",
        DataResult(
            seq_len=256,
            sequences={"validation": 8, "train": 64},
            tokens={"validation": 2048, "train": 16384},
            heldout_documents=3,
        ),
    )
    write_manifest(
        run_dir,
        "teacher_cache",
        TeacherCacheResult(
            train_sequences=64, validation_sequences=8, topk=32, seq_len=256, wall_s=3.0, size_bytes=5 * 2**20
        ),
    )
    results = [candidate_of(n, *c) for n, c in cands.items()]
    for r in results:
        write_manifest(run_dir, f"candidate-{r.name}", r)
    ranking = ranking_of(cands)
    plot_pareto(ranking, run_dir / "ranking" / "pareto.png")
    plot_search_curves(results, run_dir / "ranking" / "search_curves.png", winner=ranking.winner)
    write_manifest(run_dir, "ranking", ranking)
    return conf


def md_table(text: str, heading: str | None = None) -> list[dict[str, str]]:
    """The first table after `## heading` of a report.md (no heading: the first table), one dict per row."""
    lines = (text.split(f"## {heading}\n", 1)[1] if heading else text).splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    table = []
    for line in lines[start:]:
        if not line.startswith("|"):
            break
        table.append([c.strip() for c in line.strip().strip("|").split("|")])
    header, rows = table[0], table[2:]
    return [dict(zip(header, r)) for r in rows]


@pytest.fixture(scope="module")
def search_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runs")
    conf = make_run(tmp, "search_a", CANDIDATES)
    write_report(conf)
    return tmp, conf


def test_report_lists_every_candidate_with_the_ranking_stage_figures(search_run):
    _, conf = search_run
    ranking = read_result(conf.run_dir, "ranking")
    assert ranking.winner == "H384"  # lowest loss after the short distillation, though only #2 pruned-only
    text = open(f"{conf.run_dir}/report.md").read()
    rows = {r["candidate"]: r for r in md_table(text, "Candidate search")}
    assert set(rows) == {*CANDIDATES, "hd6", "teacher"}
    for c in ranking.candidates:
        row = rows[c.name]
        assert row["rank"] == str(c.rank)
        assert row["kind"] == c.kind
        assert row["loss after short distillation"] == f"{c.loss:.4f}"
        assert row["pruned-only loss (rank)"] == f"{c.pruned_loss:.4f} (#{c.pruned_rank})"
        assert row["KL to teacher"] == f"{c.kl:.4f}"
        assert row["reduction"] == f"{c.params_change * 100:+.1f}%"
        assert row["est. decode speed-up"] == f"{c.decode_speedup:.2f}×"
        assert row["status"] == ("winner" if c.name == "H384" else "ranked")
    assert [r["candidate"] for r in md_table(text, "Candidate search")][:4] == ["H384", "F960", "L20", "hyb"]
    assert {n for n, r in rows.items() if r["Pareto"] == "✓"} == {"H384", "hyb"}
    assert rows["H384"]["params"] == "88.0M" and rows["teacher"]["params"] == "134.5M"
    # layers / hidden / FFN / heads: the candidate's own sizes, the teacher's where it prunes nothing
    assert rows["H384"]["layers / hidden / FFN / heads"] == "30 / 384 / 1536 / 9"
    assert rows["hyb"]["layers / hidden / FFN / heads"] == "24 / 576 / 1152 / 9"
    assert rows["teacher"]["layers / hidden / FFN / heads"] == "30 / 576 / 1536 / 9"
    # Kendall tau: H384/F960 and L20/hyb swap places, the other 4 pairs agree: (4 - 2) / 6
    assert ranking.kendall_tau == pytest.approx(1 / 3)
    assert "Kendall τ = +0.33 over 4 candidates" in text
    assert "the pruned-only ranking partly agrees with the ranking after the short distillation" in text
    assert "would have picked F960 (#2 after the short distillation) instead of H384" in text
    assert "Chosen: H384 (hidden; layers / hidden / FFN / heads 30 / 384 / 1536 / 9), 88.0M parameters" in text
    # the chosen candidate is the run's pruned model in the architecture table
    arch = {r[""]: r for r in md_table(text, "Architecture")}
    assert arch["hidden_size"] == {"": "hidden_size", "teacher": "576", "pruned (H384)": "384"}
    # every candidate is a task of its own in the stage table
    stages = {r["stage"]: r for r in md_table(text, "Stages")}
    assert [t for t in stages if t.startswith("candidate-")] == [f"candidate-{n}" for n in [*CANDIDATES, "hd6"]]
    assert stages["candidate-H384"]["wall time"] == "1.5 s"
    assert stages["candidate-hd6"]["finished"] == "not finished"
    assert list(stages) == [t.name for t in run_tasks(conf)]


def test_a_candidate_without_manifest_is_failed_once_ranked_and_not_finished_before(search_run):
    _, conf = search_run
    text = open(f"{conf.run_dir}/report.md").read()
    row = next(r for r in md_table(text, "Candidate search") if r["candidate"] == "hd6")
    # its planned sizes (export_config over the teacher's) and the launcher's count; no figures, status failed
    assert row["layers / hidden / FFN / heads"] == "30 / 576 / 1536 / 6"
    assert row["params"] == "100.0M" and row["rank"] == "-" and row["loss after short distillation"] == "-"
    assert row["status"] == "failed"
    assert "1 candidate(s) failed (no manifest in their folder, so not ranked): hd6 (candidate-hd6/)." in text

    # Without a ranking (the stage waits for every candidate) nothing is a winner, the others are sorted by loss,
    # and the one without a manifest is: not started (no folder), running (a stage process's marker in its
    # folder), failed (a folder a stopped attempt left).
    ms = {t.name: read_manifest(t.folder(conf.run_dir)) for t in run_tasks(conf)}
    assert ms["ranking"] is not None

    def status() -> dict[str, str]:
        header, rows = search_rows(conf, results(conf, {**ms, "ranking": None}))
        assert [r[1] for r in rows] == ["H384", "F960", "L20", "hyb", "hd6"]  # no teacher row without a ranking
        assert all(r[0] == "-" for r in rows)
        return {r[1]: r[header.index("status")] for r in rows}

    assert status() == {
        "L20": "finished",
        "F960": "finished",
        "H384": "finished",
        "hyb": "finished",
        "hd6": "not started",
    }
    folder = Path(conf.run_dir) / "candidate-hd6"
    atomic_write_json(folder / RUNNING, {"pid": 1, "host": "elsewhere"})
    assert status()["hd6"] == "running"
    (folder / RUNNING).unlink()
    assert status()["hd6"] == "failed"
    folder.rmdir()


def test_terminal_summary_shows_the_top_of_the_ranking(search_run):
    _, conf = search_run
    out = summary_table(conf, launched_at=0)
    assert (
        "candidate search: winner H384; Kendall tau +0.33, the pruned-only ranking partly agrees with the ranking "
        "after the short distillation"
    ) in out
    lines = out.splitlines()
    assert any(line.split()[:1] == ["candidate-H384"] and "ran" in line for line in lines)
    assert any(line.split() == ["candidate-hd6", "NOT", "FINISHED"] for line in lines)
    table = [line.split() for line in lines if line.split()[:1] in (["1"], ["2"], ["3"], ["4"], ["-"])]
    assert [row[1] for row in table] == ["H384", "F960", "L20", "hyb", "hd6"]
    assert table[0][-1] == "winner" and table[-1][-1] == "failed"


def test_pareto_and_curves_are_valid_pngs_embedded_once(search_run):
    _, conf = search_run
    html = open(f"{conf.run_dir}/report.html").read()
    md = open(f"{conf.run_dir}/report.md").read()
    for name in ("pareto.png", "search_curves.png"):
        path = f"{conf.run_dir}/ranking/{name}"
        data = open(path, "rb").read()
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        pixels = imread(path)
        assert pixels.shape[0] > 300 and pixels.shape[1] > 600
        assert pixels[..., :3].std() > 0.05  # not a blank canvas
        assert html.count(base64.b64encode(data).decode()) == 1  # in the search section, not again under Plots
        assert md.count(f"(ranking/{name})") == 1
    section = md.split("## Candidate search\n", 1)[1].split("\n## ", 1)[0]
    assert "(ranking/pareto.png)" in section


def test_comparison_lists_both_searches(search_run):
    tmp, a = search_run
    # the second search: the depth-pruned candidate wins, and the pruned-only ranking picked it too
    other = {**CANDIDATES, "L20": ("depth", {"num_layers": 20}, 90_000_000, 5.0, 2.90, 0.35)}
    b = make_run(tmp, "search_b", other)
    plain = to_config(compose(["recipe=prune", f"runs_root={tmp}", "run_name=plain"]))
    plain.run_dir = str(tmp / "plain")
    md, page = write_comparison([a, b, plain], tmp / "compare")
    text = md.read_text()
    searches = {r["run"]: r for r in md_table(text, "Candidate searches")}
    assert set(searches) == {"search_a", "search_b"}  # the run that did not search has no row
    assert searches["search_a"]["winner"] == "H384" and searches["search_b"]["winner"] == "L20"
    assert searches["search_a"]["candidates"] == searches["search_b"]["candidates"] == "4 (1 failed)"
    assert searches["search_a"]["winner params"] == "88.0M" and searches["search_b"]["reduction"] == "-33.1%"
    assert searches["search_a"]["winner loss"] == "2.9500" and searches["search_b"]["winner loss"] == "2.9000"
    assert searches["search_a"]["pruned-only pick"] == "F960" and searches["search_b"]["pruned-only pick"] == "L20"
    tau_b = read_result(b.run_dir, "ranking").kendall_tau
    assert searches["search_a"]["Kendall τ"] == "+0.33 (partly agrees)"
    assert searches["search_b"]["Kendall τ"].startswith(f"{tau_b:+.2f} (")
    side = {r[""]: r for r in md_table(text)}
    assert side["search winner"] == {"": "search winner", "search_a": "H384", "search_b": "L20", "plain": "-"}
    assert side["num_layers"]["search_a"] == "30" and side["num_layers"]["search_b"] == "20"  # the winners'
    assert "search_b" in page.read_text()


@pytest.mark.parametrize(
    "tau, sentence, cell",
    [
        (1.0, "agrees exactly with", "same order"),
        (0.33, "partly agrees with", "partly agrees"),
        (0.0, "is nearly unrelated to", "unrelated"),
        (-0.4, "partly disagrees with", "partly disagrees"),
        (-1.0, "largely reverses", "reversed"),
    ],
)
def test_kendall_tau_in_words(tau, sentence, cell):
    assert agreement(tau) == sentence and agreement(tau, short=True) == cell
