"""Bad input fails before anything runs: one line naming the key, the value and what is allowed, exit code 2.

Each section is one kind of input that used to pass pre-flight (or end in a traceback): run names, run_dir,
model.path, text files, lm-eval task names, local model folders, learning rate and sequence length, and the
command line itself (unknown keys, wrong types).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from helpers import REPO, compose, config_error, run_launch
from safetensors.numpy import save_file

from compactlm.config import ConfigError, check_run_name, hub_id_like
from compactlm.data import splits
from compactlm.data.splits import utf8_error
from compactlm.evaluate.lmeval import unknown_tasks
from compactlm.launch.compose import help_text, schema_keys
from compactlm.launch.launcher import place_run, write_run_dir
from compactlm.launch.validate import to_config, validate
from compactlm.model.loading import check_model_folder, materialize
from compactlm.model.schema import ModelConfig
from compactlm.pipeline import STAGE_NAMES, run_stage

ERROR = "compactlm: configuration error: "


def one_error_line(proc) -> str:
    """The single line a refused launch.py prints; nothing else on stderr, exit code 2."""
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(ERROR), proc.stderr
    return lines[0][len(ERROR) :]


# ------------------------------------------------------------------------------------------------ 1. run names
@pytest.mark.parametrize("name", ["..", ".", "a/b", "../x", "", "-x", "_x", ".hidden", "a b", "zażółć", "x" * 101])
def test_unsafe_run_names_are_refused(name):
    with pytest.raises(ConfigError, match=r"^run_name=.*letter or digit"):
        check_run_name(name)


@pytest.mark.parametrize("name", ["a", "prune_distill_smollm2_135m", "exp-010.v2", "9", "x" * 100])
def test_safe_run_names_pass(name):
    check_run_name(name)


def test_the_key_is_named_as_given():
    with pytest.raises(ConfigError, match=r"^name='\.\.' is not allowed"):
        check_run_name("..", key="name")


@pytest.mark.parametrize("name", ["..", "."])
def test_dot_run_names_stop_before_placing_the_run(name, tmp_path):
    assert config_error([f"run_name={name}", f"runs_root={tmp_path}"]).startswith(f"run_name={name!r} is not allowed")


# ---------------------------------------------------------------------------------------------------- 2. run_dir
def test_run_dir_other_than_runs_root_run_name_is_refused(tmp_path):
    msg = config_error([f"runs_root={tmp_path}", f"run_dir={tmp_path / 'elsewhere'}"])
    assert f"run_dir='{tmp_path / 'elsewhere'}' is not runs_root/run_name" in msg
    assert "runs_root=" in msg and "run_name=" in msg


def test_run_dir_equal_to_runs_root_run_name_is_accepted(tmp_path):
    conf = to_config(compose([f"runs_root={tmp_path}", "run_name=r1", f"run_dir={tmp_path}/r1"]))
    validate(conf, STAGE_NAMES)
    assert place_run(conf) == tmp_path / "r1"


def test_prepare_only_still_writes_the_run_folder(tmp_path):
    proc = run_launch([f"runs_root={tmp_path}", "run_name=prep", "prepare_only=true", "recipe=eval"], cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "prep" / "config.yaml").is_file()
    assert proc.stdout.startswith("# plan\n") and "memory" in proc.stdout  # the plan comes first (launch/plan.py)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prep"], "Hydra must write no outputs/ nor .hydra/"


def _without_root_override() -> list[str]:
    """A prefix that runs a command as this user without root's permission override (CAP_DAC_OVERRIDE), so that a
    read-only folder refuses it as it would refuse any user; [] when not root."""
    if os.geteuid() != 0:
        return []
    if not shutil.which("setpriv"):
        pytest.skip("running as root without setpriv: a read-only folder cannot refuse root here")
    return ["setpriv", "--bounding-set=-dac_override", "--inh-caps=-dac_override"]


@pytest.mark.parametrize("existing", [False, True], ids=["new-run", "existing-run-folder"])
def test_a_read_only_runs_root_is_one_line_and_exit_2(tmp_path, existing):
    runs = tmp_path / "ro"
    (runs / "prep" if existing else runs).mkdir(parents=True)
    (runs / "prep" if existing else runs).chmod(0o555)
    proc = subprocess.run(
        [
            *_without_root_override(),
            sys.executable,
            str(REPO / "launch.py"),
            f"runs_root={runs}",
            "run_name=prep",
            "prepare_only=true",
            "recipe=eval",
        ],
        cwd=tmp_path,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert one_error_line(proc) == (
        f"runs_root='{runs}': cannot write the run folder {runs / 'prep'} (Permission "
        "denied); set runs_root=<a folder you can write>"
    )
    assert sorted(p.name for p in runs.iterdir()) == (["prep"] if existing else [])


def test_a_runs_root_under_a_file_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "file").write_text("x")
    proc = run_launch(
        [f"runs_root={tmp_path / 'file' / 'runs'}", "run_name=prep", "prepare_only=true", "recipe=eval"], cwd=tmp_path
    )
    assert one_error_line(proc).endswith(
        f"cannot write the run folder {tmp_path / 'file' / 'runs' / 'prep'} (Not a "
        "directory); set runs_root=<a folder you can write>"
    )


# ------------------------------------------------------------------------------------------ 3. model.path ignored
def test_model_path_with_a_packaged_model_is_refused():
    msg = config_error(["model.path=/somewhere"])
    assert msg.startswith("model.path='/somewhere' is only read with model.source=hf")
    assert "model=local model.path=/somewhere" in msg


# ------------------------------------------------------------------------------------------------- 4. text files
def test_non_utf8_text_file_names_the_byte(tmp_path):
    bad = tmp_path / "a.txt"
    bad.write_bytes(b"x" * 1234 + b"\xff rest\n")
    msg = config_error(["data=text", f"data.paths=[{bad}]", "recipe=eval"])
    assert msg.startswith(f"data.paths: '{bad}' is not UTF-8 text (byte 1234: 0xff); ")


def test_cp1250_text_is_refused(tmp_path):
    bad = tmp_path / "pl.txt"
    bad.write_bytes("Zażółć gęślą jaźń\n".encode("cp1250"))
    assert "is not UTF-8 text (byte 2: 0xbf)" in config_error(["data=text", f"data.paths=[{bad}]", "recipe=eval"])


def test_the_offset_is_exact_across_read_chunks(tmp_path, monkeypatch):
    monkeypatch.setattr(splits, "CHUNK_BYTES", 16)
    f = tmp_path / "t.txt"
    f.write_bytes(b"a" * 15 + "ż".encode() + b"b" * 20 + b"\xfe")  # ż straddles the first chunk boundary
    assert utf8_error(f) == (37, 0xFE)
    f.write_bytes(b"abc" + "ż".encode()[:1])  # a character cut off at the end of the file
    assert utf8_error(f) == (3, 0xC5)
    f.write_bytes(("zażółć " * 10).encode())
    assert utf8_error(f) is None


def test_jsonl_lines_must_be_objects_with_the_text_field(tmp_path):
    f = tmp_path / "d.jsonl"
    f.write_text('{"text": "one"}\n\n{"body": "two"}\n', encoding="utf-8")
    msg = config_error(["data=jsonl", f"data.paths=[{f}]", "recipe=eval"])
    assert msg.startswith(f"data.paths: '{f}' line 3 is not a JSON object with key data.text_field='text'")
    f.write_text('{"text": "one"}\nnot json\n', encoding="utf-8")
    assert f"'{f}' line 2 is not a JSON object" in config_error(["data=jsonl", f"data.paths=[{f}]", "recipe=eval"])
    f.write_bytes(b'{"text": "caf\xe9"}\n')
    assert f"data.paths: '{f}' is not UTF-8 text (byte 13: 0xe9)" in config_error(
        ["data=jsonl", f"data.paths=[{f}]", "recipe=eval"]
    )


def test_task_text_files_must_be_utf8(tmp_path):
    folder = tmp_path / "texts"
    (folder / "sub").mkdir(parents=True)
    (folder / "good.txt").write_text("Ala ma kota.\n", encoding="utf-8")
    (folder / "sub" / "bad.txt").write_bytes("Ala ma kota, żółwia.\n".encode("cp1250"))
    msg = config_error(["recipe=eval", "evaluate.tasks=[polish_continuation]", f"evaluate.task_text={folder}"])
    assert msg.startswith(f"evaluate.task_text: '{folder / 'sub' / 'bad.txt'}' is not UTF-8 text (byte 13: 0xbf)")


# ------------------------------------------------------------------------------------------ 5. lm-eval task names
def test_project_tasks_are_known_without_lm_evals_index():
    assert unknown_tasks(["heldout_continuation", "polish_continuation", "text_continuation"]) == {}


def test_unknown_tasks_are_refused_with_the_closest_name():
    """Builds lm-eval's own index once (~30 s on 2 cores)."""
    assert unknown_tasks(["hellaswag", "arc_easy", "hellaswagg", "zzzz_no_such_task_qqqq"]) == {
        "hellaswagg": "hellaswag",
        "zzzz_no_such_task_qqqq": None,
    }
    msg = config_error(["recipe=eval", "evaluate.tasks=[heldout_continuation,hellaswagg]"])
    assert msg.startswith("evaluate.tasks contains 'hellaswagg', which is neither a project task")
    assert "did you mean 'hellaswag'?" in msg
    conf = to_config(compose(["recipe=eval", "evaluate.tasks=[heldout_continuation,arc_easy]"]))
    validate(conf, STAGE_NAMES)


def test_tasks_are_only_checked_when_the_recipe_evaluates():
    conf = to_config(compose(["recipe=params", "evaluate.tasks=[no_such_task]"]))
    validate(conf, STAGE_NAMES)


# -------------------------------------------------------------------------------------------- 6. model folders
def _folder(path: Path, config: dict | None = None) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_type": "llama",
        "hidden_size": 8,
        "intermediate_size": 16,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "num_key_value_heads": 1,
        "vocab_size": 32,
        "max_position_embeddings": 64,
    }
    (path / "config.json").write_text(json.dumps(config or cfg))
    return path


def _weights(path: Path, **tensors) -> Path:
    save_file({k: np.ones(v, dtype=np.float32) for k, v in tensors.items()}, str(path))
    return path


def test_complete_folders_pass(tmp_path):
    one = _folder(tmp_path / "one")
    _weights(one / "model.safetensors", a=(4, 8), b=(3,))
    assert check_model_folder(one)["model_type"] == "llama"
    sharded = _folder(tmp_path / "sharded")
    _weights(sharded / "model-00001-of-00002.safetensors", a=(4, 8))
    _weights(sharded / "model-00002-of-00002.safetensors", b=(3,))
    (sharded / "model.safetensors.index.json").write_text(
        json.dumps(
            {
                "metadata": {},
                "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
            }
        )
    )
    check_model_folder(sharded)


def test_real_save_pretrained_folder_passes(tiny_llama_dir):
    assert check_model_folder(tiny_llama_dir)["model_type"] == "llama"


def test_folder_without_weights_is_refused(tmp_path):
    folder = _folder(tmp_path / "m")
    with pytest.raises(
        ConfigError,
        match=r"model.path='.*/m' has no weights: expected model.safetensors or "
        r"model.safetensors.index.json",
    ):
        check_model_folder(folder)
    assert "has no weights" in config_error(["model=local", f"model.path={folder}"])


def test_truncated_weights_are_refused_with_the_sizes(tmp_path):
    folder = _folder(tmp_path / "m")
    w = _weights(folder / "model.safetensors", a=(4, 8))
    size = w.stat().st_size
    w.write_bytes(w.read_bytes()[:-10])
    header = int.from_bytes(w.read_bytes()[:8], "little")
    msg = config_error(["model=local", f"model.path={folder}"])
    assert msg == (
        f"model.path: '{w}' is truncated: {size - 10} bytes, but its header describes {size} "
        f"(8 + {header} header + 128 tensor data); copy or download it again"
    )
    w.write_bytes(b"\x05\x00")
    with pytest.raises(ConfigError, match=r"is truncated: 2 bytes, less than the 8-byte length"):
        check_model_folder(folder)
    w.write_bytes((100).to_bytes(8, "little") + b"{}")
    with pytest.raises(ConfigError, match=r"10 bytes, but its first 8 bytes announce a 100-byte header"):
        check_model_folder(folder)


def test_missing_shard_is_refused(tmp_path):
    folder = _folder(tmp_path / "m")
    _weights(folder / "model-00001-of-00002.safetensors", a=(2,))
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"}})
    )
    with pytest.raises(
        ConfigError,
        match=r"lists 1 shard\(s\) that are not in the folder: "
        r"model-00002-of-00002.safetensors",
    ):
        check_model_folder(folder)


def test_corrupt_config_json_and_unknown_model_type_are_config_errors(tmp_path):
    folder = _folder(tmp_path / "m")
    _weights(folder / "model.safetensors", a=(2,))
    (folder / "config.json").write_text('{"model_type": "llama",')
    assert "config.json is not valid JSON" in config_error(["model=local", f"model.path={folder}"])
    (folder / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    with pytest.raises(
        ConfigError,
        match=r"model_type in config.json='gpt2' is not a supported architecture; "
        r"supported: llama, mistral, qwen2, qwen3",
    ):
        check_model_folder(folder)


def test_model_stage_checks_the_folder_again(tmp_path, tiny_llama_dir):
    """A folder that was complete at launch and truncated since is refused by the model stage itself."""
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama_dir, folder)
    conf = to_config(
        compose(["recipe=eval", "model=local", f"model.path={folder}", f"runs_root={tmp_path / 'runs'}", "run_name=r"])
    )
    validate(conf, STAGE_NAMES)
    place_run(conf)
    run_dir = write_run_dir(conf)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:-1])
    with pytest.raises(ConfigError, match=rf"model.path: '{weights}' is truncated"):
        run_stage("model", run_dir / "config.yaml")
    with pytest.raises(ConfigError, match="is truncated"):
        materialize(conf.model, tmp_path / "cache")


# ------------------------------------------------------------------------------------- 7. relative model paths
@pytest.mark.parametrize("path", ["models/a/b", "a/b/c", "org/na me", "org/name@main"])
def test_missing_path_that_is_no_hub_id_is_refused(path):
    with pytest.raises(ConfigError, match=r"does not exist \(and is not a Hugging Face Hub id like org/name\)"):
        ModelConfig(name="local", path=path)
    assert config_error(["model=local", f"model.path='{path}'"]) == (
        f"model.path={path!r} does not exist (and is not a Hugging Face Hub id like org/name); give an existing "
        "local folder or a Hub id"
    )


def test_dot_relative_missing_path_is_a_missing_folder():
    assert config_error(["model=local", "model.path=./models/x"]) == (
        "model.path='./models/x' does not exist (a local Hugging Face folder was expected)"
    )


def test_hub_ids_and_existing_relative_folders_are_accepted(tmp_path, monkeypatch):
    assert hub_id_like("speakleash/Bielik-11B-v3.0-Instruct") and hub_id_like("gpt2")
    assert not hub_id_like("models/a/b") and not hub_id_like("../x") and not hub_id_like("")
    assert not ModelConfig(name="b", path="speakleash/Bielik-11B-v3.0-Instruct").is_local()
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models" / "a" / "b").mkdir(parents=True)
    assert ModelConfig(name="local", path="models/a/b").is_local()


# A Hub id that is not a folder: it must be in the local cache, or (HF_HUB_OFFLINE unset) on the Hub. The Hub is a
# service that cannot run here: a fake of its model-info endpoint on 127.0.0.1 answers as huggingface.co does.
HUB_REPRO = ["model=local", "model.path=nosuch/rel_model", "recipe=eval", "dryrun=true"]


def _hub_env(tmp_path, **extra) -> dict:
    """An empty Hugging Face cache and no stored token (tmp_path), HF_HUB_OFFLINE=1 unless `extra` says otherwise."""
    return {"HF_HOME": str(tmp_path / "hf"), "HF_HUB_CACHE": str(tmp_path / "hf" / "hub"), "HF_TOKEN": "", **extra}


def test_a_hub_id_missing_from_the_offline_cache_is_refused(tmp_path):
    proc = run_launch(HUB_REPRO, cwd=tmp_path, env=_hub_env(tmp_path), timeout=300)
    assert one_error_line(proc) == (
        f"model.path='nosuch/rel_model' is neither a folder (no {tmp_path}/nosuch/rel_model) nor a Hub model in the "
        f"local cache ({tmp_path}/hf/hub), and HF_HUB_OFFLINE is set, so the model stage cannot download it; give an "
        "existing folder, or download it first (hf download nosuch/rel_model)"
    )


def test_a_hub_id_in_the_cache_is_what_the_model_stage_loads_offline(tmp_path, tiny_llama_dir):
    """The cache as huggingface_hub lays it out (refs/main -> snapshots/<commit>/): the launcher accepts it, and the
    model stage's own snapshot_download finds the same folder offline."""
    repo = tmp_path / "hf" / "hub" / "models--someorg--tiny"
    commit = "0123456789abcdef0123456789abcdef01234567"
    shutil.copytree(tiny_llama_dir, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    args = ["model=local", "model.path=someorg/tiny", "recipe=eval", "dryrun=true"]
    proc = run_launch(args, cwd=tmp_path, env=_hub_env(tmp_path), timeout=300)
    assert proc.returncode == 0, proc.stderr
    code = (
        "from compactlm.model.schema import ModelConfig; from compactlm.model.loading import materialize; "
        "print(materialize(ModelConfig(name='local', path='someorg/tiny'), '.'))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **_hub_env(tmp_path, HF_HUB_OFFLINE="1")},
    )
    assert out.stdout.strip() == str(repo / "snapshots" / commit), out.stderr[-2000:]


class _FakeHub(BaseHTTPRequestHandler):
    """GET /api/models/<org>/<name>[/revision/<rev>] as huggingface.co answers it: 200 with the model's info for
    someorg/exists at main, 404 with X-Error-Code RepoNotFound or RevisionNotFound otherwise."""

    def do_GET(self):
        parts = self.path.split("?")[0].split("/")[3:]  # ['', 'api', 'models', org, name, ...]
        repo, rev = "/".join(parts[:2]), parts[3] if len(parts) > 3 else "main"
        if repo == "someorg/exists" and rev == "main":
            body, status, code = json.dumps({"id": repo, "sha": "0" * 40}).encode(), 200, None
        else:
            body, status = b"{}", 404
            code = "RevisionNotFound" if repo == "someorg/exists" else "RepoNotFound"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if code:
            self.send_header("X-Error-Code", code)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _FakeHub)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_online_the_hub_is_asked_and_a_missing_model_or_revision_is_refused(tmp_path, fake_hub):
    online = _hub_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=fake_hub)
    proc = run_launch(HUB_REPRO, cwd=tmp_path, env=online, timeout=300)
    assert one_error_line(proc) == (
        f"model.path='nosuch/rel_model' is neither a folder (no {tmp_path}/nosuch/rel_model) nor a model on the "
        "Hugging Face Hub (repository not found; a private one needs hf auth login); give an existing folder or a "
        "Hub id like org/name"
    )
    exists = ["model=local", "model.path=someorg/exists", "recipe=eval", "dryrun=true"]
    assert run_launch(exists, cwd=tmp_path, env=online, timeout=300).returncode == 0
    proc = run_launch([*exists, "model.revision=v9"], cwd=tmp_path, env=online, timeout=300)
    assert one_error_line(proc) == (
        "model.revision='v9' is not a branch, tag or commit of someorg/exists on the Hugging Face Hub"
    )


def test_online_an_unreachable_hub_is_one_line(tmp_path, fake_hub):
    closed = fake_hub.rsplit(":", 1)[0] + ":9"  # a port nothing listens on: the connection is refused
    proc = run_launch(
        HUB_REPRO, cwd=tmp_path, env=_hub_env(tmp_path, HF_HUB_OFFLINE="0", HF_ENDPOINT=closed), timeout=300
    )
    assert one_error_line(proc).startswith(
        f"model.path='nosuch/rel_model' is neither a folder (no {tmp_path}/nosuch/rel_model) nor a Hub model in the "
        f"local cache ({tmp_path}/hf/hub), and the Hub cannot be reached from here (ConnectError: "
    )


# --------------------------------------------------------------------------------- 8. learning rate, seq_len
@pytest.mark.parametrize("lr", ["-1", "0"])
def test_distill_lr_must_be_positive(lr):
    assert (
        config_error([f"distill.lr={lr}"]) == f"distill.lr={float(lr)} must be > 0 (the peak learning rate, e.g. 3e-4)"
    )


def test_min_lr_is_still_checked_against_lr():
    assert config_error(["distill.lr=1e-4", "distill.min_lr=1e-3"]).startswith("distill.min_lr=0.001 must be between 0")


def test_seq_len_above_the_models_context_is_refused(tiny_llama_dir):
    assert config_error(["data.seq_len=9000"]) == (
        "data.seq_len=9000 exceeds the model's max_position_embeddings=8192 (smollm2_135m); use data.seq_len<=8192"
    )
    assert config_error(["model=bielik_11b_v3", "prune=exp_010", "data.seq_len=40000"]).startswith(
        "data.seq_len=40000 exceeds the model's max_position_embeddings=32768 (bielik_11b_v3)"
    )
    assert config_error(
        ["model=local", f"model.path={tiny_llama_dir}", "prune.model=null", "data.seq_len=512"]
    ).startswith("data.seq_len=512 exceeds the model's max_position_embeddings=256 (local)")
    validate(to_config(compose(["data.seq_len=8192"])), STAGE_NAMES)


# ---------------------------------------------------------------------------------------- 9. the command line
COMPOSE_ERRORS = [
    (["distil.lr=1"], "unknown key 'distil.lr'; did you mean 'distill.lr'?"),
    (["distill.lrr=1"], "unknown key 'distill.lrr'; did you mean 'distill.lr'?"),
    (["modell=local"], "unknown key 'modell'; did you mean 'model'?"),
    (["+distil.lr=1"], "unknown key 'distil.lr'; did you mean 'distill.lr'?"),
    (["++distil.lr=1"], "unknown key 'distil.lr'; did you mean 'distill.lr'?"),
    (["data.seq_len=abc"], "data.seq_len=abc is not allowed: data.seq_len must be an integer"),
    (["seed=1.5"], "seed=1.5 is not allowed: seed must be an integer"),
    (["dryrun=maybe", "dryrun=true"], "dryrun=maybe is not allowed: dryrun must be true or false"),
    (["model=gpt5"], "model=gpt5: Could not find 'model/gpt5'; choose one of: bielik_11b_v3, local, smollm2_135m"),
    (["foo==1"], "cannot parse 'foo==1': extraneous input '='"),
    (["distill.lr"], "cannot parse 'distill.lr': missing EQUAL"),
    (["+distill.lr=3"], "+distill.lr=3: distill.lr already exists, so it cannot be added; set it with distill.lr=3"),
    (["distill.lr=1,2"], "distill.lr=1,2: ambiguous value"),
    (["cluster.env.FOO=1"], "cluster.env.FOO: cluster.env has no key 'FOO' yet; add it with +cluster.env.FOO=1"),
]


@pytest.mark.parametrize("overrides,start", COMPOSE_ERRORS, ids=[" ".join(o) for o, _ in COMPOSE_ERRORS])
def test_composition_errors_are_one_line_naming_the_key(overrides, start):
    with pytest.raises(ConfigError) as e:
        compose(overrides)
    assert str(e.value).startswith(start) and "\n" not in str(e.value)


def test_keys_of_a_mapping_can_still_be_added():
    conf = to_config(compose(["+cluster.env.FOO=1", "+cluster.stage_nodes.distill=1"]))
    assert conf.cluster.env == {"FOO": "1"} and conf.cluster.stage_nodes == {"distill": 1}


def test_schema_keys_walk_every_dataclass():
    keys = schema_keys()
    assert {"distill.lr", "model.shape.max_position_embeddings", "cluster.slurm.account", "run_name"} <= set(keys)


CLI_ERRORS = [
    (["distil.lr=1"], "unknown key 'distil.lr'; did you mean 'distill.lr'?"),
    (["data.seq_len=abc"], "data.seq_len=abc is not allowed: data.seq_len must be an integer"),
    (["seed=1.5"], "seed=1.5 is not allowed: seed must be an integer"),
    ([f"run_name={'r' * 300}"], "is 300 characters long; a run name is a folder name of at most 100 characters"),
    (["run_name=.."], "run_name='..' is not allowed"),
    (["--cfg", "job"], "unknown option '--cfg'"),
]


@pytest.mark.parametrize("args,needle", CLI_ERRORS, ids=[a[0][:30] for a, _ in CLI_ERRORS])
def test_cli_bad_input_is_one_line_and_exit_code_2(args, needle, tmp_path):
    proc = run_launch([*args, "dryrun=true", f"runs_root={tmp_path / 'runs'}"], cwd=tmp_path, timeout=300)
    assert needle in one_error_line(proc)
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid command line"


def test_cli_help_prints_the_configs_help_text(tmp_path):
    proc = run_launch(["--help"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    assert out.startswith("compactlm: Minitron pruning, logit distillation")
    assert "== Configuration groups ==" in out and "model: base_model, bielik_11b_v3, local, smollm2_135m" in out
    assert "== Config ==" in out and "run_dir: ${runs_root}/${run_name}" in out
    assert out.rstrip().endswith("Precedence: schema < group YAML < recipe < command line. See README.md.")
    assert not any(tmp_path.iterdir())
    assert help_text(["model=bielik_11b_v3"]).count("name: bielik_11b_v3") == 1


def test_cli_run_operations_still_dispatch(tmp_path):
    proc = run_launch(["list", f"runs_root={tmp_path}"], cwd=tmp_path, timeout=300)
    assert proc.returncode == 0 and f"no runs under {tmp_path}" in proc.stdout.lower(), proc.stderr


@pytest.mark.parametrize("op", ["status", "logs", "cancel"])
def test_run_operations_take_only_safe_run_names(tmp_path, op):
    extra = ["stage=model"] if op == "logs" else []
    r = run_launch([op, "run_name=../runs/x", f"runs_root={tmp_path}", *extra])
    assert r.returncode == 2, r.stdout + r.stderr
    assert "run_name='../runs/x'" in r.stderr and "Traceback" not in r.stderr
