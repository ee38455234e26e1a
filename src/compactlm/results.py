"""What each stage writes: one dataclass per stage, shared by the manifest, the report, `launch.py status`
and the stages that read an earlier stage's result.

`config.py` says what a stage reads; this module says what it writes. A stage returns its result
object; the stage runner stores `asdict(result)` as the manifest's "result" and :func:`read_result`
turns it back into the same class (a manifest whose result does not fit its class is not trusted).
No torch, no Hydra: both sides of compactlm import it.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

from compactlm.manifest import read_manifest, resolve_output
from compactlm.release.schema import ReleaseResult

TEACHER = "teacher"
# stage that produces a model -> that model's label in tables, in pipeline order
MODEL_LABELS = {
    "model": TEACHER,
    "prune": "pruned",
    "ranking": "pruned",
    "distill": "distilled",
    "sft": "sft",
    "dpo": "dpo",
    "grpo": "grpo",
    "quantize": "quantized",
}
# the run's high-precision students, latest first
STUDENT_LABELS = ("grpo", "dpo", "sft", "distilled", "pruned")


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
@dataclass
class ModelResult:
    """model stage: the teacher as a local Hugging Face folder."""

    name: str
    architecture: Architecture
    params: ParamCounts

    def summary(self) -> str:
        a = self.architecture
        return f"{self.name}: {a.model_type}, {self.params.total / 1e6:.1f}M params, {a.num_layers} layers"


@dataclass
class DataResult:
    """data stage: packed int32 splits [sequences, seq_len] and the held-out documents' text."""

    seq_len: int
    sequences: dict[str, int]
    """split -> number of sequences (validation, calibration, train)."""
    tokens: dict[str, int]
    heldout_documents: int
    """Documents whose text went to `heldout/` (the validation split's, never trained or calibrated on)."""

    def summary(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in self.sequences.items()) + f" x {self.seq_len} tokens"


@dataclass
class ImportanceResult:
    """importance stage: Minitron activation scores of the teacher."""

    calibration_sequences: int
    calibration_tokens_per_s: float
    depth_block_influence: list[float]
    """Per layer, Σ over batches of (1 − cos(layer input, layer output)); higher = more important."""

    def summary(self) -> str:
        return f"{self.calibration_sequences} calibration sequences, {len(self.depth_block_influence)} layers scored"


@dataclass
class PruneResult:
    """prune stage: the sliced student."""

    export_config: dict[str, int]
    depth_method: str
    kept_layers: list[int]
    architecture: Architecture
    params_before: ParamCounts
    params_after: ParamCounts
    params_change: float
    """params_after / params_before - 1, without lm_head (the Minitron reports' convention)."""
    depth_lm_loss: Optional[dict[str, float]] = None
    """first dropped layer -> LM loss without that block (depth_method=lm_loss only)."""

    def summary(self) -> str:
        return (
            f"{self.params_before.total / 1e6:.1f}M -> {self.params_after.total / 1e6:.1f}M params "
            f"({self.params_change * 100:+.1f}%)"
        )


@dataclass
class DistillResult:
    """distill stage: training summary of the student."""

    steps: int
    tokens: int
    val_ppl: float
    val_kl: float
    """KL(teacher ‖ student) per token at T=1 on the validation split."""
    val_kl_source: str
    resumed_from_step: int
    world_size: int
    strategy: str
    wall_s: float
    train_loss: Optional[float] = None
    train_kl: Optional[float] = None
    tokens_per_s: Optional[float] = None
    student_dir: Optional[str] = None

    def summary(self) -> str:
        return f"{self.steps} steps, val ppl {self.val_ppl:.3f}, val KL {self.val_kl:.4f}"


@dataclass
class TeacherCacheResult:
    """teacher_cache stage: the teacher's top-k log-probabilities over the ranking tokens, shared by every candidate."""

    train_sequences: int
    validation_sequences: int
    topk: int
    seq_len: int
    wall_s: float
    size_bytes: int
    teacher_loss: Optional[float] = None
    """The teacher's validation NLL per token: the reference of every candidate's loss."""

    def summary(self) -> str:
        return (
            f"top-{self.topk} of {self.train_sequences} + {self.validation_sequences} sequences "
            f"({self.size_bytes / 2**20:.0f} MiB)"
            + ("" if self.teacher_loss is None else f", teacher val loss {self.teacher_loss:.3f}")
        )


@dataclass
class CandidateResult:
    """candidate stage (one per search candidate): pruned from the shared scores, then distilled briefly."""

    name: str
    kind: str
    export_config: dict[str, int]
    architecture: Architecture
    params: ParamCounts
    params_change: float
    """Without lm_head, relative to the teacher."""
    kept_layers: list[int]
    pruned_loss: float
    """Validation NLL per token of the pruned model, before any distillation."""
    pruned_kl: float
    """KL(teacher ‖ pruned) per token on the validation split (teacher top-k cache)."""
    loss: float
    """Validation NLL per token after the short distillation: the ranking metric."""
    kl: float
    steps: int
    tokens: int
    distill_s: float
    curve: list[dict[str, float]] = field(default_factory=list)
    """Validation evaluations during the short distillation: step, val_nll, val_kl."""

    def summary(self) -> str:
        return f"{self.params_change * 100:+.1f}%, val loss {self.pruned_loss:.3f} -> {self.loss:.3f}"


@dataclass
class RankedCandidate:
    """One row of the ranking."""

    name: str
    kind: str
    export_config: dict[str, int]
    params: int
    """Without lm_head."""
    params_change: float
    pruned_loss: float
    loss: float
    kl: float
    rank: int
    """1 = best validation loss after the short distillation."""
    pruned_rank: int
    """Its rank by the pruned-only validation loss."""
    decode_speedup: float
    """Estimated batch-1 decode speed-up over the teacher: weights read per token (bench.speed.params_read_per_token),
    teacher / candidate; decoding one sequence is bound by them."""
    pareto: bool
    """No other candidate has both fewer parameters and a lower loss."""


@dataclass
class RankingResult:
    """ranking stage: candidates ordered by validation loss after the short distillation; the winner goes on."""

    metric: str
    candidates: list[RankedCandidate]
    winner: str
    kendall_tau: float
    """Agreement of the pruned-only ranking with the ranking after distillation (1: same order, -1: reversed)."""
    teacher_params: int
    teacher_loss: Optional[float] = None

    def summary(self) -> str:
        return f"{len(self.candidates)} candidates, winner {self.winner}, Kendall tau vs pruned-only {self.kendall_tau:+.2f}"


@dataclass
class AlignDataResult:
    """align_data stage: the examples of the sft, dpo and grpo stages (train / held-out counts, where from)."""

    sources: dict[str, str]
    """kind -> demo, jsonl or hf."""
    train: dict[str, int]
    heldout: dict[str, int]
    demo_s: Optional[float] = None
    """Seconds spent generating the demo answers (teacher and pruned student)."""

    def summary(self) -> str:
        return ", ".join(f"{k}: {self.train[k]} + {self.heldout[k]} held out ({self.sources[k]})" for k in self.train)


@dataclass
class TrainSummary:
    """What every alignment stage records about its training run."""

    source: str
    """Label of the model it started from (distilled, sft, ...)."""
    steps: int
    examples: int
    resumed_from_step: int
    world_size: int
    wall_s: float
    train_loss: Optional[float] = None


@dataclass
class SFTResult:
    """sft stage: supervised fine-tuning (TRL SFTTrainer); loss per answer token on held-out chat examples."""

    train: TrainSummary
    heldout_loss_before: float
    heldout_loss_after: float
    heldout_examples: int

    def summary(self) -> str:
        return (
            f"{self.train.steps} steps from {self.train.source}, held-out loss {self.heldout_loss_before:.3f} -> "
            f"{self.heldout_loss_after:.3f}"
        )


@dataclass
class DPOResult:
    """dpo stage: preference optimization (TRL DPOTrainer; loss dpop = DPO-Positive) on held-out pairs.

    preference accuracy: share of pairs where the model gives the chosen answer a higher log-likelihood than the
    rejected one. reward margin: β·mean[(log π − log π_ref)(chosen) − (log π − log π_ref)(rejected)], 0 before
    training by definition (the reference is the starting model); reward accuracy: share of pairs with margin > 0.
    """

    train: TrainSummary
    loss: str
    beta: float
    dpop_lambda: Optional[float]
    heldout_pairs: int
    preference_accuracy_before: float
    preference_accuracy_after: float
    reward_margin_after: float
    reward_accuracy_after: float
    chosen_logp_before: float
    chosen_logp_after: float
    rejected_logp_before: float
    rejected_logp_after: float

    def summary(self) -> str:
        return (
            f"{self.train.steps} steps ({self.loss}), held-out preference accuracy "
            f"{self.preference_accuracy_before:.2f} -> {self.preference_accuracy_after:.2f}, reward margin "
            f"{self.reward_margin_after:+.3f}"
        )


@dataclass
class GRPOResult:
    """grpo stage: GRPO with verifiable rewards (TRL GRPOTrainer); mean reward of greedy answers to held-out
    problems, per reward function and weighted total."""

    train: TrainSummary
    rewards: list[str]
    heldout_problems: int
    heldout_reward_before: dict[str, float]
    heldout_reward_after: dict[str, float]
    train_reward_first: Optional[float] = None
    train_reward_last: Optional[float] = None

    def summary(self) -> str:
        b, a = self.heldout_reward_before["total"], self.heldout_reward_after["total"]
        return f"{self.train.steps} steps, held-out mean reward {b:.3f} -> {a:.3f}"


@dataclass
class QuantizeResult:
    """quantize stage: ModelOpt PTQ, the unified-checkpoint export and its verification."""

    format: str
    kv_cache_fp8: bool
    exclude: list[str]
    source_stage: str
    source: str
    export: dict[str, Any]
    """Sizes of the export (safetensors_bytes, ratio_to_bf16, ...), from quantize.ptq.export."""
    layout: dict[str, Any]
    """What TensorRT-LLM reads, as checked by quantize.verify.check_layout."""
    verify: dict[str, Any]
    """Dequantized export vs source weights (passed, max_rel_err, rows), from quantize.verify.compare."""
    quality: Optional[dict[str, dict[str, Any]]] = None
    """{"reference": ..., "quantized": ...} perplexities of the fake-quantized model, where its forward runs."""

    def summary(self) -> str:
        ppl = f", ppl {self.quality['quantized']['perplexity']:.3f}" if self.quality else ""
        return f"{self.format} of {self.source_stage}, {self.export['safetensors_bytes'] / 2**20:.1f} MiB{ppl}"


@dataclass
class GGUFFile:
    """One GGUF file of the gguf stage, verified against its source checkpoint."""

    model: str
    """Label of the source model (teacher, pruned, distilled)."""
    type: str
    """f16 / bf16 / f32 (the conversion) or a llama-quantize type (q8_0, q4_k_m, ...)."""
    file: str
    """Path relative to the stage folder."""
    size_bytes: int
    bits_per_weight: float
    tensor_types: dict[str, int]
    """ggml type -> number of tensors (K-quants fall back to other types on rows not a multiple of 256)."""
    size_ratio: float
    """size / size of the same model's unquantized conversion."""
    perplexity: Optional[dict[str, Any]] = None
    """llama-perplexity on the held-out documents: {perplexity, stderr, chunks, ctx}."""
    hf: Optional[dict[str, Any]] = None
    """Dequantized through transformers on the validation split: {perplexity, loss, tokens, kl_to_source,
    top1_agreement_to_source}."""
    speed: list[dict[str, Any]] = field(default_factory=list)
    """llama-batched-bench rows: {concurrency, ttft_ms, tpot_ms, prompt_tokens_per_s, output_tokens_per_s, ...}."""


@dataclass
class GGUFResult:
    """gguf stage: llama.cpp files of the run's models, their quality and llama.cpp's serving speed."""

    llama_cpp: dict[str, str]
    student: str
    """Label of the model the quantized types were made from (distilled, else pruned, else teacher)."""
    outtype: str
    files: list[GGUFFile]
    params: dict[str, ParamCounts]
    """label -> parameter counts of each converted model (from its safetensors), for the ideal speed-up."""
    source_hf: Optional[dict[str, Any]] = None
    """The student checkpoint's own perplexity on the validation split (the reference of the `hf` figures)."""

    def file(self, model: str, type_: str) -> Optional[GGUFFile]:
        return next((f for f in self.files if f.model == model and f.type == type_), None)

    def summary(self) -> str:
        quant = [f for f in self.files if f.model == self.student and f.type != self.outtype]
        return f"{self.student}: " + ", ".join(
            f"{f.type} {f.size_bytes / 2**20:.0f} MiB"
            + (f" ppl {f.perplexity['perplexity']:.2f}" if f.perplexity else "")
            for f in quant
        )


@dataclass
class ModelScores:
    """One model's row of the evaluation table."""

    perplexity: float
    loss: float
    tokens: int
    params: ParamCounts
    checkpoint: Optional[str] = None
    forward_tokens_per_s: Optional[float] = None
    kl_to_teacher: Optional[float] = None
    top1_agreement: Optional[float] = None
    tasks: dict[str, dict[str, float]] = field(default_factory=dict)
    """lm-eval task -> {acc, acc_stderr, num_examples, ...}."""
    ttft_ms: Optional[float] = None
    tpot_ms: Optional[float] = None
    output_tokens_per_s: Optional[float] = None
    new_tokens: Optional[int] = None
    sample: Optional[str] = None
    # the quantized row: measured by the quantize stage on ModelOpt's fake-quantized model
    source: Optional[str] = None
    format: Optional[str] = None
    forward: Optional[str] = None
    kl_to_source: Optional[float] = None
    top1_agreement_to_source: Optional[float] = None
    size_bytes: Optional[int] = None


@dataclass
class EvaluateResult:
    """evaluate stage: every model of the run side by side."""

    device: str
    dtype: str
    threads: int
    validation_sequences: int
    models: dict[str, ModelScores]

    def summary(self) -> str:
        return ", ".join(f"{label} ppl {m.perplexity:.3f}" for label, m in self.models.items())


@dataclass
class BenchRun:
    """Teacher vs student at one batch size (or concurrency)."""

    batch_size: int
    models: dict[str, dict[str, Any]]
    """label -> speed figures (output_tokens_per_s, ttft_ms, tpot_ms, peak_memory_bytes, ...)."""
    compare: dict[str, Optional[float]]
    """tokens_per_s_ratio, decode_speedup, ideal_speedup, ... (compactlm.bench.speed.compare)."""


@dataclass
class BenchResult:
    """bench stage: speed of the teacher vs the final student."""

    source: str
    student: str
    params: dict[str, ParamCounts]
    runs: list[BenchRun]
    device: Optional[str] = None
    dtype: Optional[str] = None
    threads: Optional[int] = None

    def summary(self) -> str:
        return (
            ", ".join(f"batch {r.batch_size}: {r.compare.get('tokens_per_s_ratio') or 0:.2f}x tok/s" for r in self.runs)
            + f" ({self.student} vs teacher)"
        )


@dataclass
class DeployResult:
    """deploy stage: TensorRT-LLM checks and trtllm-bench figures per model."""

    models: dict[str, dict[str, Any]]

    def summary(self) -> str:
        return "served: " + ", ".join(self.models)


RESULTS: dict[str, type] = {
    "model": ModelResult,
    "data": DataResult,
    "importance": ImportanceResult,
    "prune": PruneResult,
    "teacher_cache": TeacherCacheResult,
    "candidate": CandidateResult,
    "ranking": RankingResult,
    "distill": DistillResult,
    "align_data": AlignDataResult,
    "sft": SFTResult,
    "dpo": DPOResult,
    "grpo": GRPOResult,
    "quantize": QuantizeResult,
    "gguf": GGUFResult,
    "evaluate": EvaluateResult,
    "deploy": DeployResult,
    "bench": BenchResult,
    "release": ReleaseResult,
}


# ------------------------------------------------------------------------------------------- derived figures
def recovery(teacher: ModelScores, model: ModelScores) -> dict[str, float]:
    """Recovery of each metric, student relative to teacher (1.0 = as good as the teacher).

    Perplexity is lower-is-better, so its recovery is teacher / student; top-1 agreement is already a
    fraction of the teacher's own predictions. The aggregate is their mean.
    """
    out = {"perplexity": teacher.perplexity / model.perplexity}
    if model.top1_agreement is not None:
        out["top1_agreement"] = model.top1_agreement
    for task, scores in model.tasks.items():
        base = teacher.tasks.get(task, {}).get("acc")
        if base and "acc" in scores:
            out[f"{task} acc"] = scores["acc"] / base
    out["aggregate"] = sum(out.values()) / len(out)
    return out


def task_names(models: dict[str, ModelScores]) -> list[str]:
    return sorted({t for r in models.values() for t, v in r.tasks.items() if "acc" in v})


# ------------------------------------------------------------------------------------------- reading back
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
    if "result" not in manifest:
        raise ResultError(
            f"{stage}/manifest.json has no result (written by an older compactlm); re-running the stage rewrites it"
        )
    # a task of an instanced stage (`candidate-exp_010`) has its stage's result class
    return from_json(RESULTS[stage.partition("-")[0]], manifest["result"], f"{stage}/manifest.json result")


def read_result(run_dir: str | Path, stage: str) -> Any:
    """The typed result of `<run_dir>/<stage>/manifest.json`, or None when that stage has not finished."""
    return result_of(stage, read_manifest(Path(run_dir) / stage))


def run_models(run_dir: str | Path, manifests: dict[str, dict[str, Any]]) -> dict[str, Path]:
    """label -> folder of every model the finished stages produced, in pipeline order: the teacher (model
    stage's checkpoint), pruned, distilled, and the quantized export. The one place that decides which model
    is which; `manifests` maps stage name -> manifest."""
    out = {}
    for stage, label in MODEL_LABELS.items():
        m = manifests.get(stage)
        if m is None:
            continue
        key = "export" if stage == "quantize" else "checkpoint"
        out[label] = resolve_output(Path(run_dir) / stage, m["outputs"][key])
    return out


def student_label(models: dict[str, Any]) -> Optional[str]:
    """The final high-precision student among `models` labels: the latest of grpo, dpo, sft, distilled and
    pruned (None: teacher only)."""
    return next((label for label in STUDENT_LABELS if label in models), None)
