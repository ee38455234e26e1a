"""How a config value reaches a shell script: ONE quoting function (`shell_quote`) for every value compactlm renders
into the scripts a cluster runs (the Slurm sbatch script, DGX Cloud's and Lepton's launch scripts), and, before
anything is written or submitted, one-line refusals of the values that no quoting can carry
(`check_shell_values`).

What cannot be carried, and why (NeMo-Run 0.11.1, Slurm, pyxis):
- folders NeMo-Run pastes unquoted into its OWN shell commands: the local run folder (its records and job folders:
  `tar`, `mkdir`, `sbatch <script>` through invoke), `cluster.slurm.job_dir` (the same over SSH),
  `cluster.dgxc.pvc_nemo_run_dir` and `cluster.lepton.nemo_run_dir` (the data-mover's `rm -rf` / `mkdir`, inside
  quotes NeMo-Run adds itself). They must be plain paths (FOLDER_CHARS); they also hold no `%` (a Slurm
  --output pattern) and no `/nemo_run` (which NeMo-Run rewrites in container-less sbatch scripts);
- `#SBATCH` values (account, partition, qos, constraint, mem): NeMo-Run quotes them with shlex.quote, and sbatch
  reads such quoting, but a newline ends the directive (the rest would run as shell code) and sbatch takes a
  backslash as an escape even inside quotes;
- pyxis lists: `--container-mounts` is split at commas (and each mount at colons), an image reference has no newline;
- environment variable NAMES: identifiers only; NeMo-Run's Slurm and DGX Cloud scripts export them in upper case.
Everything else (environment values, srun arguments, images, mounts, cluster.runs_root, cache_dir, input paths) is
carried exactly, as one word, whatever it contains: spaces, `$()`, backticks, `;`, quotes, newlines, unicode.
`cluster.slurm.setup_lines` are shell code by design and pasted as written.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from compactlm.config import ConfigError
from compactlm.launch.resources import input_folders, stage_image
from compactlm.pipeline import run_tasks
from compactlm.run_config import CompactLMConfig

# A folder NeMo-Run pastes into its own commands: nothing a shell, sbatch's --output or pyxis would read differently.
FOLDER_CHARS = re.compile(r"[A-Za-z0-9_./+@=-]+")
FOLDER_RULE = "letters, digits and _ . / + @ = - only"
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
SBATCH_KEYS = ("account", "partition", "qos", "constraint", "mem")


def shell_quote(value: str) -> str:
    """`value` as exactly one word of a bash/sh script, whatever it contains (`shlex.quote`: single quotes, or the
    bare value when it holds only characters no shell reads specially). The one quoting function of compactlm's
    shell scripts."""
    return shlex.quote(value)


def check_env_name(key: str, executor: str) -> None:
    """`cluster.env.<key>`: an identifier, in upper case where NeMo-Run upper-cases it (Slurm, DGX Cloud)."""
    if not ENV_NAME.fullmatch(key):
        shown = key if key.isprintable() else repr(key)[1:-1]  # the message stays one line
        raise ConfigError(
            f"cluster.env.{shown}={key!r} is not an environment variable name: use letters, digits "
            "and _, not starting with a digit"
        )
    if executor in ("slurm", "dgxc") and key != key.upper():
        raise ConfigError(
            f"cluster.env.{key}: NeMo-Run's {executor} job script exports it as {key.upper()}; "
            f"write the name in upper case (+cluster.env.{key.upper()}=...)"
        )


def check_folder(key: str, path: str) -> None:
    """A folder NeMo-Run pastes into its own shell commands and sbatch scripts (see the module docstring)."""
    if not FOLDER_CHARS.fullmatch(path):
        bad = next((c for c in path if not FOLDER_CHARS.fullmatch(c)), path[:1])
        raise ConfigError(
            f"{key}={path!r} has {bad!r}: NeMo-Run writes this folder unquoted into its own shell "
            f"commands (packaging, sbatch, the data mover); use {FOLDER_RULE}"
        )


def check_not_rewritten(key: str, path: str) -> None:
    """A Slurm job folder: NeMo-Run replaces every '/nemo_run' of a container-less sbatch script by the job folder."""
    if "/nemo_run" in path:
        raise ConfigError(
            f"{key}={path!r} contains '/nemo_run', which NeMo-Run rewrites to the job folder in "
            "container-less sbatch scripts, corrupting this path; rename the folder"
        )


def check_no(key: str, value: str, chars: str, why: str) -> None:
    """Refuse `value` (of `key`) when it holds one of `chars`."""
    bad = next((c for c in chars if c in value), None)
    if bad is not None:
        raise ConfigError(f"{key}={value!r} contains {bad!r}, which {why}")


def check_shell_values(conf: CompactLMConfig, local_dir: Path) -> None:
    """Before anything is written or submitted: every value that reaches a cluster's scripts can be carried there
    (`local_dir`: the run folder on this machine, as `launch.place_run` returned it)."""
    c = conf.cluster
    for key in c.env:
        check_env_name(key, c.executor)
    if c.executor == "local":
        return  # the stages run as argument lists on this machine, through no script
    check_folder("runs_root", str(Path(local_dir).parent))  # NeMo-Run's records and job folders live under it
    if c.executor == "dgxc":
        check_folder("cluster.dgxc.pvc_nemo_run_dir", c.dgxc.pvc_nemo_run_dir)
    elif c.executor == "lepton":
        check_folder("cluster.lepton.nemo_run_dir", c.lepton.nemo_run_dir)
    elif c.executor == "slurm":
        _check_slurm(conf, local_dir)


def _check_slurm(conf: CompactLMConfig, local_dir: Path) -> None:
    c, s = conf.cluster, conf.cluster.slurm
    check_not_rewritten("runs_root", str(local_dir))  # the job folders are <run>/nemorun/experiments/<run_name>/...
    if s.job_dir:
        check_folder("cluster.slurm.job_dir", s.job_dir)
        check_not_rewritten("cluster.slurm.job_dir", f"{s.job_dir}/{conf.run_name}")  # ... or <job_dir>/<run_name>/...
    for key in SBATCH_KEYS:
        value = getattr(s, key)
        if value is not None:
            check_no(
                f"cluster.slurm.{key}",
                str(value),
                "\n\r\\",
                "an #SBATCH line cannot carry (a newline ends it, sbatch reads a backslash as an escape)",
            )
    for key in ("container_image", "deploy_image"):
        if getattr(c, key):
            check_no(f"cluster.{key}", getattr(c, key), "\n\r", "a container image reference cannot hold")
    if not any(stage_image(conf, task) for task in run_tasks(conf)):
        return
    pyxis = "pyxis's --container-mounts cannot carry (it splits the list at commas)"
    for i, mount in enumerate(c.container_mounts):
        check_no(f"cluster.container_mounts.{i}", mount, ",\n\r", pyxis)
    mounted = [
        (("cluster.runs_root" if c.runs_root else "runs_root"), str(Path(conf.run_dir).parent)),
        (("cluster.cache_dir" if c.cache_dir else "cache_dir"), conf.cache_dir),
    ]
    mounted += [("model.path, data.paths or evaluate.task_text", p) for p in input_folders(conf)]
    for key, path in mounted:
        check_no(
            key,
            path,
            ",:\n\r",
            "the automatic pyxis mount <folder>:<folder> cannot carry (pyxis splits mounts at commas and colons)",
        )
