"""The command line of `launch.py`: compose the run's config from conf/ with Hydra's Compose API, and turn every
composition error (unknown key, wrong type, missing option, unparsable override) into ONE line naming the key.

`@hydra.main` would catch those errors itself, print several lines and exit 1, before compactlm could name the key
or suggest the closest one; composing here keeps one way out for every bad input: `compactlm: configuration error:
<message>` on stderr and exit code 2 (the launcher's own checks use the same line). Composing creates no output
folder and does not change the working directory. `python launch.py --help` prints conf/config.yaml's
`hydra.help` text as `@hydra.main` did.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import string
import sys
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Union

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.override_parser.overrides_parser import OverridesParser
from hydra.core.override_parser.types import Override
from hydra.errors import HydraException, MissingConfigException, OverrideParseException
from omegaconf import DictConfig, OmegaConf, open_dict
from omegaconf.errors import OmegaConfBaseException, ValidationError

from compactlm.config import ConfigError
from compactlm.launch.conf_store import groups, register_configs
from compactlm.launch.records import REPO
from compactlm.run_config import CompactLMConfig

CONF_DIR = REPO / "conf"
CONFIG_NAME = "config"
HELP_FLAGS = ("--help", "-h")


# ------------------------------------------------------------------------------------------------ the schema
def schema_keys(cls: type = CompactLMConfig, prefix: str = "") -> dict[str, Any]:
    """Every dotted key of the dataclass schema (`distill.lr`, `model.shape.hidden_size`) -> its annotated type."""
    out: dict[str, Any] = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, kind = prefix + f.name, hints[f.name]
        out[key] = kind
        if dataclasses.is_dataclass(kind):
            out.update(schema_keys(kind, key + "."))
    return out


def _describe(kind: Any) -> str:
    """What a value of the annotated type `kind` looks like on the command line."""
    args = [a for a in typing.get_args(kind) if a is not type(None)]
    if typing.get_origin(kind) is Union:
        return f"{_describe(args[0])} or null" if len(args) == 1 else " or ".join(_describe(a) for a in args)
    if typing.get_origin(kind) is list:
        return "a list, e.g. [a,b]"
    if typing.get_origin(kind) is dict:
        return "a mapping, e.g. {a: 1}"
    if dataclasses.is_dataclass(kind):
        return f"a group of keys ({kind.__name__}); set them one by one, e.g. <key>.<field>=..."
    names = {bool: "true or false", int: "an integer", float: "a number", str: "a string"}
    return names.get(kind, getattr(kind, "__name__", str(kind)))


def _dict_parent(key: str, keys: dict[str, Any]) -> str | None:
    """The schema key of a mapping (cluster.env) that `key` (cluster.env.FOO) lies under, if any."""
    parts = key.split(".")
    for i in range(len(parts) - 1, 0, -1):
        parent = ".".join(parts[:i])
        if parent in keys:
            return parent if typing.get_origin(keys[parent]) is dict else None
    return None


def unknown_key_message(key: str, value: str | None = None) -> str:
    """`unknown key 'distil.lr'; did you mean 'distill.lr'?` (difflib over the schema's dotted keys)."""
    keys = schema_keys()
    parent = _dict_parent(key, keys)
    if parent is not None:
        return (
            f"{key}: {parent} has no key {key[len(parent) + 1 :]!r} yet; add it with "
            f"+{key}={value if value is not None else '<value>'}"
        )
    close = difflib.get_close_matches(key, list(keys), n=1)
    hint = f"did you mean {close[0]!r}?" if close else "python launch.py --help lists every key"
    return f"unknown key {key!r}; {hint}"


# ---------------------------------------------------------------------------------------- errors -> one line
def _one_line(text: str) -> str:
    """Hydra's and OmegaConf's multi-line messages on one line, without their debugging details."""
    skip = (
        "full_key:",
        "object_type=",
        "reference_type=",
        "Set the environment variable HYDRA_FULL_ERROR",
        "Config search path",
        "provider=",
    )
    lines = [ln.strip() for ln in str(text).splitlines()]
    return "; ".join(ln for ln in lines if ln and not ln.startswith(skip))


def _raw_value(override: Override) -> str:
    return override.input_line.partition("=")[2]


def _parse(overrides: list[str]) -> list[Override]:
    """Each override parsed on its own, so that a bad one is named."""
    parser = OverridesParser.create()
    parsed = []
    for text in overrides:
        try:
            parsed.extend(parser.parse_overrides([text]))
        except OverrideParseException as e:
            detail = _one_line(e).replace(f"Error parsing override {text!r}; ", "")
            raise ConfigError(
                f"cannot parse {text!r}: {detail.split('; See https://')[0]}; write key=value (quote a "
                "value with spaces or special characters: key='a value')"
            ) from None
        if not parsed[-1].key_or_group:
            raise ConfigError(f"cannot parse {text!r}: the key is empty; write key=value")
    return parsed


def _check_added_keys(parsed: list[Override]) -> None:
    """`+key=v` / `++key=v` of a key the schema does not have would be dropped silently when the config becomes
    dataclasses; only the keys of a mapping (cluster.env, cluster.stage_nodes) can be added."""
    keys = schema_keys()
    for o in parsed:
        key = o.key_or_group
        if (
            (o.is_add() or o.is_force_add())
            and key not in keys
            and not key.startswith("hydra.")
            and _dict_parent(key, keys) is None
        ):
            raise ConfigError(unknown_key_message(key))


def composition_error(e: Exception, parsed: list[Override]) -> str:
    """One line naming the key, the value and what is allowed, for an error of `hydra.compose`."""
    cause = e.__cause__
    message = str(e)
    by_key = {o.key_or_group: o for o in parsed}
    if isinstance(e, MissingConfigException):
        found = re.search(r"Could not find '([^']+)'", message)
        options = re.search(r"Available options in '([^']+)':\n((?:\t.*\n?)+)", message)
        if found and options:
            group = options.group(1)
            choices = [
                c.strip() for c in options.group(2).splitlines() if c.strip() and not c.strip().startswith("base_")
            ]
            option = found.group(1).rpartition("/")[2]
            return f"{group}={option}: Could not find '{found.group(1)}'; choose one of: {', '.join(choices)}"
        return _one_line(message)
    if isinstance(e, ValueError) and "Config group override must be" in message:
        o = next((o for o in parsed if o.key_or_group in groups() and o.value() is None), None)
        if o is not None:
            return (
                f"{o.input_line}: config group {o.key_or_group} needs one of its options (python launch.py --help "
                "lists them)"
            )
    appended = re.search(r"An item is already at '([^']+)'", message)
    if appended and appended.group(1) in by_key:
        o = by_key[appended.group(1)]
        return (
            f"{o.input_line}: {o.key_or_group} already exists, so it cannot be added; set it with "
            f"{o.key_or_group}={_raw_value(o)}"
        )
    ambiguous = re.search(r"Ambiguous value for argument '([^']+)'", message)
    if ambiguous:
        return (
            f"{ambiguous.group(1)}: ambiguous value; write key=[a,b] for a list or key='a,b' for a string "
            "(launch.py runs one configuration, no sweeps)"
        )
    override = re.search(r"Could not override '([^']+)'", message)
    if override and cause is not None and "not in" in str(cause):
        key = override.group(1)
        o = by_key.get(key)
        return unknown_key_message(key, _raw_value(o) if o else None)
    full_key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    merging = re.match(r"Error merging override (.+)", message)
    o = next((o for o in parsed if merging and o.input_line == merging.group(1)), by_key.get(full_key))
    if o is not None and full_key:
        kind = schema_keys().get(full_key)
        detail = _one_line(cause)
        if kind is not None and isinstance(cause, ValidationError):
            return f"{full_key}={_raw_value(o)} is not allowed: {full_key} must be {_describe(kind)} ({detail})"
        return f"{o.input_line}: {detail}"
    return _one_line(message) + (f" ({_one_line(cause)})" if cause is not None else "")


def compose(
    overrides: list[str] | None = None, conf_dir: str | Path = CONF_DIR, return_hydra_config: bool = False
) -> DictConfig:
    """conf/config.yaml composed with `overrides` (schema < group YAML < recipe < command line), as launch.py does.

    Raises ConfigError with one line for any override Hydra or OmegaConf refuses.
    """
    overrides = list(overrides or [])
    parsed = _parse(overrides)
    _check_added_keys(parsed)
    register_configs()
    try:
        with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
            return hydra_compose(CONFIG_NAME, overrides=overrides, return_hydra_config=return_hydra_config)
    # ConfigCompositionException, MissingConfigException, OmegaConf's ValidationError, Hydra's ValueErrors
    except (HydraException, OmegaConfBaseException, ValueError) as e:
        raise ConfigError(composition_error(e, parsed)) from None


# -------------------------------------------------------------------------------------------------------- help
def help_text(overrides: list[str] | None = None, conf_dir: str | Path = CONF_DIR) -> str:
    """conf/config.yaml's `hydra.help` (header, config groups, the composed config, footer), as @hydra.main printed."""
    cfg = compose(overrides, conf_dir, return_hydra_config=True)
    template = OmegaConf.to_container(cfg.hydra.help, resolve=True)["template"]
    with initialize_config_dir(config_dir=str(Path(conf_dir).resolve()), version_base="1.3"):
        loader = GlobalHydra.instance().config_loader()
        groups = "\n".join(
            f"{g}: {', '.join(loader.get_group_options(g))}" for g in sorted(loader.list_groups("")) if g != "hydra"
        )
    with open_dict(cfg):
        del cfg["hydra"]
    return string.Template(template).safe_substitute(
        FLAGS_HELP="--help,-h : this help",
        APP_CONFIG_GROUPS=groups + "\n",
        HYDRA_CONFIG_GROUPS="",
        CONFIG=OmegaConf.to_yaml(cfg),
    )


# -------------------------------------------------------------------------------------------------------- main
def main(argv: list[str], run: Callable[[DictConfig], int], conf_dir: str | Path = CONF_DIR) -> int:
    """`launch.py [--help] [overrides]`: compose, then `run(cfg)` (the launcher); a bad command line is one line on
    stderr and exit code 2."""
    flags = [a for a in argv if a.startswith("-") and "=" not in a]
    overrides = [a for a in argv if a not in flags]
    try:
        for flag in flags:
            if flag not in HELP_FLAGS:
                raise ConfigError(
                    f"unknown option {flag!r}; launch.py takes --help and key=value overrides "
                    "(dryrun=true prints the resolved config and what would be submitted)"
                )
        if flags:
            print(help_text(overrides, conf_dir))
            return 0
        cfg = compose(overrides, conf_dir)
    except ConfigError as e:
        print(f"compactlm: configuration error: {e}", file=sys.stderr)
        return 2
    return run(cfg)
