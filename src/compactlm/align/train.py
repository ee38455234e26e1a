"""What the sft, dpo and grpo stages share: the tokenizer's chat template, TRL's arguments from the config,
resumable training (complete checkpoints only; SIGTERM/SIGUSR1 -> checkpoint -> exit code Slurm requeues), the
held-out measurements before and after, and the trained model written as a plain HF checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm
from transformers import TrainerCallback

from compactlm.align.schema import TrainerOptions
from compactlm.manifest import atomic_file, atomic_write_json, staging_dir
from compactlm.model.config_layouts import write_both_rope_layouts
from compactlm.model.loading import load_tokenizer
from compactlm.model.precision import Precision
from compactlm.preempt import Preempted, PreemptFlag

CHECKPOINTS = "checkpoints"
# Under torchrun every rank trains and measures; only rank 0 writes files (the runner writes the manifest there).
IS_MAIN = int(os.environ.get("RANK", "0")) == 0
COMPLETE = "compactlm_complete.json"  # written into a checkpoint after the Trainer finished writing it
BEFORE = "before.json"  # held-out measurement of the starting model, kept across restarts
# The template a tokenizer without one gets (ChatML, as SmolLM2 and Qwen use); it is saved with the model.
CHATML = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + "
    "'<|im_end|>' + '\n' }}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_tokenizer(folder: Path, stage: str):
    """The model's tokenizer, with a chat template (ChatML when it has none) and a pad token."""
    tok = load_tokenizer(folder)
    if not tok.chat_template:
        tok.chat_template = CHATML
        print(f"[{stage}] {folder.name} has no chat template; using ChatML (saved with the {stage} model)", flush=True)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def stop_token_ids(tok) -> list[int]:
    """Where an answer ends: the tokenizer's end-of-sequence and, with ChatML, <|im_end|>."""
    ids = {tok.eos_token_id}
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tok.unk_token_id:
        ids.add(im_end)
    return sorted(i for i in ids if i is not None)


def trainer_args(
    cls: type, cfg: TrainerOptions, stage_dir: Path, device: str, precision: Precision, seed: int, **extra: Any
):
    """TRL's `<Kind>Config` from the stage's settings: float32 master weights under bf16/fp16 autocast where the
    engine computes in it, one log line per step, a checkpoint every `save_every` steps (two kept)."""
    return cls(
        output_dir=str(stage_dir / CHECKPOINTS),
        max_steps=cfg.max_steps,
        per_device_train_batch_size=cfg.micro_batch_size,
        per_device_eval_batch_size=cfg.micro_batch_size,
        gradient_accumulation_steps=cfg.accumulation(int(os.environ.get("WORLD_SIZE", "1"))),
        learning_rate=cfg.lr,
        warmup_steps=cfg.warmup(cfg.max_steps),
        weight_decay=cfg.weight_decay,
        max_grad_norm=cfg.grad_clip,
        **_cosine(cfg),
        logging_steps=1,
        save_strategy="steps",
        save_steps=cfg.save_every,
        save_total_limit=2,
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=device == "cpu",
        bf16=precision.compute == "bfloat16",
        fp16=precision.compute == "float16",
        dataloader_num_workers=0,
        log_level="warning",
        **extra,
    )


def _cosine(cfg: TrainerOptions) -> dict[str, Any]:
    """The Trainer's cosine schedule: plain "cosine" (to zero) when min_lr is 0, else "cosine_with_min_lr"."""
    if cfg.min_lr == 0:
        return {"lr_scheduler_type": "cosine"}
    return {"lr_scheduler_type": "cosine_with_min_lr", "lr_scheduler_kwargs": {"min_lr": cfg.min_lr}}


# ------------------------------------------------------------------------------------------ resume / preempt
class _Checkpoints(TrainerCallback):
    """Marks a checkpoint complete once the Trainer wrote all of it; on SIGTERM/SIGUSR1, saves and stops."""

    def __init__(self, flag: PreemptFlag):
        self.flag = flag

    def on_step_end(self, args, state, control, **kwargs):
        if self.flag.signum:
            control.should_save = True
            control.should_training_stop = True
        return control

    def on_save(self, args, state, control, **kwargs):
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if state.is_world_process_zero and folder.is_dir():
            atomic_write_json(folder / COMPLETE, {"global_step": state.global_step})
        return control


def last_checkpoint(folder: Path) -> tuple[Path | None, int]:
    """The newest complete checkpoint under `folder` and its step; incomplete ones (a kill while writing) are
    deleted, so the Trainer's own rotation never counts them."""
    if not folder.is_dir():
        return None, 0
    complete = []
    for ckpt in folder.glob("checkpoint-*"):
        try:
            step = json.loads((ckpt / COMPLETE).read_text())["global_step"]
        except (OSError, ValueError, KeyError):
            if IS_MAIN:
                print(f"[align] removing incomplete checkpoint {ckpt}", flush=True)
                shutil.rmtree(ckpt, ignore_errors=True)
            continue
        complete.append((step, ckpt))
    if not complete:
        return None, 0
    step, ckpt = max(complete)
    return ckpt, step


def train(trainer, stage_dir: Path, stage: str) -> int:
    """Run `trainer` to its max_steps, resuming from the last complete checkpoint; returns the step resumed from.

    Raises Preempted (exit code 128 + signal) after writing a checkpoint when SIGTERM/SIGUSR1 arrived.
    """
    ckpt, step = last_checkpoint(stage_dir / CHECKPOINTS)
    if ckpt is not None:
        print(f"[{stage}] resuming from {ckpt.name} (step {step})", flush=True)
    with PreemptFlag() as flag:
        trainer.add_callback(_Checkpoints(flag))
        trainer.train(resume_from_checkpoint=str(ckpt) if ckpt else None)
    if flag.signum:
        print(
            f"[{stage}] checkpoint written at step {trainer.state.global_step}; re-run the same command to resume",
            flush=True,
        )
        raise Preempted(flag.signum, trainer.state.global_step)
    return step


def cached_before(stage_dir: Path, measure: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """The starting model's held-out measurement: measured once, kept across restarts (a resumed run's model
    is no longer the starting one)."""
    path = stage_dir / BEFORE
    if path.is_file():
        return json.loads(path.read_text())
    result = measure()
    if IS_MAIN:
        atomic_write_json(path, result)
    return result


def save_model(model, tok, final: Path, dtype) -> Path:
    """Write `model` (in `dtype`) and its tokenizer as a plain HF checkpoint, published only when complete
    (rank 0; the other ranks return at once)."""
    if not IS_MAIN:
        return final
    with staging_dir(final) as tmp:
        model.to(dtype).save_pretrained(tmp, safe_serialization=True)
        write_both_rope_layouts(tmp)
        tok.save_pretrained(tmp)
    return final


def history(trainer, keys: Sequence[str]) -> list[dict[str, float]]:
    """Per-step values of `keys` from the Trainer's log (restored from the checkpoint on a resumed run)."""
    rows = []
    for entry in trainer.state.log_history:
        if "step" in entry and any(k in entry for k in keys):
            rows.append({"step": entry["step"], **{k: float(entry[k]) for k in keys if k in entry}})
    return rows


def plot_curves(rows: list[dict[str, float]], series: dict[str, str], path: Path, title: str) -> None:
    """One panel per series key (label: series[key]) against the optimizer step."""
    import matplotlib  # the backend is chosen before pyplot is imported

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend is set

    fig, axes = plt.subplots(1, len(series), figsize=(4.2 * len(series), 3.2), squeeze=False)
    for ax, (key, label) in zip(axes[0], series.items()):
        pts = [(r["step"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), marker=".", linewidth=1.2)
        ax.set_xlabel("step")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------------------ token budgets
def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def chat_tokens(tok, messages: list[dict], prompt_only: bool = False) -> int:
    """Tokens of `messages` rendered by the chat template (`prompt_only`: followed by the assistant's header)."""
    return len(_ids(tok, tok.apply_chat_template(messages, add_generation_prompt=prompt_only, tokenize=False)))


def report_over(stage: str, sequences: list[list[dict]], tok, max_length: int) -> int:
    """Log how many chat `sequences` (prompt + answer) exceed `max_length` tokens, which TRL's SFT and DPO trainers
    truncate keeping the start (an answer past the limit is then not trained on); returns that count."""
    over = sum(chat_tokens(tok, m) > max_length for m in sequences)
    if over:
        print(
            f"[{stage}] {over} of {len(sequences)} sequences are longer than {stage}.max_length={max_length} tokens; "
            "TRL truncates them to it, keeping the start",
            flush=True,
        )
    return over


def fit_prompts(stage: str, rows: list[dict[str, Any]], tok, budget: int) -> list[dict[str, Any]]:
    """`rows` (grpo examples) with each prompt longer than `budget` tokens (chat template included) cut to its last
    tokens, and a log line saying how many were cut. TRL 1.16's GRPOTrainer takes prompts whole: an unbounded one
    would not fit the model's context (the launcher already refused those far over budget, by characters)."""
    room = budget - chat_tokens(tok, [{"role": "user", "content": ""}], prompt_only=True)
    if room < 1:
        raise ValueError(
            f"{stage}: the chat template alone takes {budget - room} tokens, more than the prompt budget "
            f"of {budget}; raise {stage}.max_length"
        )
    out, cut = [], 0
    for row in rows:
        ids = _ids(tok, row["prompt"])
        if len(ids) > room:
            row, cut = {**row, "prompt": tok.decode(ids[-room:])}, cut + 1
        out.append(row)
    if cut:
        print(
            f"[{stage}] {cut} of {len(rows)} prompts are longer than {budget} tokens ({stage}.max_length - "
            f"{stage}.max_completion_length); truncated to their last {room} tokens of text",
            flush=True,
        )
    return out


# ------------------------------------------------------------------------------------------ held-out measures


@torch.no_grad()
def answer_logps(model, tok, prompt: list[dict], answer: list[dict], device: str, max_length: int) -> tuple[float, int]:
    """(sum of log-probabilities, tokens) of `answer`'s tokens after `prompt`, both rendered by the chat template."""
    prompt_ids = _ids(tok, tok.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False))
    full_ids = _ids(tok, tok.apply_chat_template(prompt + answer, tokenize=False))[:max_length]
    start = min(len(prompt_ids), len(full_ids) - 1)
    ids = torch.tensor([full_ids], device=device)
    logits = model(input_ids=ids).logits[0, :-1].float()
    token_logps = torch.log_softmax(logits, dim=-1).gather(1, ids[0, 1:, None])[:, 0]
    picked = token_logps[start - 1 :] if start > 0 else token_logps
    return float(picked.sum()), int(picked.numel())


@torch.no_grad()
def generate(
    model,
    tok,
    prompts: list[list[dict]],
    max_new_tokens: int,
    device: str,
    batch: int = 8,
    desc: str | None = None,
    **sampling: Any,
) -> list[str]:
    """Answers to chat `prompts` (left-padded batches), ending at the stop tokens: greedy, unless `sampling` holds
    generate() options (do_sample=True, temperature, ...); a progress bar when `desc` is given."""
    side, tok.padding_side = tok.padding_side, "left"
    out: list[str] = []
    options = {"do_sample": False, **sampling}
    try:
        for i in tqdm(range(0, len(prompts), batch), desc=desc, unit="batch", disable=desc is None):
            texts = [
                tok.apply_chat_template(p, add_generation_prompt=True, tokenize=False) for p in prompts[i : i + batch]
            ]
            enc = tok(texts, return_tensors="pt", padding=True, add_special_tokens=False).to(device)
            ids = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                eos_token_id=stop_token_ids(tok),
                pad_token_id=tok.pad_token_id,
                **options,
            )
            out.extend(tok.batch_decode(ids[:, enc["input_ids"].shape[1] :], skip_special_tokens=True))
    finally:
        tok.padding_side = side
    return out
