"""The align_data, sft, dpo and grpo stages.

align_data checks and splits each alignment stage's examples (or builds the offline demo ones); each training
stage starts from the run's latest model (distilled, else the previous alignment stage's), trains it with TRL,
measures it on held-out examples before and after, and writes a plain HF checkpoint (`model/`). `checkpoints/`
and `before.json` survive a restart with the same config and inputs, so a killed or preempted stage resumes.
"""

from __future__ import annotations

import os
import shutil
import time
from typing import Any

import torch
from datasets import Dataset
from trl import DPOConfig, DPOTrainer, GRPOConfig, GRPOTrainer, SFTConfig, SFTTrainer

from compactlm.align import data as align_data
from compactlm.align import demo
from compactlm.align.dpop import DPOPTrainer
from compactlm.align.schema import ALIGN_KINDS, AlignDataResult, DPOResult, GRPOResult, SFTResult, TrainSummary
from compactlm.align.train import (
    CHECKPOINTS,
    IS_MAIN,
    answer_logps,
    cached_before,
    chat_tokenizer,
    fit_prompts,
    generate,
    history,
    plot_curves,
    report_over,
    save_model,
    stop_token_ids,
    train,
    trainer_args,
)
from compactlm.data.splits import load_split
from compactlm.manifest import atomic_write_json
from compactlm.model.loading import load_model, setup_engine
from compactlm.pipeline import StageContext, StageOutput
from compactlm.results import TEACHER
from compactlm.rewards import completion_text, resolve


class AlignDataStage:
    name = "align_data"
    reads = ("align_data", "engine", "seed")
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        cfg = ctx.cfg.align_data
        sources = {k: getattr(cfg, k) for k in ALIGN_KINDS}
        splits: dict[str, tuple[list, list]] = {}
        for kind, src in sources.items():
            if src.source == "jsonl":
                splits[kind] = align_data.read_files(kind, src)
            elif src.source == "hf":
                splits[kind] = align_data.read_hf(kind, src)
        demo_kinds = [k for k, src in sources.items() if src.source == "demo"]
        demo_s = None
        if demo_kinds:
            t0 = time.time()
            splits.update(self.demo(ctx, demo_kinds))
            demo_s = round(time.time() - t0, 1)
        outputs = {}
        for kind, (train_rows, heldout_rows) in splits.items():
            align_data.write_split(ctx.stage_dir / kind, train_rows, heldout_rows)
            outputs[kind] = kind
            print(
                f"[align_data] {kind}: {len(train_rows)} train + {len(heldout_rows)} held-out examples "
                f"({sources[kind].source})",
                flush=True,
            )
        result = AlignDataResult(
            sources={k: s.source for k, s in sources.items()},
            train={k: len(v[0]) for k, v in splits.items()},
            heldout={k: len(v[1]) for k, v in splits.items()},
            demo_s=demo_s,
        )
        return StageOutput(result, outputs=outputs)

    def demo(self, ctx: StageContext, kinds: list[str]) -> dict[str, tuple[list, list]]:
        models = ctx.models()
        device, precision = setup_engine(ctx.cfg.engine)
        teacher = load_model(models[TEACHER], device, precision.frozen_dtype)
        pruned = load_model(models.get("pruned", models[TEACHER]), device, precision.frozen_dtype)
        tok = chat_tokenizer(models[TEACHER], "align_data")
        train_tokens = load_split(ctx.upstream_output("data", "train").parent, "train")
        with precision.autocast():
            return demo.build(ctx.cfg.align_data, kinds, teacher, pruned, tok, train_tokens, device, ctx.cfg.seed)


# ------------------------------------------------------------------------------------------------ training
class _AlignStage:
    """The flow every alignment stage shares. Each subclass provides `fit(ctx, tok, rows)` (its examples within its
    token budget, or a log line saying how TRL truncates them), `trainer(ctx, model, source, tok, dataset,
    device, precision)` (its TRL trainer), `measure(ctx, model, before, tok, heldout_rows, device)` (its held-out
    measure, of the starting model when `before` is None) and `result(ctx, summary, before, after, rows, heldout)`."""

    name = ""
    keep = ("checkpoints", "before.json")
    reads: tuple[str, ...] = ()
    curves: dict[str, str] = {}

    def run(self, ctx: StageContext) -> StageOutput:
        cfg = getattr(ctx.cfg, self.name)
        label, source = list(ctx.models().items())[-1]  # the latest model of the run
        train_rows, heldout_rows = align_data.load_split(ctx.upstream_output("align_data", self.name), self.name)
        device, precision = setup_engine(ctx.cfg.engine)
        tok = chat_tokenizer(source, self.name)
        train_rows, heldout_rows = self.fit(ctx, tok, train_rows), self.fit(ctx, tok, heldout_rows)
        model = load_model(source, device, torch.float32)
        print(f"[{self.name}] {len(train_rows)} examples, {cfg.max_steps} steps from {label} ({source})", flush=True)
        t0 = time.time()
        with precision.autocast():
            before = cached_before(ctx.stage_dir, lambda: self.measure(ctx, model, None, tok, heldout_rows, device))
        dataset = Dataset.from_list([align_data.to_conversational(self.name, r) for r in train_rows])
        trainer = self.trainer(ctx, model, source, tok, dataset, device, precision)
        resumed = train(trainer, ctx.stage_dir, self.name)
        model = trainer.accelerator.unwrap_model(trainer.model).eval()
        with precision.autocast():
            after = self.measure(ctx, model, before, tok, heldout_rows, device)
        rows = history(trainer, list(self.curves))
        save_model(model, tok, ctx.stage_dir / "model", precision.frozen_dtype)
        if IS_MAIN:
            atomic_write_json(ctx.stage_dir / "history.json", rows)
            plot_curves(rows, self.curves, ctx.stage_dir / "curves.png", f"{self.name} ({label} -> {self.name})")
            shutil.rmtree(ctx.stage_dir / CHECKPOINTS, ignore_errors=True)  # the model is published: nothing to resume
        losses = [r["loss"] for r in rows if "loss" in r]
        summary = TrainSummary(
            source=label,
            steps=int(trainer.state.global_step),
            examples=len(train_rows),
            resumed_from_step=resumed,
            world_size=int(os.environ.get("WORLD_SIZE", "1")),
            wall_s=round(time.time() - t0, 1),
            train_loss=losses[-1] if losses else None,
        )
        result = self.result(ctx, summary, before, after, rows, len(heldout_rows))
        print(f"[{self.name}] {result.summary()}", flush=True)
        return StageOutput(
            result,
            outputs={"checkpoint": "model", "history": "history.json", "curves": "curves.png"},
            engine=precision.record(),
        )


class SFTStage(_AlignStage):
    name = "sft"
    reads = ("sft", "engine", "seed")
    curves = {"loss": "SFT loss (answer tokens)", "mean_token_accuracy": "token accuracy"}

    def fit(self, ctx, tok, rows):
        report_over(self.name, [r["messages"] for r in rows], tok, ctx.cfg.sft.max_length)
        return rows

    def trainer(self, ctx, model, source, tok, dataset, device, precision):
        cfg = ctx.cfg.sft
        # prompt = every turn before the last, completion = the final assistant answer: the loss covers the answer
        dataset = dataset.map(
            lambda r: {"prompt": r["messages"][:-1], "completion": r["messages"][-1:]}, remove_columns=["messages"]
        )
        args = trainer_args(
            SFTConfig,
            cfg,
            ctx.stage_dir,
            device,
            precision,
            ctx.cfg.seed,
            max_length=cfg.max_length,
            completion_only_loss=True,
        )
        return SFTTrainer(model=model, args=args, train_dataset=dataset, processing_class=tok)

    def measure(self, ctx, model, before, tok, heldout_rows, device):
        total, n = 0.0, 0
        for r in heldout_rows:
            lp, k = answer_logps(model, tok, r["messages"][:-1], r["messages"][-1:], device, ctx.cfg.sft.max_length)
            total, n = total + lp, n + k
        return {"loss": -total / max(n, 1), "tokens": n}

    def result(self, ctx, summary, before, after, rows, heldout):
        return SFTResult(
            train=summary,
            heldout_loss_before=before["loss"],
            heldout_loss_after=after["loss"],
            heldout_examples=heldout,
        )


class DPOStage(_AlignStage):
    name = "dpo"
    reads = ("dpo", "engine", "seed")
    curves = {"loss": "loss", "rewards/margins": "reward margin", "rewards/accuracies": "reward accuracy"}

    def fit(self, ctx, tok, rows):
        conv = [align_data.to_conversational("dpo", r) for r in rows]
        report_over(
            self.name, [c["prompt"] + c[k] for c in conv for k in ("chosen", "rejected")], tok, ctx.cfg.dpo.max_length
        )
        return rows

    def trainer(self, ctx, model, source, tok, dataset, device, precision):
        cfg = ctx.cfg.dpo
        args = trainer_args(
            DPOConfig,
            cfg,
            ctx.stage_dir,
            device,
            precision,
            ctx.cfg.seed,
            max_length=cfg.max_length,
            beta=cfg.beta,
            loss_type=["sigmoid" if cfg.loss == "dpop" else cfg.loss],
        )
        ref = load_model(source, device, precision.frozen_dtype)  # the reference: the starting model, frozen
        kw = dict(model=model, ref_model=ref, args=args, train_dataset=dataset, processing_class=tok)
        if cfg.loss == "dpop":
            return DPOPTrainer(**kw, dpop_lambda=cfg.dpop_lambda)
        return DPOTrainer(**kw)

    def measure(self, ctx, model, before, tok, heldout_rows, device):
        n = ctx.cfg.dpo.max_length
        chosen, rejected = [], []
        for r in heldout_rows:
            conv = align_data.to_conversational("dpo", r)
            chosen.append(answer_logps(model, tok, conv["prompt"], conv["chosen"], device, n)[0])
            rejected.append(answer_logps(model, tok, conv["prompt"], conv["rejected"], device, n)[0])
        return {"chosen": chosen, "rejected": rejected}

    def result(self, ctx, summary, before, after, rows, heldout):
        cfg = ctx.cfg.dpo
        pairs = list(zip(before["chosen"], before["rejected"], after["chosen"], after["rejected"]))
        margins = [cfg.beta * ((c1 - c0) - (r1 - r0)) for c0, r0, c1, r1 in pairs]

        def share(flags):
            return sum(flags) / max(len(pairs), 1)

        def mean(xs):
            return sum(xs) / max(len(xs), 1)

        return DPOResult(
            train=summary,
            loss=cfg.loss,
            beta=cfg.beta,
            dpop_lambda=cfg.dpop_lambda if cfg.loss == "dpop" else None,
            heldout_pairs=heldout,
            preference_accuracy_before=share([c0 > r0 for c0, r0, _, _ in pairs]),
            preference_accuracy_after=share([c1 > r1 for _, _, c1, r1 in pairs]),
            reward_margin_after=mean(margins),
            reward_accuracy_after=share([m > 0 for m in margins]),
            chosen_logp_before=mean(before["chosen"]),
            chosen_logp_after=mean(after["chosen"]),
            rejected_logp_before=mean(before["rejected"]),
            rejected_logp_after=mean(after["rejected"]),
        )


class GRPOStage(_AlignStage):
    name = "grpo"
    reads = ("grpo", "engine", "seed")
    curves = {"reward": "mean reward (sampled)", "completions/mean_length": "completion tokens"}

    def fit(self, ctx, tok, rows):
        cfg = ctx.cfg.grpo
        return fit_prompts(self.name, rows, tok, cfg.max_length - cfg.max_completion_length)

    def trainer(self, ctx, model, source, tok, dataset, device, precision):
        cfg = ctx.cfg.grpo
        args = trainer_args(
            GRPOConfig,
            cfg,
            ctx.stage_dir,
            device,
            precision,
            ctx.cfg.seed,
            num_generations=cfg.num_generations,
            max_completion_length=cfg.max_completion_length,
            temperature=cfg.temperature,
            beta=cfg.beta,
            reward_weights=cfg.reward_weights,
            generation_kwargs={"eos_token_id": stop_token_ids(tok)},
        )
        return GRPOTrainer(
            model=model,
            reward_funcs=[resolve(p) for p in cfg.rewards],
            args=args,
            train_dataset=dataset,
            processing_class=tok,
        )

    def measure(self, ctx, model, before, tok, heldout_rows, device):
        cfg = ctx.cfg.grpo
        conv = [align_data.to_conversational("grpo", r) for r in heldout_rows]
        prompts = [c["prompt"] for c in conv]
        answers = [c["answer"] for c in conv]
        completions = generate(model, tok, prompts, cfg.max_completion_length, device)
        weights = cfg.reward_weights or [1.0] * len(cfg.rewards)
        scores: dict[str, float] = {"total": 0.0}
        for path, w in zip(cfg.rewards, weights):
            values = resolve(path)(prompts=prompts, completions=completions, answer=answers)
            scores[path] = sum(values) / len(values)
            scores["total"] += w * scores[path]
        scores["examples"] = [
            {"prompt": completion_text(p), "answer": a, "completion": c}
            for p, a, c in list(zip(prompts, answers, completions))[:4]
        ]
        return scores

    def result(self, ctx, summary, before, after, rows, heldout):
        rewards = [r["reward"] for r in rows if "reward" in r]
        return GRPOResult(
            train=summary,
            rewards=list(ctx.cfg.grpo.rewards),
            heldout_problems=heldout,
            heldout_reward_before=_scores(before),
            heldout_reward_after=_scores(after),
            train_reward_first=rewards[0] if rewards else None,
            train_reward_last=rewards[-1] if rewards else None,
        )


def _scores(measured: dict[str, Any]) -> dict[str, float]:
    return {k: v for k, v in measured.items() if k != "examples"}
