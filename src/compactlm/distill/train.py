"""Logit distillation of a pruned student from its teacher (engine=torch), resumable and multi-process.

A library function, `distill(teacher_dir, student_dir, data_dir, out_dir, cfg, engine, seed)`, with no command line
of its own: the distill stage (stage.py) and each search candidate call it, run as a stage of a prepared run:

    python -m compactlm.run distill config=<run_dir>/config.yaml
    torchrun --nproc-per-node 8 -m compactlm.run distill config=<run_dir>/config.yaml   # distill.strategy=fsdp2 ...

The loss is ModelOpt's: the student is wrapped with `mtd.convert(..., "kd_loss")` and a KL criterion on
("lm_head", "lm_head"), reduced to the mean KL per token of the whole optimizer step (see losses.py).
With `distill.teacher_cache=true` the teacher runs once over the data (cache.py) and training reads its
top-k log-probabilities instead. Outputs in `out_dir`: student/ (plain HF checkpoint), checkpoint/
(latest resumable state), tensorboard/, loss_curve.png, history.json, metrics.json.
"""

from __future__ import annotations

import dataclasses
import math
import random
import shutil
import signal
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import modelopt.torch.distill as mtd
import numpy as np
import torch
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_optimizer_state_dict,
)
from tqdm import tqdm

from compactlm.config import ConfigError, EngineConfig
from compactlm.data.splits import load_split
from compactlm.distill import checkpoint as ckpt
from compactlm.distill.cache import CACHE_DTYPES, ensure_cache
from compactlm.distill.losses import PerTokenKL, TopKDistillationLoss, token_nll
from compactlm.distill.monitor import Scalars, plot_loss_curve
from compactlm.distill.parallel import (
    TEACHER_PREFIX,
    DistEnv,
    all_reduce_sum,
    barrier,
    gather_object,
    init_distributed,
    no_sync,
    shard_fsdp2,
    unwrap,
    wrap_distillation_model,
    wrap_student,
)
from compactlm.distill.sampler import SequenceOrder, micro_batches, padded_shard, rank_slice
from compactlm.distill.schema import DistillConfig
from compactlm.manifest import atomic_write_json, file_digest, path_digest, staging_dir
from compactlm.model.config_layouts import write_both_rope_layouts
from compactlm.model.loading import load_model, read_hf_config, setup_engine
from compactlm.preempt import Preempted, PreemptFlag

# Changing these between an interrupted run and its resumption does not change what is optimized.
RESUMABLE_CHANGES = (
    "eval_every",
    "save_every",
    "checkpoint_every",  # the deprecated name of save_every, in checkpoints written before the rename
    "nproc_per_node",
    "strategy",
    "micro_batch_size",
    "activation_checkpointing",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "tokenizer.model",
    "vocab.json",
    "merges.txt",
    "added_tokens.json",
    "chat_template.jinja",
    "chat_template.json",
)


# ----------------------------------------------------------------------------------------- schedule
def total_steps(cfg: DistillConfig, seq_len: int) -> int:
    """Optimizer steps: distill.max_steps, else ceil(max_tokens / (global_batch_size × seq_len))."""
    if cfg.max_steps is not None:
        return cfg.max_steps
    return max(1, math.ceil(cfg.max_tokens / (cfg.global_batch_size * seq_len)))


def lr_at(step: int, cfg: DistillConfig, steps: int) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup to lr, then cosine decay to min_lr."""
    warmup = cfg.warmup(steps)
    if step < warmup:
        return cfg.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup - 1)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, progress)))


def _param_groups(named_params, weight_decay: float) -> list[dict]:
    """Decay matrices (projections, embeddings), not norms or biases."""
    decay, no_decay = [], []
    for _, p in named_params:
        (decay if p.dim() >= 2 else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _check_resumable(saved: dict, cfg: DistillConfig, seed: int, out_dir: Path) -> None:
    """Refuse to resume a checkpoint made with settings that change the optimization trajectory."""
    then = {**{f"distill.{k}": v for k, v in saved["config"].items()}, "seed": saved["seed"]}
    now = {**{f"distill.{k}": v for k, v in dataclasses.asdict(cfg).items()}, "seed": seed}
    changed = [k for k in then if k.split(".")[-1] not in RESUMABLE_CHANGES and then[k] != now.get(k)]
    if changed:
        diffs = ", ".join(f"{k}: {then[k]!r} -> {now.get(k)!r}" for k in changed)
        raise ConfigError(
            f"{out_dir}/checkpoint was written with different settings ({diffs}); restore them to resume, "
            f"or delete {out_dir} to start over"
        )


# ------------------------------------------------------------------------------------ teacher cache
def open_teacher_caches(
    teacher_dir: Path,
    data_dir: Path,
    cache_dir: Path,
    cfg: DistillConfig,
    precision,
    env: DistEnv,
    *,
    teacher_digest: str | None = None,
    cache_dtype: str = "float16",
    fsdp: bool = False,
    progress: bool = True,
    build: bool = True,
):
    """(train, validation) teacher top-k caches of `data_dir`'s splits under `cache_dir`, built first when missing.

    The meta of each cache names everything its values depend on (teacher, data, k, temperature, storage and
    compute dtype), so a distillation and the search's shared teacher_cache stage that ask for the same cache
    find the same files. The teacher is loaded only when a cache has to be built."""
    teacher_box: list = []

    def teacher():
        if not teacher_box:
            t = load_model(teacher_dir, device="cpu" if fsdp else env.device, dtype=precision.frozen_dtype)
            t.requires_grad_(False)
            if fsdp:
                shard_fsdp2(t)
            teacher_box.append(t)
        return teacher_box[0]

    common = {
        "teacher": teacher_digest or path_digest(teacher_dir),
        "topk": cfg.topk,
        "dtype": cache_dtype,
        "compute": precision.compute,
    }
    train = ensure_cache(
        teacher,
        load_split(data_dir, "train"),
        Path(cache_dir) / "train",
        {**common, "data": file_digest(Path(data_dir) / "train.npy"), "temperature": cfg.temperature},
        micro_batch_size=cfg.micro_batch_size,
        env=env,
        autocast=precision.autocast,
        progress=progress,
        build=build,
    )
    # Validation KL is reported at temperature 1, as in live mode.
    val = ensure_cache(
        teacher,
        load_split(data_dir, "validation"),
        Path(cache_dir) / "validation",
        {**common, "data": file_digest(Path(data_dir) / "validation.npy"), "temperature": 1.0},
        micro_batch_size=cfg.micro_batch_size,
        env=env,
        autocast=precision.autocast,
        progress=progress,
        build=build,
    )
    teacher_box.clear()
    return train, val


# ------------------------------------------------------------------------------------------ trainer
class _Trainer:
    """One distillation run; `distill()` is its public face. Attributes hold the live training state."""

    def __init__(
        self,
        teacher_dir,
        student_dir,
        data_dir,
        out_dir,
        cfg,
        engine,
        seed,
        progress,
        cache_dir,
        cache_dtype,
        teacher_digest,
        build_cache=True,
    ):
        self.teacher_dir, self.student_dir = Path(teacher_dir), Path(student_dir)
        self.teacher_digest, self.build_cache = teacher_digest, build_cache
        self.data_dir, self.out_dir = Path(data_dir), Path(out_dir)
        self.cfg, self.seed, self.progress = cfg, seed, progress
        self.cache_dir = Path(cache_dir) if cache_dir else self.out_dir / "teacher_cache"
        if cache_dtype not in CACHE_DTYPES:
            raise ConfigError(f"cache_dtype={cache_dtype!r} is not allowed; choose one of: {', '.join(CACHE_DTYPES)}")
        self.cache_dtype = cache_dtype
        device, self.precision = setup_engine(engine)
        self.env: DistEnv = init_distributed(device)
        self.device = self.env.device
        # the teacher runs (and the student is saved) in precision.frozen_dtype; the student trains in float32
        # under autocast to it (bfloat16 where the hardware has it: compactlm.model.precision)
        self.autocast = self.precision.autocast

    # ----------------------------------------------------------------------------------- setup
    def setup(self) -> None:
        cfg, env = self.cfg, self.env
        random.seed(self.seed)
        np.random.seed(self.seed)
        torch.manual_seed(self.seed + env.rank)
        self.train_tokens = load_split(self.data_dir, "train")
        self.val_tokens = load_split(self.data_dir, "validation")
        self.seq_len = int(self.train_tokens.shape[1])
        self.accum = cfg.accumulation(env.world)
        self.steps = total_steps(cfg, self.seq_len)
        self.order = SequenceOrder(len(self.train_tokens), self.seed)
        self.fsdp = env.distributed and cfg.strategy == "fsdp2"
        vocab_t = read_hf_config(self.teacher_dir).get("vocab_size")
        vocab_s = read_hf_config(self.student_dir).get("vocab_size")
        if vocab_t != vocab_s:
            raise ConfigError(
                f"the student's vocab_size={vocab_s} differs from the teacher's {vocab_t} "
                f"({self.student_dir}); logit distillation needs the same vocabulary"
            )
        if cfg.teacher_cache and vocab_t is not None and cfg.topk > vocab_t:
            raise ConfigError(f"distill.topk={cfg.topk} exceeds the vocabulary size {vocab_t}")
        self.state_format = "fsdp2" if self.fsdp else "plain"

        if env.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            ckpt.remove_stale_temporaries(self.out_dir)
        barrier(env)
        resume = ckpt.load_checkpoint(self.out_dir)
        if resume is not None:
            _check_resumable(resume[1], cfg, self.seed, self.out_dir)
            then = resume[1].get("compute", "float32")
            if then != self.precision.compute:
                raise ConfigError(
                    f"{self.out_dir}/checkpoint was trained in {then}, this run would compute in {self.precision}; "
                    f"set engine.dtype={then} to resume it, or delete {self.out_dir} to start over"
                )
            if resume[1]["state_format"] != self.state_format:
                raise ConfigError(
                    f"{self.out_dir}/checkpoint holds {resume[1]['state_format']} optimizer state, this run would "
                    f"need {self.state_format}: an FSDP2 checkpoint resumes only with distill.strategy=fsdp2 under "
                    f"torchrun, a single-process or DDP one only without FSDP2"
                )

        self.train_cache = self.val_cache = None
        if cfg.teacher_cache:
            self._open_caches()
        load_device = "cpu" if self.fsdp else self.device
        student = load_model(self.student_dir, device=load_device, dtype=torch.float32)
        if resume is not None:  # full weights into the unsharded model, before any wrapping
            student.load_state_dict(resume[0]["model"])
        student.train()
        if cfg.activation_checkpointing:
            # torch.utils.checkpoint around every decoder layer; the non-reentrant form is the one FSDP2 supports
            student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.teacher_cache:
            self.dm = None
            self.root = student
            self.model = wrap_student(student, cfg.strategy, env)
            self.topk_loss = TopKDistillationLoss(cfg.temperature)
        else:
            teacher = load_model(
                self.teacher_dir, device=load_device, dtype=self.precision.frozen_dtype
            ).requires_grad_(False)
            criterion = {("lm_head", "lm_head"): PerTokenKL(cfg.temperature)}
            self.dm = mtd.convert(student, mode=[("kd_loss", {"teacher_model": teacher, "criterion": criterion})])
            self.root = self.dm
            self.model = wrap_distillation_model(self.dm, cfg.strategy, env)
        student_params = [
            (n, p) for n, p in self.root.named_parameters() if not n.startswith(TEACHER_PREFIX) and p.requires_grad
        ]
        self.params = [p for _, p in student_params]
        self.optimizer = torch.optim.AdamW(
            _param_groups(student_params, cfg.weight_decay), lr=cfg.lr, betas=(0.9, 0.95), eps=1e-8
        )
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_at(s, cfg, self.steps) / cfg.lr if cfg.lr > 0 else 0.0
        )

        self.step, self.history, self.evals, self.train_time = 0, [], [], 0.0
        if resume is not None:
            state, meta = resume
            self._load_optimizer(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            rngs = state["rng"]
            ckpt.set_rng_state(rngs[env.rank] if len(rngs) == env.world else rngs[0])
            self.step, self.history, self.evals = meta["step"], meta["history"], meta["evals"]
            if meta["samples"] != self.step * cfg.global_batch_size:
                raise RuntimeError(
                    f"{self.out_dir}/checkpoint is inconsistent: samples={meta['samples']} at step {self.step}"
                )
        self.start_step = self.step
        self.scalars = Scalars(
            self.out_dir / "tensorboard" if env.is_main else None, purge_step=self.step if resume is not None else None
        )

    def _open_caches(self) -> None:
        self.train_cache, self.val_cache = open_teacher_caches(
            self.teacher_dir,
            self.data_dir,
            self.cache_dir,
            self.cfg,
            self.precision,
            self.env,
            teacher_digest=self.teacher_digest,
            cache_dtype=self.cache_dtype,
            fsdp=self.fsdp,
            progress=self.progress,
            build=self.build_cache,
        )

    # -------------------------------------------------------------------------------- one step
    def _tokens(self, split: np.ndarray, rows: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(split[rows])).to(self.device, torch.long)

    def _forward(self, rows: np.ndarray, tokens: np.ndarray, cache, temperature=None):
        """Student logits [B, S, V] and per-token KL [B, S] for sequence `rows`."""
        ids = self._tokens(tokens, rows)
        with self.autocast():
            out = self.model(input_ids=ids, use_cache=False)
        if self.dm is not None:
            kl = self.dm.compute_kd_loss(temperature=temperature)
        else:
            kl = self.topk_loss(out.logits, *cache.lookup(rows, self.device), temperature=temperature)
        return ids, out.logits, kl

    def train_step(self, flag: PreemptFlag) -> dict[str, float]:
        """One optimizer step over the global batch; returns the step's global mean losses per token."""
        cfg, env = self.cfg, self.env
        mine = rank_slice(self.order.global_batch(self.step, cfg.global_batch_size), env.rank, env.world)
        # Sums over this process's tokens divided by its token count; DDP/FSDP average over processes,
        # so the gradient is that of the mean over all global_batch_size × seq_len tokens.
        kl_norm = len(mine) * self.seq_len
        ce_norm = len(mine) * (self.seq_len - 1)
        sums = torch.zeros(3, device=self.device, dtype=torch.float64)
        chunks = micro_batches(mine, cfg.micro_batch_size)
        for i, rows in enumerate(chunks):
            with no_sync(self.model, sync=i == len(chunks) - 1):
                ids, logits, kl = self._forward(rows, self.train_tokens, self.train_cache)
                kl_sum = kl.sum()
                loss = kl_sum / kl_norm
                if cfg.lm_loss_weight > 0:
                    ce_sum = token_nll(logits, ids).sum()
                    loss = loss + cfg.lm_loss_weight * ce_sum / ce_norm
                    sums[1] += ce_sum.detach()
                loss.backward()
            sums[0] += kl_sum.detach()
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, cfg.grad_clip if cfg.grad_clip > 0 else float("inf"))
        if hasattr(grad_norm, "full_tensor"):
            grad_norm = grad_norm.full_tensor()
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums[2] = float(flag.signum > 0)
        all_reduce_sum(sums, env)
        kl_mean = sums[0].item() / (cfg.global_batch_size * self.seq_len)
        ce_mean = sums[1].item() / (cfg.global_batch_size * (self.seq_len - 1)) if cfg.lm_loss_weight > 0 else None
        self.step += 1
        return {
            "step": self.step,
            "loss": kl_mean + cfg.lm_loss_weight * (ce_mean or 0.0),
            "kl": kl_mean,
            "ce": ce_mean,
            "lr": lr,
            "grad_norm": float(grad_norm),
            "stop": bool(sums[2].item() > 0),
        }

    # ------------------------------------------------------------------------------- validation
    @torch.no_grad()
    def evaluate(self) -> dict[str, float]:
        """Student perplexity and KL(teacher ‖ student) per token at temperature 1 on the validation split."""
        env, cfg = self.env, self.cfg
        self.model.eval()
        rows_all, weights_all = padded_shard(len(self.val_tokens), env.rank, env.world)
        sums = torch.zeros(4, device=self.device, dtype=torch.float64)  # nll, nll tokens, kl, kl tokens
        for start in range(0, len(rows_all), cfg.micro_batch_size):
            rows = rows_all[start : start + cfg.micro_batch_size]
            w = torch.from_numpy(weights_all[start : start + cfg.micro_batch_size]).to(self.device, torch.float64)
            ids, logits, kl = self._forward(rows, self.val_tokens, self.val_cache, temperature=1.0)
            nll = token_nll(logits, ids)
            sums[0] += (nll.sum(-1).double() * w).sum()
            sums[1] += w.sum() * (self.seq_len - 1)
            sums[2] += (kl.sum(-1).double() * w).sum()
            sums[3] += w.sum() * self.seq_len
        all_reduce_sum(sums, env)
        self.model.train()
        nll = (sums[0] / sums[1]).item()
        return {"step": self.step, "val_nll": nll, "val_ppl": math.exp(nll), "val_kl": (sums[2] / sums[3]).item()}

    # ------------------------------------------------------------------------------ checkpoints
    def _load_optimizer(self, osd) -> None:
        if self.fsdp:
            with self._student_only():
                set_optimizer_state_dict(
                    self.root,
                    self.optimizer,
                    osd,
                    options=StateDictOptions(full_state_dict=True, ignore_frozen_params=True),
                )
        else:
            self.optimizer.load_state_dict(osd)

    def _student_only(self):
        """Hide the teacher inside the DistillationModel so that FQN-based state dicts see the student alone."""
        return self.dm.hide_teacher_model() if self.dm is not None else nullcontext()

    def _full_state(self) -> tuple[dict, dict]:
        """(model, optimizer) state dicts with full tensors; complete on rank 0 (a collective under FSDP2)."""
        if self.fsdp:
            opts = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True)
            with self._student_only():
                return get_state_dict(self.root, self.optimizer, options=opts)
        return self.root.state_dict(), self.optimizer.state_dict()

    def save(self) -> None:
        model_sd, optim_sd = self._full_state()
        rngs = gather_object(ckpt.rng_state(), self.env)
        if self.env.is_main:
            state = {"model": model_sd, "optimizer": optim_sd, "scheduler": self.scheduler.state_dict(), "rng": rngs}
            meta = {
                "step": self.step,
                "samples": self.step * self.cfg.global_batch_size,
                "steps": self.steps,
                "seed": self.seed,
                "world_size": self.env.world,
                "state_format": self.state_format,
                "compute": self.precision.compute,
                "config": dataclasses.asdict(self.cfg),
                "history": self.history,
                "evals": self.evals,
            }
            ckpt.save_checkpoint(self.out_dir, state, meta)
        barrier(self.env)

    # ----------------------------------------------------------------------------------- export
    def export(self) -> Path:
        """Save the student as a plain HF checkpoint (safetensors + the student's tokenizer) in out_dir/student."""
        sharded = None
        if self.fsdp:  # gather before export: export restores the student's own class, FSDP's root included
            with self._student_only():
                sharded = get_model_state_dict(
                    self.root,
                    options=StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=True),
                )
        if self.dm is not None:
            student = mtd.export(unwrap(self.model))  # removes the KD hooks and the teacher
        else:
            student = unwrap(self.model)
        if sharded is not None and self.env.is_main:
            student = load_model(self.student_dir, device="cpu", dtype=torch.float32)
            student.load_state_dict(sharded)
        final = self.out_dir / "student"
        if self.env.is_main:
            with staging_dir(final) as tmp:
                student.to(self.precision.frozen_dtype).save_pretrained(tmp, safe_serialization=True)
                write_both_rope_layouts(tmp)
                for name in TOKENIZER_FILES:
                    if (self.student_dir / name).is_file():
                        shutil.copy2(self.student_dir / name, tmp / name)
        barrier(self.env)
        return final

    # ------------------------------------------------------------------------------------- loop
    def run(self, wall_start: float) -> dict[str, Any]:
        cfg, env = self.cfg, self.env
        tokens_per_step = cfg.global_batch_size * self.seq_len
        bar = tqdm(
            total=self.steps,
            initial=self.step,
            desc="[distill]",
            unit="step",
            mininterval=1,
            disable=not (self.progress and env.is_main),
            dynamic_ncols=True,
        )
        try:
            with PreemptFlag() as flag:
                if not self.evals:
                    self._record_eval(self.evaluate(), bar)
                while self.step < self.steps:
                    t0 = time.perf_counter()
                    rec = self.train_step(flag)
                    self.train_time += time.perf_counter() - t0
                    stop = rec.pop("stop")
                    rec["tokens"] = self.step * tokens_per_step
                    self.history.append(rec)
                    tok_s = (self.step - self.start_step) * tokens_per_step / max(self.train_time, 1e-9)
                    self.scalars.add(
                        self.step,
                        {f"train/{k}": rec[k] for k in ("loss", "kl", "ce", "lr", "grad_norm")}
                        | {"train/tokens_per_s": tok_s},
                    )
                    bar.update(1)
                    bar.set_postfix(loss=f"{rec['loss']:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
                    last = self.step == self.steps
                    if self.step % cfg.eval_every == 0 or last:
                        self._record_eval(self.evaluate(), bar)
                    if self.step % cfg.save_every == 0 or last or stop:
                        self.save()
                    if stop and not last:
                        signum = flag.signum or signal.SIGTERM
                        if env.is_main:
                            bar.write(
                                f"[distill] {signal.Signals(signum).name}: checkpoint written at step "
                                f"{self.step}/{self.steps}; exiting with {128 + signum} (re-run to resume)"
                            )
                        raise Preempted(signum, self.step)
        finally:
            bar.close()
            self.scalars.close()
        student_dir = self.export()
        final_eval, final = self.evals[-1], self.history[-1] if self.history else {}
        trained = (self.step - self.start_step) * tokens_per_step
        metrics = {
            "steps": self.steps,
            "tokens": self.steps * tokens_per_step,
            "train_loss": final.get("loss"),
            "train_kl": final.get("kl"),
            "val_ppl": final_eval["val_ppl"],
            "val_kl": final_eval["val_kl"],
            "val_kl_source": f"teacher_cache_top{cfg.topk}" if cfg.teacher_cache else "teacher",
            "tokens_per_s": trained / self.train_time if self.train_time > 0 else None,
            "wall_s": time.perf_counter() - wall_start,
            "resumed_from_step": self.start_step,
            "world_size": env.world,
            "strategy": cfg.strategy if env.distributed else "single",
            "student_dir": str(student_dir),
            "engine": self.precision.record(),
        }
        if env.is_main:
            atomic_write_json(self.out_dir / "history.json", {"train": self.history, "eval": self.evals})
            atomic_write_json(self.out_dir / "metrics.json", metrics)
            plot_loss_curve(
                self.history,
                self.evals,
                self.out_dir / "loss_curve.png",
                title=f"{self.student_dir.name} ← {self.teacher_dir.name}",
            )
        return metrics

    def _record_eval(self, ev: dict, bar) -> None:
        self.evals.append(ev)
        self.scalars.add(ev["step"], {"val/ppl": ev["val_ppl"], "val/kl": ev["val_kl"], "val/nll": ev["val_nll"]})
        if self.env.is_main and self.progress:
            bar.write(
                f"[distill] step {ev['step']}/{self.steps}: val ppl {ev['val_ppl']:.3f}, "
                f"val KL {ev['val_kl']:.5f} nats/token"
            )


def distill(
    teacher_dir: str | Path,
    student_dir: str | Path,
    data_dir: str | Path,
    out_dir: str | Path,
    cfg: DistillConfig,
    engine: EngineConfig,
    seed: int,
    progress: bool = True,
    *,
    cache_dir: str | Path | None = None,
    cache_dtype: str = "float16",
    teacher_digest: str | None = None,
    build_cache: bool = True,
) -> dict[str, Any]:
    """Distill `student_dir` from `teacher_dir` on `data_dir`'s train split; resumes from `out_dir`'s checkpoint.

    Args:
        teacher_dir, student_dir: local Hugging Face folders with the same vocabulary (the student is
            typically a pruned teacher: fewer layers, narrower FFN or hidden size).
        data_dir: folder with train.npy and validation.npy, int32 [num_sequences, seq_len].
        out_dir: run folder; an existing checkpoint/ there is resumed (same settings and seed required).
        cfg: distillation settings; global_batch_size sequences per optimizer step whatever the
            number of processes (micro_batch_size × accumulation × WORLD_SIZE).
        engine: device / dtype / threads. The teacher runs in the resolved compute dtype (bf16 where the
            hardware has it: compactlm.model.precision); the student trains with float32 weights and AdamW
            state under autocast to it and is saved in it.
        seed: data order and RNG seed.
        progress: tqdm bar (rank 0) with loss, tokens/s and ETA.
        cache_dir: where the teacher cache lives (default out_dir/teacher_cache), cfg.teacher_cache=True only.
        cache_dtype: "float16" or "float32" storage of cached teacher log-probs.
        teacher_digest: `compactlm.manifest.path_digest(teacher_dir)` when the caller has it already (the model
            stage's manifest records it); None hashes the teacher's files again (a 22 GB teacher takes a minute).
        build_cache: False when `cache_dir` holds a cache another stage built (the search's teacher_cache): a
            cache that does not match is an error instead of being rebuilt under readers' feet.

    Returns:
        metrics: steps, tokens (trained in total), train_loss / train_kl (last step, nats per token),
        val_ppl, val_kl (KL(teacher ‖ student) per token at T=1; from the top-k cache when
        teacher_cache), tokens_per_s (training steps of this call), wall_s, resumed_from_step, ...

    Raises:
        Preempted: SIGTERM / SIGUSR1 arrived; a checkpoint was written (exit code 143 / 138).
        ConfigError: batch sizes that do not divide, or a checkpoint written with other settings.

    Under torchrun (WORLD_SIZE > 1) every process calls this; only rank 0 writes files and out_dir must
    be on a filesystem all processes see. Single-process CPU runs are bitwise reproducible across
    interruption and resumption (same engine.threads).
    """
    wall_start = time.perf_counter()
    trainer = _Trainer(
        teacher_dir,
        student_dir,
        data_dir,
        out_dir,
        cfg,
        engine,
        seed,
        progress,
        cache_dir,
        cache_dtype,
        teacher_digest,
        build_cache,
    )
    try:
        trainer.setup()
        return trainer.run(wall_start)
    finally:
        trainer.env.shutdown()
