"""Reading back what each stage writes, and the result parts several stages share (ParamCounts, Architecture).

Each stage's result is a dataclass in its package's `schema.py`, named by its registry entry
(`compactlm.stages`); it is shared by the manifest, the report, `launch.py status` and the stages that read an
earlier stage's result. A stage returns its result object; the stage runner stores `asdict(result)` as the
manifest's "result" and :func:`read_result` turns it back into the same class (a manifest whose result does not fit
its class is not trusted). No torch, no Hydra: both sides of compactlm import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Union

from compactlm import stages
from compactlm.manifest import read_manifest, resolve_output

TEACHER = "teacher"
"""The model stage's label (compactlm.stages: the labels of every stage's model, in pipeline order)."""


# ------------------------------------------------------------------------------------------- shared parts
@dataclass
class ParamCounts:
    """Parameter counts of a `*ForCausalLM`; tied embeddings counted once."""

    total: int
    embedding: int
    without_lm_head: int
    """Equal to `total` when the output layer is tied to the embedding."""


@dataclass
class Architecture:
    """The sizes of a decoder under the names prune presets use (ModelOpt's export_config keys)."""

    model_type: str
    hidden_size: int
    ffn_hidden_size: int
    num_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    vocab_size: int


# ------------------------------------------------------------------------------------------- per stage
# ------------------------------------------------------------------------------------------- reading back
def result_class(stage: str) -> type:
    """The result dataclass of `stage` (or of a task of it, `candidate-exp_010`), from the stage registry."""
    return stages.load(stages.get(stage.partition("-")[0]).result)


class ResultError(ValueError):
    """A manifest's result does not fit its stage's result class (hand-edited, or written by another version)."""


def to_json(result: Any) -> dict[str, Any]:
    return dataclasses.asdict(result)


def from_json(cls: type, data: Any, where: str = "result") -> Any:
    """Build `cls` (a result dataclass) from its `to_json` form; raises ResultError naming the field."""
    return _build(cls, data, where)


def _build(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _build(args[0], value, where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ResultError(f"{where}: expected an object for {tp.__name__}, got {type(value).__name__}")
        hints = typing.get_type_hints(tp)
        names = {f.name for f in dataclasses.fields(tp)}
        unknown = sorted(set(value) - names)
        if unknown:
            raise ResultError(f"{where}: unknown field(s) {unknown} for {tp.__name__}")
        kwargs = {k: _build(hints[k], v, f"{where}.{k}") for k, v in value.items()}
        try:
            return tp(**kwargs)
        except TypeError as e:
            raise ResultError(f"{where}: {e}") from None
    if origin is dict:
        _, val_tp = typing.get_args(tp)
        if not isinstance(value, dict):
            raise ResultError(f"{where}: expected an object, got {type(value).__name__}")
        return {k: _build(val_tp, v, f"{where}.{k}") for k, v in value.items()}
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, list):
            raise ResultError(f"{where}: expected a list, got {type(value).__name__}")
        return [_build(item_tp, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp in (int, float, str, bool) and not isinstance(value, tp):
        raise ResultError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value


def result_of(stage: str, manifest: dict[str, Any] | None) -> Any:
    """The typed result of a finished stage's manifest (None when the stage has not finished)."""
    if manifest is None:
        return None
    if "result" not in manifest or manifest.get("stage") not in stages.names():
        raise ResultError(
            f"{stage}/manifest.json has no result (written by an older compactlm); re-running the stage rewrites it"
        )
    # the manifest names its stage: a task of an instanced stage (`candidate-exp_010`) has its stage's result class
    return from_json(result_class(manifest["stage"]), manifest["result"], f"{stage}/manifest.json result")


@dataclass(frozen=True)
class TaskState:
    """One task of a run as the report and the terminal summary see it (the launcher computes these from the run's
    typed task list, so a stage's report rows never parse task names nor import the runner)."""

    stage: str
    instance: Optional[str]
    name: str
    """Its folder under the run folder."""
    state: str
    """finished (its manifest is there); running (a stage process holds its folder); stopped (its folder holds an
    attempt that no process runs); not started."""


class RunResults(dict):
    """task -> its typed result (None: not finished), in recipe order, as every report function receives it;
    `tasks` holds each task's :class:`TaskState` in the same order."""

    def __init__(self, results: dict[str, Any], tasks: list[TaskState] | tuple[TaskState, ...] = ()):
        super().__init__(results)
        self.tasks = list(tasks)


def read_result(run_dir: str | Path, stage: str) -> Any:
    """The typed result of `<run_dir>/<stage>/manifest.json`, or None when that stage has not finished."""
    return result_of(stage, read_manifest(Path(run_dir) / stage))


def run_models(run_dir: str | Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """label -> folder of every model the finished stages produced, in pipeline order: the teacher (model
    stage's checkpoint), pruned, distilled, and the quantized export. The one place that decides which model
    is which; `manifests` maps stage name -> manifest."""
    out = {}
    for spec in stages.specs():
        m = manifests.get(spec.name)
        if m is None or spec.model_label is None:
            continue
        out[spec.model_label] = resolve_output(Path(run_dir) / spec.name, m["outputs"][spec.model_output])
    return out


def student_label(models: dict[str, Any]) -> Optional[str]:
    """The final high-precision student among `models` labels: the latest of grpo, dpo, sft, distilled and
    pruned (None: teacher only)."""
    return next((label for label in stages.student_labels() if label in models), None)
