"""The run report on a real (tiny) prune + bench run: the figures shown are the manifests' (one source of
truth), the HTML renders in headless Chromium with every table and image, and runs compare side by side."""

from __future__ import annotations

import json
import os
import shutil
import struct
from pathlib import Path

import pytest
from browser import inspect_layout, inspect_page, require_chromium, screenshot
from helpers import compose, run_launch

from compactlm.bench.report import bench_rows
from compactlm.evaluate.report import quality_rows, recovery
from compactlm.launch.headline import tradeoff_points
from compactlm.launch.launcher import write_run_dir
from compactlm.launch.report import build_blocks, results, write_report
from compactlm.launch.validate import to_config
from compactlm.manifest import MANIFEST, atomic_write_json, read_manifest, seal
from compactlm.pipeline import CONFIG_FILE, run_stage
from compactlm.results import read_result

STAGES = ["model", "data", "importance", "prune", "evaluate", "bench"]


def _conf(tmp_path, model_dir, run_name, *extra):
    conf = to_config(
        compose(
            [
                "recipe=prune",
                "model=local",
                f"model.path={model_dir}",
                "data=pydoc",
                "data.max_documents=20",
                "data.seq_len=32",
                "data.validation_sequences=4",
                "data.calibration_sequences=8",
                "data.max_train_sequences=8",
                "evaluate.generate_tokens=4",
                "evaluate.task_examples=20",
                "prune.model=null",
                "prune.export_config.num_layers=2",
                "prune.export_config.ffn_hidden_size=64",
                "bench.batch_sizes=[1,2]",
                "bench.prompt_tokens=8",
                "bench.new_tokens=4",
                "bench.repeats=1",
                f"runs_root={tmp_path}",
                f"run_name={run_name}",
                *extra,
            ]
        )
    )
    conf.run_dir = str(tmp_path / run_name)
    return conf


@pytest.fixture(scope="module")
def runs(tmp_path_factory, tiny_llama_dir):
    tmp = tmp_path_factory.mktemp("runs")
    confs = [
        _conf(tmp, tiny_llama_dir, "cand_a"),
        _conf(tmp, tiny_llama_dir, "cand_b", "prune.export_config.num_layers=3"),
    ]
    for conf in confs:
        run_dir = write_run_dir(conf)
        for stage in STAGES:
            assert run_stage(stage, run_dir / CONFIG_FILE) == 0, stage
        write_report(conf)
    return tmp, confs


def test_bench_stage_reports_speed_ratio_next_to_parameter_ratio(runs):
    _, (conf, _) = runs
    m = read_manifest(f"{conf.run_dir}/bench")["result"]
    assert m["student"] == "pruned" and [r["batch_size"] for r in m["runs"]] == [1, 2]
    for run in m["runs"]:
        t, s = run["models"]["teacher"], run["models"]["pruned"]
        assert t["output_tokens"] == s["output_tokens"] == run["batch_size"] * 4
        c = run["compare"]
        assert c["tokens_per_s_ratio"] == pytest.approx(s["output_tokens_per_s"] / t["output_tokens_per_s"])
        assert c["ideal_speedup"] > 1  # 4 -> 2 layers: the student reads fewer weights per token
        assert t["peak_memory_bytes"] > 0


def test_report_shows_exactly_the_manifest_figures(runs):
    _, (conf, _) = runs
    models = read_manifest(f"{conf.run_dir}/evaluate")["result"]["models"]
    md = conf.run_dir + "/report.md"
    text = open(md).read()
    for label in ("teacher", "pruned"):
        assert f"{models[label]['perplexity']:.3f}" in text
        assert f"{models[label]['tasks']['heldout_continuation']['acc']:.3f}" in text
    bench = read_result(conf.run_dir, "bench")
    for row in bench_rows(bench)[1]:
        assert "| " + " | ".join(row) + " |" in text

    # A manifest rewritten as a stage writes it (sealed with its checksum): the re-rendered report shows the new
    # figure, not a copy. The same edit by hand (checksum not updated) is not trusted, so not shown.
    path = f"{conf.run_dir}/evaluate/{MANIFEST}"
    original = json.loads(open(path).read())
    manifest = json.loads(open(path).read())
    manifest["result"]["models"]["pruned"]["perplexity"] = 12345.678
    atomic_write_json(path, seal(manifest))
    header, rows = quality_rows(read_result(conf.run_dir, "evaluate").models)
    assert "12345.678" in [r[header.index("perplexity")] for r in rows]
    assert any("12345.678" in str(b.content) for b in build_blocks(conf) if b.kind == "table")
    atomic_write_json(path, manifest)  # hand-edited: the old checksum no longer matches
    assert read_result(conf.run_dir, "evaluate") is None
    assert not any("12345.678" in str(b.content) for b in build_blocks(conf) if b.kind == "table")
    atomic_write_json(path, original)


def test_html_report_renders_in_chromium_with_tables_and_images(runs):
    require_chromium()
    _, (_, conf) = runs
    page = inspect_page(f"{conf.run_dir}/report.html")
    titles = [t[0][0] for t in page.tables]
    assert len(page.tables) == 4, titles  # architecture, quality and recovery, speed, stages
    assert any("recovery (aggregate)" in t[0] for t in page.tables)
    assert any("ideal (param ratio)" in t[0] for t in page.tables)
    models = read_manifest(f"{conf.run_dir}/evaluate")["result"]["models"]
    cells = {c for t in page.tables for row in t for c in row}
    assert f"{models['pruned']['perplexity']:.3f}" in cells
    assert len(page.images) == 3 and page.probed_images == 3  # the trade-off chart, importance depth and width
    assert page.images[0].alt.startswith("Size against quality")
    assert all(img.decoded for img in page.images), page.images


def test_report_first_screen_tells_the_story_and_fits_1280px(runs):
    """report.html opens with the headline (the manifests' figures) and the trade-off chart, and no element is
    wider than a 1280 px window; a screenshot of that first screen is kept (COMPACTLM_ARTIFACTS: copied there)."""
    require_chromium()
    _, (conf, _) = runs
    page = Path(conf.run_dir) / "report.html"
    layout = inspect_layout(page, width=1280, height=900)
    assert layout.inner_width == 1280
    assert layout.first[:3] == ["h1", "div.headline", "figure"], layout.first
    assert layout.scroll_width <= 1280
    assert layout.tables and [t for t in layout.tables if t["left"] < 0 or t["right"] > 1280] == []
    assert [e for e in layout.elements if e["left"] < 0 or e["right"] > 1280] == []

    ev, bench = read_result(conf.run_dir, "evaluate"), read_result(conf.run_dir, "bench")
    t, s = ev.models["teacher"], ev.models["pruned"]
    one = next(r for r in bench.runs if r.batch_size == 1)
    text = page.read_text()
    headline = text[text.index("<div class='headline'>") : text.index("<figure>")]
    assert f"<b>{(s.params.total / t.params.total - 1) * 100:+.1f}%</b>" in headline
    assert f"<b>{recovery(t, s)['aggregate'] * 100:.1f}%</b>" in headline
    assert f"<b>{one.compare['decode_speedup']:.2f}×</b>" in headline
    assert f"ideal {one.compare['ideal_speedup']:.2f}×" in headline
    points = tradeoff_points(results(conf))
    assert {p.label: round(p.quality, 6) for p in points} == {
        label: round(t.perplexity / m.perplexity, 6) for label, m in ev.models.items()
    }

    shot = screenshot(page, Path(conf.run_dir) / "report_first_screen_1280.png", width=1280, height=900)
    head = shot.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == (1280, 900)
    if os.environ.get("COMPACTLM_ARTIFACTS"):
        shutil.copy(shot, Path(os.environ["COMPACTLM_ARTIFACTS"]) / shot.name)


def test_launch_report_compares_runs_side_by_side(runs):
    tmp, (a, b) = runs
    r = run_launch(["report", "runs=cand_a,cand_b", f"runs_root={tmp}"], timeout=300)
    assert r.returncode == 0, r.stderr
    out = tmp / "compare_cand_a_vs_cand_b"
    text = (out / "report.md").read_text()
    assert "|  | cand_a | cand_b |" in text
    assert "| num_layers | 2 | 3 |" in text
    for conf in (a, b):
        pruned = read_manifest(f"{conf.run_dir}/evaluate")["result"]["models"]["pruned"]
        assert f"{pruned['perplexity']:.3f}" in text
    assert (out / "report.html").is_file()
    bad = run_launch(["report", "runs=cand_a,nope", f"runs_root={tmp}"], timeout=120)
    assert bad.returncode == 2 and "run_name='nope'" in bad.stderr
