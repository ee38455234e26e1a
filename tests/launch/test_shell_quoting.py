"""Every value compactlm renders into a cluster's shell scripts arrives as itself, or is refused with one line.

Each executor's scripts (the Slurm sbatch script with and without a container, DGX Cloud's launch_script.sh and
torchrun_job.sh, Lepton's launch_script.sh) are rendered with every string field that reaches them set to a hostile
value, then run by bash in a temporary folder whose PATH starts with stubs of srun, scontrol, sbatch, torchrun,
python, bash, ln, mkdir and tee that record their arguments (NUL-separated) and the environment they see. Nothing
but those commands may run (no PWNED file appears), and each hostile value must reach them as exactly one argument
or one environment value.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from helpers import compose, run_launch

from compactlm.config import ConfigError
from compactlm.launch.executors import render_submission
from compactlm.launch.launcher import place_run
from compactlm.launch.shell import check_shell_values, shell_quote
from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES

# a space, command substitution both ways, a command separator, both quotes and non-ASCII letters
HOSTILE = "a b$(touch PWNED)`touch PWNED2`;touch PWNED3 'q' \"dq\" ünï"
# where a newline can be carried; with what NeMo-Run's $-macro substitution of env_vars would change ($$ -> $)
HOSTILE_NL = HOSTILE + "\n$(touch PWNED4) $$ ${head_node_ip_var} line 2"
STUBS = ("srun", "scontrol", "sbatch", "torchrun", "python", "bash", "ln", "mkdir", "tee")
RECORDED_ENV = ("FOO", "COMPACTLM_NO_REQUEUE", "PYTHONPATH")
# the stub: argv and a few environment values, each list NUL-separated, in a new file per call
STUB = """#!/bin/sh
f=$(mktemp "$RECORD/{name}.XXXXXX")
printf '%s\\0' "$@" > "$f"
printf '%s\\0' "${{FOO-<unset>}}" "${{COMPACTLM_NO_REQUEUE-<unset>}}" "${{PYTHONPATH-<unset>}}" > "$f.env"
{extra}
exit 0
"""
STUB_EXTRA = {"scontrol": "echo node1", "tee": "cat > /dev/null"}

SLURM_SSH = [
    "recipe=eval",
    "cluster=slurm",
    "cluster.slurm.account=a",
    "cluster.slurm.tunnel=ssh",
    "cluster.slurm.host=h",
    "cluster.slurm.job_dir=/j",
    "cluster.runs_root=/lustre/runs",
    "cluster.cache_dir=/lustre/cache",
    "run_name=hostile",
    "data=text",
    "data.paths=[/data/x/*.txt]",
]
DGXC = [
    "recipe=eval",
    "cluster=dgxc",
    "cluster.dgxc.base_url=https://t.run.ai/api/v1",
    "cluster.dgxc.project_name=p",
    "cluster.dgxc.pvcs.0.claim_name=ws",
    "cluster.container_image=nvcr.io/a/b:1",
    "run_name=hostile",
]
LEPTON = [
    "recipe=eval",
    "cluster=dgx_h200",
    "cluster.lepton.node_group=g",
    "cluster.container_image=nvcr.io/a/b:1",
    "run_name=hostile",
]


def _placed(overrides: list[str], tmp_path: Path, runs: str = "runs", **fields):
    """The placed, checked config: `overrides` composed, then `fields` (dotted names) set to values Hydra's
    override grammar could not carry."""
    conf = to_config(compose([*overrides, f"runs_root='{tmp_path / runs}'"]))
    for dotted, value in fields.items():
        *path, name = dotted.split(".")
        obj = conf
        for part in path:
            obj = getattr(obj, part)
        setattr(obj, name, value)
    validate(conf, STAGE_NAMES)
    local_dir = place_run(conf)
    check_shell_values(conf, local_dir)
    return conf, local_dir


def _run_script(text: str, tmp_path: Path, name: str) -> list[tuple[str, list[str], list[str]]]:
    """Run `text` with bash in a fresh folder under `tmp_path`; returns the stubs' calls (name, argv, env values)."""
    work = tmp_path / f"run-{name}"
    stubs, record = work / "bin", work / "record"
    stubs.mkdir(parents=True)
    record.mkdir()
    for stub in STUBS:
        (stubs / stub).write_text(STUB.format(name=stub, extra=STUB_EXTRA.get(stub, "")))
        (stubs / stub).chmod(0o755)
    (work / "script.sh").write_text(text)
    env = {
        "PATH": f"{stubs}:/usr/bin:/bin",
        "RECORD": str(record),
        "HOME": str(work),
        "SLURM_JOB_NODELIST": "node1",
        "SLURM_JOB_ID": "7",
        "SLURM_NODEID": "0",
        "HOSTNAME": "pod-0",
        "LEPTON_JOB_NAME": "j",
        "LEPTON_WORKSPACE_ID": "w",
        "LEPTON_JOB_WORKER_INDEX": "0",
    }
    r = subprocess.run(
        ["/bin/bash", str(work / "script.sh")], cwd=work, env=env, capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stdout + r.stderr
    pwned = sorted(p.name for p in work.rglob("PWNED*"))
    assert not pwned, f"the script ran injected commands ({pwned}):\n{r.stderr[-2000:]}"
    calls = []
    for f in sorted(record.glob("*.??????")):
        argv = f.read_text().split("\0")[:-1]
        env_values = Path(f"{f}.env").read_text().split("\0")[:-1]
        calls.append((f.name.split(".")[0], argv, env_values))
    return calls


def _stage_srun(calls) -> tuple[list[str], dict[str, str]]:
    """The srun call that runs the stage (not the head-node address look-up)."""
    runs = [
        (argv, dict(zip(RECORDED_ENV, env)))
        for name, argv, env in calls
        if name == "srun" and "--kill-on-bad-exit=1" in argv
    ]
    assert len(runs) == 1, calls
    return runs[0]


def _after(argv: list[str], flag: str) -> str:
    return argv[argv.index(flag) + 1]


def _sbatch_value(text: str, key: str) -> str:
    """The value of `#SBATCH --key=...` as sbatch reads it (single and double quotes as in the shell)."""
    line = next(ln for ln in text.splitlines() if ln.startswith(f"#SBATCH --{key}="))
    words = shlex.split(line[len("#SBATCH ") :])
    assert len(words) == 1, line
    return words[0][len(f"--{key}=") :]


# -------------------------------------------------------------------------------------------------------- Slurm
SLURM_HOSTILE = {
    "cluster.env": {"FOO": HOSTILE_NL},
    "cluster.container_image": HOSTILE,
    "cluster.container_mounts": [f"/src/{HOSTILE}:/dst/{HOSTILE}"],
    "cluster.slurm.srun_args": [f"--comment={HOSTILE}", HOSTILE_NL],
    "cluster.runs_root": f"/lustre/{HOSTILE}",
    "cluster.cache_dir": f"/cache/{HOSTILE}",
    "data.paths": [f"/data/{HOSTILE}/*.txt"],
    **{f"cluster.slurm.{k}": HOSTILE for k in ("account", "partition", "qos", "constraint", "mem")},
}


def test_slurm_scripts_carry_hostile_values_as_single_words(tmp_path):
    conf, _ = _placed(SLURM_SSH, tmp_path, **SLURM_HOSTILE)
    scripts = dict(render_submission(conf, tmp_path / "runs" / "hostile"))
    assert set(scripts) == {"model", "data", "evaluate"}
    for stage, text in scripts.items():
        for key in ("account", "partition", "qos", "constraint", "mem"):
            assert _sbatch_value(text, key) == HOSTILE, (stage, key)
        argv, env = _stage_srun(_run_script(text, tmp_path, stage))
        assert _after(argv, "--container-image") == HOSTILE
        mounts = _after(argv, "--container-mounts").split(",")
        for mount in (
            f"/src/{HOSTILE}:/dst/{HOSTILE}",
            f"/lustre/{HOSTILE}:/lustre/{HOSTILE}",
            f"/cache/{HOSTILE}:/cache/{HOSTILE}",
            f"/data/{HOSTILE}:/data/{HOSTILE}",
        ):
            assert mount in mounts, (stage, mounts)
        assert f"--comment={HOSTILE}" in argv and HOSTILE_NL in argv
        assert env["FOO"] == HOSTILE_NL
        assert env["COMPACTLM_NO_REQUEUE"] == f"/lustre/{HOSTILE}/hostile/{stage}/config_error.txt"
        assert argv[-4:] == ["-m", "compactlm.run", stage, "config=config.yaml"]


def test_slurm_scripts_without_a_container_carry_hostile_values(tmp_path):
    hostile = {
        k: v for k, v in SLURM_HOSTILE.items() if k not in ("cluster.container_image", "cluster.container_mounts")
    }
    conf, _ = _placed(SLURM_SSH, tmp_path, **hostile)
    text = dict(render_submission(conf, tmp_path / "runs" / "hostile"))["evaluate"]
    argv, env = _stage_srun(_run_script(text, tmp_path, "evaluate"))
    assert "--container-image" not in argv
    assert f"--comment={HOSTILE}" in argv and HOSTILE_NL in argv and env["FOO"] == HOSTILE_NL
    job_folder = _after(argv, "--chdir").removesuffix("/code")
    assert job_folder.startswith("/j/hostile/hostile_") and env["PYTHONPATH"] == f"{job_folder}/code/src"


@pytest.mark.parametrize(
    "overrides, fields, message",
    [
        (SLURM_SSH, {"cluster.slurm.account": HOSTILE_NL}, "cluster.slurm.account="),
        (SLURM_SSH, {"cluster.slurm.partition": "p\\q"}, "cluster.slurm.partition="),
        (SLURM_SSH, {"cluster.container_image": HOSTILE_NL}, "cluster.container_image="),
        (
            SLURM_SSH,
            {"cluster.container_image": "i", "cluster.container_mounts": [f"/a:/b{chr(10)}x"]},
            "cluster.container_mounts.0=",
        ),
        (
            SLURM_SSH,
            {"cluster.container_image": "i", "cluster.container_mounts": ["/a:/a,/b:/b"]},
            "cluster.container_mounts.0=",
        ),
        (SLURM_SSH, {"cluster.container_image": "i", "cluster.runs_root": "/x:y"}, "cluster.runs_root="),
        (SLURM_SSH, {"cluster.slurm.job_dir": f"/j/{HOSTILE}"}, "cluster.slurm.job_dir="),
        (SLURM_SSH, {"cluster.slurm.job_dir": "/scratch/nemo_runs"}, "contains '/nemo_run'"),
        (SLURM_SSH, {"cluster.env": {"A-B": "1"}}, "cluster.env.A-B='A-B' is not an environment variable name"),
        (SLURM_SSH, {"cluster.env": {"A\nB": "1"}}, "cluster.env.A\\nB='A\\nB' is not an environment variable name"),
        (SLURM_SSH, {"cluster.env": {"http_proxy": "x"}}, "exports it as HTTP_PROXY"),
        (DGXC, {"cluster.dgxc.pvc_nemo_run_dir": f"/workspace/{HOSTILE}"}, "cluster.dgxc.pvc_nemo_run_dir="),
        (LEPTON, {"cluster.lepton.nemo_run_dir": f"/workspace/{HOSTILE}"}, "cluster.lepton.nemo_run_dir="),
    ],
)
def test_values_no_quoting_can_carry_are_refused_with_one_line(tmp_path, overrides, fields, message):
    with pytest.raises(ConfigError) as e:
        _placed(overrides, tmp_path, **fields)
    assert message in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_a_local_run_folder_that_needs_quoting_is_refused_for_cluster_executors(tmp_path):
    """NeMo-Run packages the code and submits through shell commands with the local run folder pasted unquoted."""
    with pytest.raises(ConfigError, match=r"^runs_root='.*' has ' ': NeMo-Run writes this folder unquoted"):
        _placed(SLURM_SSH, tmp_path, runs="my runs")


# ------------------------------------------------------------------------------------------- DGX Cloud, Lepton
def _sections(text: str) -> dict[str, str]:
    """The rendered spec's parts: 'json' (the request body), and each script by its file name."""
    parts = re.split(r"^# (/\S+/(?:launch_script|torchrun_job)\.sh)$", text, flags=re.M)
    body = parts[0][parts[0].index("\n{") + 1 :]
    out = {"json": json.loads(body)}
    for path, script in zip(parts[1::2], parts[2::2]):
        out[Path(path).name] = script.strip() + "\n"
    return out


def test_dgxc_scripts_carry_hostile_values_as_single_words(tmp_path):
    conf, local_dir = _placed(
        DGXC, tmp_path, **{"cluster.env": {"FOO": HOSTILE_NL}, "cluster.container_image": HOSTILE}
    )
    text = dict(render_submission(conf, local_dir))["evaluate"]
    parts = _sections(text)
    env = {e["name"]: e["value"] for e in parts["json"]["spec"]["environmentVariables"]}
    assert env["FOO"] == HOSTILE_NL and parts["json"]["spec"]["image"] == HOSTILE  # JSON: no shell on the way
    calls = _run_script(parts["torchrun_job.sh"], tmp_path, "torchrun_job")
    ((name, argv, env_values),) = calls
    assert name == "python" and argv == ["-m", "compactlm.run", "evaluate", "config=/nemo_run/code/config.yaml"]
    assert env_values[0] == HOSTILE_NL
    launched = {name: argv for name, argv, _ in _run_script(parts["launch_script.sh"], tmp_path, "launch")}
    pvc_job_dir = launched["ln"][1].rstrip("/")
    assert launched["bash"] == [f"{pvc_job_dir}/torchrun_job.sh"]
    assert parts["json"]["spec"]["command"] == f"/bin/bash {shell_quote(pvc_job_dir + '/launch_script.sh')}"


def test_lepton_launch_script_runs_only_the_stage_and_the_spec_carries_hostile_values(tmp_path):
    conf, local_dir = _placed(
        LEPTON, tmp_path, **{"cluster.env": {"FOO": HOSTILE_NL}, "cluster.container_image": HOSTILE}
    )
    text = dict(render_submission(conf, local_dir))["evaluate"]
    parts = _sections(text)
    env = {e["name"]: e.get("value") for e in parts["json"]["spec"]["envs"]}
    assert env["FOO"] == HOSTILE_NL and parts["json"]["spec"]["container"]["image"] == HOSTILE
    calls = {name: argv for name, argv, _ in _run_script(parts["launch_script.sh"], tmp_path, "lepton")}
    assert set(calls) == {"ln", "python"}, calls
    assert calls["python"] == ["-m", "compactlm.run", "evaluate", "config=/nemo_run/code/config.yaml"]


# ------------------------------------------------------------------------------------- the repro commands
@pytest.mark.parametrize("folder, bad", [("my runs", " "), ("$(touch x)", "$")])
def test_repro_runs_root_that_needs_quoting_is_refused_with_one_line(tmp_path, folder, bad):
    """NeMo-Run keeps its records and job folders under the run folder and pastes it unquoted into its own
    commands (packaging, sbatch): such a runs_root cannot be carried, whatever compactlm quotes."""
    r = run_launch(
        ["recipe=eval", "cluster=slurm", "cluster.slurm.account=a", f"runs_root='{tmp_path}/{folder}'", "dryrun=true"],
        cwd=tmp_path,
        timeout=120,
    )
    assert r.returncode == 2, r.stdout + r.stderr
    assert r.stderr.count("\n") == 1 and "runs_root=" in r.stderr and f"has {bad!r}" in r.stderr, r.stderr
    assert not any(tmp_path.iterdir())


def test_repro_injection_through_launch_dryrun_is_quoted(tmp_path):
    """`;touch <file>` in +cluster.env.FOO, the image, a mount and srun_args: the printed script, run by bash with
    srun stubbed, touches nothing, and srun receives each value as one argument."""
    evil = f";touch {tmp_path}/x"
    r = run_launch(
        [
            "recipe=eval",
            "cluster=slurm",
            "cluster.slurm.account=a",
            f"runs_root={tmp_path}/runs",
            f"+cluster.env.FOO='{evil}'",
            f"cluster.container_image='img{evil}'",
            f"cluster.container_mounts=['/m:/m{evil}']",
            f"cluster.slurm.srun_args=['--x{evil}']",
            "dryrun=true",
        ],
        timeout=300,
    )
    assert r.returncode == 0, r.stderr
    script = r.stdout[r.stdout.index("## evaluate\n") + len("## evaluate\n") : r.stdout.index("dryrun=true: nothing")]
    argv, env = _stage_srun(_run_script(script, tmp_path, "repro"))
    assert not (tmp_path / "x").exists()
    assert _after(argv, "--container-image") == f"img{evil}" and f"--x{evil}" in argv and env["FOO"] == evil
    assert f"/m:/m{evil}" in _after(argv, "--container-mounts").split(",")
