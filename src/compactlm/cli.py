"""compactlm's one command-line grammar below Hydra: `key=value` words, as Hydra overrides are written.

`launch.py` composes runs with Hydra; its run operations (`launch.py status run_name=x`) and the stage module
that runs on the compute node (`python -m compactlm.run <stage> config=<run_dir>/config.yaml`) read the same
form through :func:`parse`. Library functions take typed arguments from Python and have no CLI of their own.
"""

from __future__ import annotations


class UsageError(ValueError):
    """A bad command line; the message says what is allowed."""


def parse(argv: list[str], allowed: dict[str, str | None]) -> dict[str, str]:
    """`key=value` words into a dict; `allowed` maps each key to its default (None: required)."""
    out: dict[str, str] = {}
    for arg in argv:
        key, eq, value = arg.partition("=")
        if not eq or key not in allowed:
            raise UsageError(f"{arg!r}: expected key=value with key one of {', '.join(allowed)}")
        out[key] = value
    for key, default in allowed.items():
        if key not in out:
            if default is None:
                raise UsageError(f"{key}=... is required")
            out[key] = default
    return out
