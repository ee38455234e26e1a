"""The model card (`release/README.md`): YAML metadata built and checked with huggingface_hub's own ModelCardData and
ModelCard, and a body where every figure is read from a stage's typed result. A figure the run did not measure has
no row: nothing is estimated here."""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass, field
from typing import Any, Optional

from huggingface_hub import ModelCard, ModelCardData

from compactlm import stages
from compactlm.errors import ConfigError
from compactlm.evaluate.report import recovery, task_names
from compactlm.release.schema import BASE_MODEL_RELATIONS
from compactlm.results import TEACHER, Architecture, ParamCounts

PIPELINE_TAG = "text-generation"
LIBRARY_NAME = "transformers"
# ISO 639-1/2/3 codes, or the Hub's special values
_LANGUAGE = re.compile(r"[a-z]{2,3}(-[A-Za-z0-9]{2,8})?|code|multilingual")


@dataclass
class CardFacts:
    """What the card is made of: the run's typed results by stage, and the release's own facts."""

    name: str
    """The released model's name (the run name)."""
    model: str
    """Label of the released model (distilled, dpo, ..., teacher)."""
    results: dict[str, Any]
    """stage -> typed result (compactlm.results) of every finished upstream stage."""
    license: str
    base_model: Optional[str]
    relation: str
    teacher_name: str
    language: list[str] = field(default_factory=list)
    license_name: Optional[str] = None
    license_link: Optional[str] = None
    tags: list[str] = field(default_factory=list)
    data_name: str = ""
    command: Optional[list[str]] = None
    git_sha: Optional[str] = None
    hf_folder: bool = False
    """The release holds the Hugging Face checkpoint at its top level."""
    export_folder: Optional[str] = None
    """Subfolder of the quantize stage's export (fp8, nvfp4, ...)."""
    gguf_files: list[str] = field(default_factory=list)
    """Released GGUF files, relative to the release folder."""
    repo_id: Optional[str] = None


def relation(model: str) -> str:
    """The Hub's base_model_relation. A pruned and distilled (or aligned) student has the teacher's weights, sliced
    and then trained: the Hub's "finetune" (a model trained from the base model's weights) is the value that fits;
    "quantized" would claim the base model's architecture, "adapter" and "merge" do not apply. A release of the
    teacher itself (recipe=quantize) holds only quantized variants of it: "quantized"."""
    return BASE_MODEL_RELATIONS[2] if model == TEACHER else BASE_MODEL_RELATIONS[3]


def card_data(f: CardFacts) -> ModelCardData:
    """The YAML metadata, built with huggingface_hub's ModelCardData; ConfigError for a value the Hub refuses."""
    bad = [lang for lang in f.language if not _LANGUAGE.fullmatch(lang)]
    if bad:
        raise ConfigError(f"release.language contains {bad[0]!r}: an ISO 639 code (en, pl, ...) is expected")
    tags = ["compactlm", *_process_tags(f), *f.tags]
    return ModelCardData(
        license=f.license,
        license_name=f.license_name,
        license_link=f.license_link,
        base_model=f.base_model,
        base_model_relation=f.relation if f.base_model else None,
        pipeline_tag=PIPELINE_TAG,
        library_name=LIBRARY_NAME,
        language=f.language or None,
        tags=list(dict.fromkeys(tags)),
    )


def _process_tags(f: CardFacts) -> list[str]:
    rs = f.results
    tags = []
    if rs.get("prune") or rs.get("ranking"):
        tags += ["pruned", "minitron"]
    if rs.get("distill"):
        tags.append("distillation")
    if f.export_folder:
        tags += [f.export_folder, "modelopt", "tensorrt-llm"]
    if f.gguf_files:
        tags += ["gguf", "llama.cpp", "ollama"]
    return tags


def render(f: CardFacts) -> str:
    """The whole card: metadata then body, parsed back with huggingface_hub's ModelCard (which rebuilds its
    ModelCardData from the YAML) and checked to carry the same metadata."""
    data = card_data(f)
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body(f)) + "\n"
    parsed = ModelCard(text).data.to_dict()
    if parsed != data.to_dict():
        raise ValueError(f"the card's metadata does not read back: {parsed} != {data.to_dict()}")
    return text


# ------------------------------------------------------------------------------------------------ body
def body(f: CardFacts) -> list[str]:
    out = [f"# {f.name}", "", intro(f), ""]
    for section in (architecture, lineage, evaluation, variants, speed, files, usage, limitations, reproduce):
        lines = section(f)
        if lines:
            out += lines + [""]
    return out


def intro(f: CardFacts) -> str:
    teacher = f"[{f.base_model}](https://huggingface.co/{f.base_model})" if f.base_model else f"`{f.teacher_name}`"
    if f.model == TEACHER:
        return f"Quantized variants of {teacher}, made and measured with compactlm."
    # what made the student, in pipeline order: pruned (or searched), distilled, sft, dpo, grpo
    labels = stages.model_labels()
    steps = list(dict.fromkeys(labels[s] for s in stages.where(student=True) if f.results.get(s)))
    return (
        f"A compressed version of {teacher} ({', '.join(steps) or f.model}), made with compactlm: structured "
        "pruning guided by activation importance, then logit distillation from the original model. Every figure "
        "below was measured by the run that made it."
    )


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join("---" for _ in header) + "|",
        *["| " + " | ".join(r) + " |" for r in rows],
    ]


def _count(n: float) -> str:
    for div, suffix, fmt in ((1e9, "B", ".2f"), (1e6, "M", ".1f"), (1e3, "K", ".1f")):
        if abs(n) >= div:
            return f"{n / div:{fmt}}{suffix}"
    return str(int(n))


def ordered(rows: dict[str, Any]) -> list[tuple[str, Any]]:
    """Rows by model label in pipeline order (teacher first), other labels (a student's GGUF types) after them."""
    rank = {label: i for i, label in enumerate(stages.model_labels().values())}
    return sorted(rows.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))


def _pct(x: Optional[float]) -> str:
    return "-" if x is None else f"{x * 100:.1f}%"


def _num(x: Optional[float], fmt: str) -> str:
    return "-" if x is None else format(x, fmt)


def student_shape(rs: dict[str, Any]) -> Optional[tuple[Architecture, ParamCounts]]:
    """The student's architecture and parameters: the prune stage's, or the search winner's."""
    if rs.get("prune"):
        return rs["prune"].architecture, rs["prune"].params_after
    ranking = rs.get("ranking")
    if ranking:
        winner = rs.get(f"candidate-{ranking.winner}")
        if winner:
            return winner.architecture, winner.params
    return None


ARCH_ROWS = (
    ("layers", "num_layers"),
    ("hidden size", "hidden_size"),
    ("FFN size", "ffn_hidden_size"),
    ("attention heads", "num_attention_heads"),
    ("KV heads", "num_key_value_heads"),
    ("vocabulary", "vocab_size"),
)


def architecture(f: CardFacts) -> list[str]:
    teacher, student = f.results.get("model"), student_shape(f.results)
    if teacher is None or student is None or f.model == TEACHER:
        return []
    arch, params = student
    rows = [[name, str(getattr(teacher.architecture, k)), str(getattr(arch, k))] for name, k in ARCH_ROWS]
    for name, key in (("parameters", "total"), ("parameters without lm_head", "without_lm_head")):
        t, s = getattr(teacher.params, key), getattr(params, key)
        rows.append([name, f"{t:,}", f"{s:,} ({(s / t - 1) * 100:+.1f}%)"])
    return [
        "## Architecture",
        "",
        f"{arch.model_type}, against the teacher `{f.teacher_name}`:",
        "",
        *_table(["", "teacher", "this model"], rows),
    ]


def lineage(f: CardFacts) -> list[str]:
    rs, items = f.results, []
    data, imp = rs.get("data"), rs.get("importance")
    if imp and data:
        items.append(
            f"**Importance**: Minitron activation scores over {imp.calibration_sequences} calibration sequences of "
            f"{data.seq_len} tokens ({imp.calibration_sequences * data.seq_len:,} tokens) of `{f.data_name}`."
        )
    p = rs.get("prune")
    if p:
        sizes = ", ".join(f"{k}={v}" for k, v in sorted(p.export_config.items()))
        items.append(
            f"**Pruning**: to {sizes} (depth by {p.depth_method}, kept layers {p.kept_layers}); parameters "
            f"{p.params_change * 100:+.1f}% without lm_head."
        )
    r = rs.get("ranking")
    if r:
        items.append(
            f"**Architecture search**: {len(r.candidates)} candidates, each pruned and distilled briefly, ranked by "
            f"{r.metric}; chosen: `{r.winner}`."
        )
    d = rs.get("distill")
    if d:
        items.append(
            f"**Distillation**: logit distillation (forward KL) from the teacher, {d.steps:,} steps, {d.tokens:,} "
            f"tokens of `{f.data_name}`, {d.world_size} process{'es' if d.world_size > 1 else ''} ({d.strategy}); validation KL to the teacher "
            f"{d.val_kl:.4f}, perplexity {d.val_ppl:.3f}."
        )
    items += _alignment(rs)
    q = rs.get("quantize")
    if q:
        items.append(
            f"**Quantization**: {q.format} with NVIDIA ModelOpt post-training quantization of the "
            f"{stages.model_labels().get(q.source_stage, q.source_stage)} model"
            + (", FP8 KV cache" if q.kv_cache_fp8 else "")
            + (f", excluding {q.exclude}" if q.exclude else "")
            + ", exported as a unified Hugging Face checkpoint"
            + (", every weight checked by dequantizing it." if q.verify.get("passed") else ".")
        )
    g = rs.get("gguf")
    if g:
        types = sorted({x.type for x in g.files if x.model == g.student})
        items.append(f"**GGUF**: {', '.join(types)} with llama.cpp {g.llama_cpp.get('version', '')}".rstrip() + ".")
    return ["## How it was made", "", *[f"- {i}" for i in items]] if items else []


def _alignment(rs: dict[str, Any]) -> list[str]:
    out, a = [], rs.get("align_data")
    for stage, what in (("sft", "supervised fine-tuning"), ("dpo", "preference optimization"), ("grpo", "GRPO")):
        r = rs.get(stage)
        if r is None:
            continue
        data = f", {a.train[stage]} examples ({a.sources[stage]})" if a and stage in a.train else ""
        extra = f", loss {r.loss} (beta {r.beta})" if stage == "dpo" else ""
        extra += f", rewards {', '.join(r.rewards)}" if stage == "grpo" else ""
        out.append(
            f"**{stage.upper()}**: {what} with TRL from the {r.train.source} model, {r.train.steps} steps{data}{extra}."
        )
    return out


def evaluation(f: CardFacts) -> list[str]:
    e = f.results.get("evaluate")
    if e is None:
        return []
    models = {k: v for k, v in e.models.items() if k == TEACHER or not k.startswith(("gguf ", "quantized"))}
    teacher, tasks = models.get(TEACHER), task_names(models)
    if set(models) == {TEACHER}:
        teacher = None  # nothing to recover: no recovery columns
    header = ["model", "params", "perplexity", "KL to teacher", "top-1 agreement", *[f"{t} acc" for t in tasks]]
    header += ["recovery (ppl)", "recovery (aggregate)"] if teacher else []
    rows = []
    for label, m in ordered(models):
        rec = recovery(teacher, m) if teacher and label != TEACHER else {}
        row = [
            label,
            _count(m.params.total),
            f"{m.perplexity:.3f}",
            _num(m.kl_to_teacher, ".4f"),
            _pct(m.top1_agreement),
        ]
        row += [_num(m.tasks.get(t, {}).get("acc"), ".3f") for t in tasks]
        row += [_pct(rec.get("perplexity")), _pct(rec.get("aggregate"))] if teacher else []
        rows.append(row)
    return [
        "## Evaluation",
        "",
        f"On {e.validation_sequences} held-out validation sequences of `{f.data_name}` (never trained or calibrated "
        f"on), {e.dtype} on {e.device}. Recovery: the teacher's perplexity over the model's, and the mean of that, "
        "top-1 agreement with the teacher and task accuracy relative to the teacher's.",
        "",
        *_table(header, rows),
    ]


def variants(f: CardFacts) -> list[str]:
    rs, rows = f.results, []
    q = rs.get("quantize")
    if q and f.export_folder:
        ref, quant = (q.quality or {}).get("reference"), (q.quality or {}).get("quantized")
        rows.append(
            [
                f"`{f.export_folder}/`",
                q.format,
                f"{q.export['safetensors_bytes'] / 2**20:.1f}",
                # the export's own bytes over its own parameter count (quantization scales included)
                f"{q.export['safetensors_bytes'] * 8 / q.export['parameters']:.2f}"
                if q.export.get("parameters")
                else "-",
                _num(quant and quant["perplexity"], ".3f"),
                _pct(ref["perplexity"] / quant["perplexity"]) if ref and quant else "-",
                "ModelOpt fake-quant" if quant else "-",
            ]
        )
    g = rs.get("gguf")
    for f_ in g.files if g else []:
        name = f"gguf/{f_.file.rsplit('/', 1)[-1]}"
        if name not in f.gguf_files:
            continue
        base = g.file(f_.model, g.outtype)
        ppl = f_.perplexity and f_.perplexity["perplexity"]
        ref = base is not None and base.perplexity and base.perplexity["perplexity"]
        rows.append(
            [
                f"`{name}`",
                f_.type,
                f"{f_.size_bytes / 2**20:.1f}",
                f"{f_.bits_per_weight:.2f}",
                _num(ppl or None, ".3f"),
                _pct(ref / ppl) if ppl and ref else "-",
                "llama-perplexity" if ppl else "-",
            ]
        )
    if not rows:
        return []
    return [
        "## Quantized variants",
        "",
        "Retention: the unquantized source's perplexity over the variant's, each measured the same way.",
        "",
        *_table(["file", "type", "size MiB", "bits/weight", "perplexity", "retention (ppl)", "measured by"], rows),
    ]


def speed(f: CardFacts) -> list[str]:
    b = f.results.get("bench")
    if b is None or not b.runs:
        return []
    rows = []
    for run in b.runs:
        c, t = run.compare, run.models.get(TEACHER, {})
        for label, r in ordered(run.models):
            tps = r.get("output_tokens_per_s")
            ratio = (
                c.get("tokens_per_s_ratio")
                if label == b.student
                else (
                    tps / t["output_tokens_per_s"]
                    if label != TEACHER and tps and t.get("output_tokens_per_s")
                    else None
                )
            )
            rows.append(
                [
                    str(run.batch_size),
                    label,
                    _num(tps, ".1f"),
                    _num(r.get("ttft_ms"), ".1f"),
                    _num(r.get("tpot_ms"), ".1f"),
                    f"{ratio:.2f}x" if ratio else "-",
                    f"{c['ideal_speedup']:.2f}x" if label == b.student and c.get("ideal_speedup") else "-",
                ]
            )
    machine = ", ".join(x for x in (b.device, f"{b.threads} threads" if b.threads else "", b.dtype or "") if x)
    return [
        "## Speed",
        "",
        f"Measured by {b.source} on {machine}. Ideal: the speed-up the parameter ratio allows a decode bound by "
        "reading the weights.",
        "",
        *_table(["batch", "model", "output tok/s", "TTFT ms", "TPOT ms", "tok/s vs teacher", "ideal"], rows),
    ]


def files(f: CardFacts) -> list[str]:
    items = []
    if f.hf_folder:
        items.append("`./`: the Hugging Face checkpoint (safetensors, config, tokenizer with its chat template)")
    if f.export_folder:
        items.append(f"`{f.export_folder}/`: the {f.export_folder.upper()} unified checkpoint for TensorRT-LLM")
    for g in f.gguf_files:
        items.append(f"`{g}` and its Ollama Modelfile `{g.removesuffix('.gguf')}.Modelfile`")
    items.append("`SHA256SUMS`: every file's SHA-256 (`sha256sum -c SHA256SUMS`)")
    return ["## Files", "", *[f"- {i}" for i in items]]


def usage(f: CardFacts) -> list[str]:
    repo = f.repo_id or "<this repo>"
    out = ["## Usage", ""]
    if f.hf_folder:
        out += [
            "transformers:",
            "",
            "```python",
            "from transformers import AutoModelForCausalLM, AutoTokenizer",
            f'tok = AutoTokenizer.from_pretrained("{repo}")',
            f'model = AutoModelForCausalLM.from_pretrained("{repo}")',
            'messages = [{"role": "user", "content": "Hello!"}]',
            'ids = tok.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")',
            "print(tok.decode(model.generate(ids, max_new_tokens=64)[0][ids.shape[1]:]))",
            "```",
            "",
        ]
    if f.export_folder:
        out += [
            f"TensorRT-LLM (the `{f.export_folder}/` checkpoint; FP8 from Ada/Hopper GPUs, NVFP4 from Blackwell):",
            "",
            "```bash",
            f"hf download {repo} --include '{f.export_folder}/*' --local-dir model",
            f"trtllm-serve model/{f.export_folder}",
            "```",
            "",
        ]
    if f.gguf_files:
        g = f.gguf_files[-1]
        out += [
            "llama.cpp and Ollama:",
            "",
            "```bash",
            f"hf download {repo} --include 'gguf/*' --local-dir model",
            f'llama-cli -m model/{g} -p "Hello!"',
            f"ollama create {f.name.lower()} -f model/{g.removesuffix('.gguf')}.Modelfile && ollama run {f.name.lower()}",
            "```",
        ]
    return out


def limitations(f: CardFacts) -> list[str]:
    e, items = f.results.get("evaluate"), []
    if e is not None:
        items.append(
            f"Quality was measured on {e.validation_sequences} validation sequences of `{f.data_name}` only; no "
            "safety, bias or instruction-following evaluation was run."
        )
    else:
        items.append("The run measured no quality: evaluate it before use.")
    if f.model != TEACHER:
        items.append(
            "It inherits the teacher's knowledge, languages and failure modes, and loses some quality (see "
            "recovery); it is not a replacement for the teacher where that quality matters."
        )
    if f.export_folder == "nvfp4":
        items.append("NVFP4 is served by TensorRT-LLM only on Blackwell GPUs.")
    return ["## Limitations", "", *[f"- {i}" for i in items]]


def reproduce(f: CardFacts) -> list[str]:
    if not f.command:
        return []
    cmd = " ".join(shlex.quote(a) for a in ["python", *f.command])
    at = f" at compactlm commit `{f.git_sha}`" if f.git_sha else ""
    return ["## Reproduce", "", f"The command that made this release{at}:", "", "```bash", cmd, "```"]
