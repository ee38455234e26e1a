"""The candidate search (recipe=search, search_distill): one teacher cache, one short distillation per candidate,
then a ranking by validation loss after it.

The Minitron lesson this follows: the loss of a freshly pruned model ranks architectures badly; after a few
hundred steps of distillation the order settles. So the expensive shared work is done once (importance scores,
the teacher's top-k logits over the ranking tokens) and each candidate is only pruned from the shared scores and
distilled from the shared cache, as a task of its own that can run beside the others and is skipped on a
re-run once finished.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import shutil
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from compactlm.bench.speed import params_read_per_token
from compactlm.config import ConfigError
from compactlm.data.splits import load_split, save_array
from compactlm.distill.parallel import init_distributed
from compactlm.distill.schema import DistillConfig
from compactlm.distill.train import distill, open_teacher_caches, total_steps
from compactlm.evaluate.quality import quality
from compactlm.manifest import atomic_write_json
from compactlm.model.loading import load_model, setup_engine
from compactlm.pipeline import StageContext, StageOutput
from compactlm.prune.schema import PruneResult
from compactlm.prune.stage import prune_checkpoint
from compactlm.results import ParamCounts, from_json
from compactlm.run_config import CompactLMConfig
from compactlm.search.plots import plot_pareto, plot_search_curves
from compactlm.search.schema import CandidateResult, RankedCandidate, RankingResult, SearchCandidate, TeacherCacheResult

# How often a candidate's short distillation is validated: about this many points on its curve.
CURVE_POINTS = 2
# Non-zero torchrun ranks wait this long for rank 0 to publish the pruned candidate.
PRUNE_WAIT_S = 4 * 3600


def ranking_rows(cfg: DistillConfig, distill_tokens: int, seq_len: int) -> int:
    """Training sequences of the short distillation: whole optimizer steps covering `distill_tokens`."""
    return total_steps(ranking_distill(cfg, distill_tokens), seq_len) * cfg.global_batch_size


def ranking_distill(cfg: DistillConfig, distill_tokens: int) -> DistillConfig:
    """The distillation settings of a candidate: the run's, with the ranking budget and the shared teacher cache."""
    return dataclasses.replace(cfg, teacher_cache=True, max_steps=None, max_tokens=distill_tokens)


def candidate_of(cfg: Any, name: str) -> SearchCandidate:
    for c in cfg.search.resolved:
        if c.name == name:
            return c
    raise ConfigError(f"candidate={name!r} is not one of this run's candidates: {', '.join(cfg.search.names())}")


class TeacherCacheStage:
    """The teacher's top-k log-probabilities over the ranking tokens (the first `search.distill_tokens` of the
    train split) and the validation split: computed once, read by every candidate."""

    name = "teacher_cache"
    reads = ("search", "distill", "engine")
    keep = ("cache",)

    def config_view(self, cfg: CompactLMConfig, instance: str | None) -> dict[str, Any]:
        # not the candidate list: adding a candidate to a search reuses the cache
        return {
            "distill_tokens": cfg.search.distill_tokens,
            "distill": dataclasses.asdict(cfg.distill),
            "engine": dataclasses.asdict(cfg.engine),
        }

    def run(self, ctx: StageContext) -> StageOutput:
        t0 = time.perf_counter()
        cfg = ctx.cfg
        src = ctx.upstream_output("data", "train").parent
        train = load_split(src, "train")
        rows = min(len(train), ranking_rows(cfg.distill, cfg.search.distill_tokens, train.shape[1]))
        data = ctx.stage_dir / "data"
        data.mkdir(exist_ok=True)
        save_array(data / "train.npy", np.ascontiguousarray(train[:rows]))
        save_array(data / "validation.npy", np.asarray(load_split(src, "validation")))
        device, precision = setup_engine(cfg.engine)
        env = init_distributed(device)
        teacher_dir = ctx.upstream_output("model", "checkpoint")
        train_cache, val_cache = open_teacher_caches(
            teacher_dir,
            data,
            ctx.stage_dir / "cache",
            ranking_distill(cfg.distill, cfg.search.distill_tokens),
            precision,
            env,
            teacher_digest=ctx.upstream["model"]["output_digests"]["checkpoint"],
        )
        size = sum(f.stat().st_size for f in (ctx.stage_dir / "cache").rglob("*.npy"))
        # the teacher's own validation loss: the reference line of the ranking (same split, same measure)
        teacher = load_model(teacher_dir, env.device, precision.frozen_dtype)
        with precision.autocast():
            reference = quality(
                {"teacher": teacher},
                "teacher",
                load_split(data, "validation"),
                cfg.distill.micro_batch_size,
                env.device,
            )["teacher"]
        result = TeacherCacheResult(
            train_sequences=int(train_cache.values.shape[0]),
            validation_sequences=int(val_cache.values.shape[0]),
            topk=cfg.distill.topk,
            seq_len=int(train.shape[1]),
            wall_s=round(time.perf_counter() - t0, 3),
            size_bytes=int(size),
            teacher_loss=reference["loss"],
        )
        print(f"[teacher_cache] {result.summary()} in {result.wall_s:.1f} s", flush=True)
        return StageOutput(result, outputs={"data": "data", "cache": "cache"}, engine=precision.record())


class CandidateStage:
    """One candidate: pruned from the shared importance scores, distilled briefly from the shared teacher cache.

    The validation loss before the first step is the pruned-only score; the one after the last step ranks it.
    The pruned checkpoint stays (the winner continues from it); the briefly distilled weights are dropped."""

    name = "candidate"
    reads = ("search", "distill", "engine", "importance", "seed")
    keep = ("pruned", "prune.json", "distill")

    def config_view(self, cfg: CompactLMConfig, instance: str | None) -> dict[str, Any]:
        # its own architecture only: adding or removing another candidate leaves a finished one current
        s = cfg.search
        return {
            "candidate": dataclasses.asdict(candidate_of(cfg, instance)),
            "distill_tokens": s.distill_tokens,
            "depth_method": s.depth_method,
            "distill": dataclasses.asdict(cfg.distill),
            "engine": dataclasses.asdict(cfg.engine),
            "importance": dataclasses.asdict(cfg.importance),
            "seed": cfg.seed,
        }

    def run(self, ctx: StageContext) -> StageOutput:
        cfg, name = ctx.cfg, ctx.instance
        cand = candidate_of(cfg, name)
        names = cfg.search.names()
        tag = f"candidate {name} ({names.index(name) + 1}/{len(names)})"
        pruned, prune_json = ctx.stage_dir / "pruned", ctx.stage_dir / "prune.json"
        main = int(os.environ.get("RANK", "0")) == 0
        if main and not prune_json.is_file():
            prune, _ = prune_checkpoint(ctx, cand.export_config.known(), cfg.search.depth_method, pruned, tag=tag)
            atomic_write_json(prune_json, dataclasses.asdict(prune))  # after the checkpoint: both or neither
        elif not main:
            _wait_for(prune_json, PRUNE_WAIT_S)
        prune = from_json(PruneResult, json.loads(prune_json.read_text()), str(prune_json))
        data = ctx.upstream_output("teacher_cache", "data")
        short = ranking_distill(cfg.distill, cfg.search.distill_tokens)
        steps = total_steps(short, int(load_split(data, "validation").shape[1]))
        short = dataclasses.replace(short, eval_every=max(1, math.ceil(steps / CURVE_POINTS)))
        print(f"[{tag}] {cand.kind}: {cand.export_config.known()}, {steps} steps of short distillation", flush=True)
        out = ctx.stage_dir / "distill"
        metrics = distill(
            ctx.upstream_output("model", "checkpoint"),
            pruned,
            data,
            out,
            short,
            cfg.engine,
            cfg.seed,
            cache_dir=ctx.upstream_output("teacher_cache", "cache"),
            teacher_digest=ctx.upstream["model"]["output_digests"]["checkpoint"],
            build_cache=False,
        )
        if not main:
            return StageOutput(None)
        evals = json.loads((out / "history.json").read_text())["eval"]
        # the briefly distilled weights and their optimizer state are not used again (the winner is distilled
        # from its pruned checkpoint); for a billion-parameter candidate they are tens of GB
        for folder in (Path(metrics["student_dir"]), out / "checkpoint"):
            shutil.rmtree(folder, ignore_errors=True)
        result = CandidateResult(
            name=name,
            kind=cand.kind,
            export_config=cand.export_config.known(),
            architecture=prune.architecture,
            params=prune.params_after,
            params_change=prune.params_change,
            kept_layers=prune.kept_layers,
            pruned_loss=evals[0]["val_nll"],
            pruned_kl=evals[0]["val_kl"],
            loss=evals[-1]["val_nll"],
            kl=evals[-1]["val_kl"],
            steps=metrics["steps"],
            tokens=metrics["tokens"],
            distill_s=round(metrics["wall_s"], 3),
            curve=[{k: e[k] for k in ("step", "val_nll", "val_kl")} for e in evals],
        )
        print(f"[{tag}] {result.summary()}", flush=True)
        return StageOutput(
            result, outputs={"checkpoint": "pruned", "history": "distill/history.json"}, engine=metrics["engine"]
        )


def _wait_for(path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not path.is_file():
        if time.monotonic() > deadline:
            raise RuntimeError(f"rank 0 did not write {path} within {timeout_s:.0f} s")
        time.sleep(1.0)


class RankingStage:
    """Rank the candidates by validation loss after the short distillation, beside their pruned-only ranking;
    the winner's pruned checkpoint is this stage's output, which the rest of a search_distill recipe continues from."""

    name = "ranking"
    reads = ("search",)
    keep = ()

    def run(self, ctx: StageContext) -> StageOutput:
        tasks = {task: ctx.result(task) for task, m in ctx.upstream.items() if m["stage"] == "candidate"}
        found = list(tasks.values())
        result = rank(found, ctx.result("model").params, ctx.result("teacher_cache").teacher_loss)
        winner_task = next(task for task, c in tasks.items() if c.name == result.winner)
        winner_dir = ctx.upstream_output(winner_task, "checkpoint")
        plot_pareto(result, ctx.stage_dir / "pareto.png")
        plot_search_curves(found, ctx.stage_dir / "search_curves.png")
        print(format_ranking(result), flush=True)
        return StageOutput(
            result,
            outputs={"checkpoint": str(winner_dir), "pareto_plot": "pareto.png", "curves_plot": "search_curves.png"},
        )


def kendall_tau(a: list[float], b: list[float]) -> float:
    """Kendall's tau-b of two score lists over the same items (1: same order, -1: reversed; ties count neither)."""
    concordant = discordant = ties_a = ties_b = 0
    n = len(a)
    for i in range(n):
        for j in range(i + 1, n):
            da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
            if da == 0 and db == 0:
                continue
            if da == 0:
                ties_a += 1
            elif db == 0:
                ties_b += 1
            elif da == db:
                concordant += 1
            else:
                discordant += 1
    denom = math.sqrt((concordant + discordant + ties_a) * (concordant + discordant + ties_b))
    return (concordant - discordant) / denom if denom else 1.0


def rank(candidates: list[CandidateResult], teacher: ParamCounts, teacher_loss: float | None = None) -> RankingResult:
    """Order by loss after the short distillation (ties: fewer parameters first), mark the Pareto front
    (parameters vs loss) and measure how far the pruned-only order disagrees. The decode speed-up is the
    estimate batch-1 decoding allows, bound by the weights read per token (bench.speed.params_read_per_token)."""
    if not candidates:
        raise RuntimeError("no candidate finished; nothing to rank")
    order = sorted(candidates, key=lambda c: (c.loss, c.params.without_lm_head, c.name))
    pruned_order = sorted(candidates, key=lambda c: (c.pruned_loss, c.params.without_lm_head, c.name))
    pruned_rank = {c.name: i + 1 for i, c in enumerate(pruned_order)}
    read_teacher = params_read_per_token(asdict(teacher))
    rows = []
    for i, c in enumerate(order):
        dominated = any(
            o is not c
            and o.params.without_lm_head <= c.params.without_lm_head
            and o.loss <= c.loss
            and (o.params.without_lm_head, o.loss) != (c.params.without_lm_head, c.loss)
            for o in candidates
        )
        rows.append(
            RankedCandidate(
                name=c.name,
                kind=c.kind,
                export_config=c.export_config,
                params=c.params.without_lm_head,
                params_change=c.params_change,
                pruned_loss=c.pruned_loss,
                loss=c.loss,
                kl=c.kl,
                rank=i + 1,
                pruned_rank=pruned_rank[c.name],
                decode_speedup=read_teacher / params_read_per_token(asdict(c.params)),
                pareto=not dominated,
            )
        )
    tau = kendall_tau([c.loss for c in candidates], [c.pruned_loss for c in candidates])
    return RankingResult(
        metric="val_nll",
        candidates=rows,
        winner=rows[0].name,
        kendall_tau=tau,
        teacher_params=teacher.without_lm_head,
        teacher_loss=teacher_loss,
    )


def format_ranking(r: RankingResult) -> str:
    """The ranking as a text table (printed by the stage; the report has the same table)."""
    head = (
        f"{'rank':>4}  {'candidate':<14}{'kind':<8}{'params':>10}{'change':>8}{'pruned loss':>13}{'(rank)':>7}"
        f"{'loss':>9}{'KL':>8}{'decode':>8}"
    )
    unit, div = ("B", 1e9) if r.teacher_params >= 1e9 else ("M", 1e6)
    lines = [
        f"[ranking] by validation loss after the short distillation (Kendall tau vs pruned-only {r.kendall_tau:+.2f})",
        head,
        "-" * len(head),
    ]
    for c in r.candidates:
        lines.append(
            f"{c.rank:>4}  {c.name:<14}{c.kind:<8}{c.params / div:>9.2f}{unit}{c.params_change * 100:>7.1f}%"
            f"{c.pruned_loss:>13.4f}{c.pruned_rank:>7}{c.loss:>9.4f}{c.kl:>8.4f}{c.decode_speedup:>7.2f}x"
            + ("  <- winner" if c.name == r.winner else "")
            + ("" if c.pareto else "  (dominated)")
        )
    return "\n".join(lines)
