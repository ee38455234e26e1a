"""The release stage's refusals, before anything runs: one line naming the key, the value and what is allowed."""

from __future__ import annotations

import importlib.util
import shutil

import pytest
from helpers import compose, config_error

from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES
from compactlm.release.teacher import base_model, teacher_meta

NO_GGUF = "recipe.stages=[model,data,importance,prune,distill,release]"
UPLOAD = importlib.util.find_spec("compactlm.release.upload") is not None


def _local(folder) -> list[str]:
    return [
        "recipe=prune_distill",
        NO_GGUF,
        "model=local",
        f"model.path={folder}",
        "prune.model=null",
        "prune.export_config.num_layers=3",
        "prune.export_config.ffn_hidden_size=64",
    ]


def test_the_recipes_end_with_release():
    for recipe in ("prune_distill", "prune_distill_align", "search_distill", "quantize"):
        assert compose([f"recipe={recipe}"]).recipe.stages[-1] == "release", recipe


@pytest.mark.parametrize("repo", ["not a repo", "org/name/extra", "org/-name", "org/na--me", "org/name.git"])
def test_an_invalid_repo_id_is_refused(repo):
    msg = config_error([f"release.repo_id={repo}"])
    assert msg.startswith(f"release.repo_id={repo!r} is not a Hub repo id") and "\n" not in msg


def test_a_repo_id_without_a_token_is_refused(monkeypatch):
    monkeypatch.delenv("HF_TOKEN", raising=False)
    msg = config_error(["release.repo_id=someone/tiny-minitron"])
    if UPLOAD:
        assert "needs a Hub token in the environment variable HF_TOKEN" in msg
    else:  # this checkout has no upload: refused before the token is asked for
        assert "upload not available" in msg
    assert msg.startswith("release.repo_id='someone/tiny-minitron'")


def test_a_license_that_cannot_be_read_is_refused(tiny_llama_dir, tmp_path):
    bare = shutil.copytree(tiny_llama_dir, tmp_path / "bare")
    (bare / "README.md").unlink()  # no card: nothing says the license
    msg = config_error(_local(bare))
    assert (
        msg.startswith("release.license=None and the teacher's license cannot be read") and "release.license=<" in msg
    )
    # a card without a license is refused the same way, naming the card; given on the command line, it is accepted
    folder = shutil.copytree(bare, tmp_path / "teacher")
    (folder / "README.md").write_text("---\nlanguage: en\n---\n# no license here\n")
    msg = config_error(_local(folder))
    assert f"cannot be read ({folder / 'README.md'} has no license)" in msg
    conf = to_config(compose([*_local(folder), "release.license=mit", f"runs_root={tmp_path}"]))
    validate(conf, STAGE_NAMES)


def test_the_license_is_read_from_the_teachers_card_or_gguf(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: llama3.1\nlanguage: [en, de]\n---\n# a model\n")
    from compactlm.release.teacher import from_card

    meta = from_card(tmp_path / "README.md")
    assert (meta.license, meta.language) == ("llama3.1", ["en", "de"])
    demo = to_config(compose(["model=smollm2_135m"])).model  # its GGUF says general.license
    meta = teacher_meta(demo)
    assert meta.license == "apache-2.0" and meta.language == ["en"] and meta.source.endswith(".gguf")
    assert base_model(None, demo) is None  # a packaged GGUF names no Hub id: base_model is left out
    bielik = to_config(compose(["model=bielik_11b_v3"])).model
    assert base_model(None, bielik) == "speakleash/Bielik-11B-v3.0-Instruct"


def test_a_release_with_nothing_to_release_is_refused():
    msg = config_error(["recipe=eval", "recipe.stages=[model,data,evaluate,release]"])
    assert msg.startswith("recipe=eval has a release stage but nothing to release") and "\n" not in msg
    msg = config_error(["recipe=quantize", "release.export=false", "release.gguf=false"])
    assert "nothing to release" in msg  # the teacher itself is no release
    msg = config_error(["release.hf=false", "release.export=false", "release.gguf=false"])
    assert msg.startswith("release.hf, release.export and release.gguf are all false")


def test_release_must_be_the_last_stage():
    msg = config_error(["recipe.stages=[model,data,importance,prune,release,evaluate]"])
    assert "release must be the last stage" in msg
