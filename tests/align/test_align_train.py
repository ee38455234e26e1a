"""TRL's arguments from the shared training vocabulary: the defaults give the Trainer exactly the arguments the
align stages passed before the vocabulary was shared, and min_lr reaches the Trainer's own schedule."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import get_scheduler
from trl import SFTConfig as TRLSFTConfig

from compactlm.align.schema import GRPOConfig, SFTConfig
from compactlm.align.train import trainer_args
from compactlm.model.precision import Precision

FP32 = Precision(device="cpu", compute="float32", reason="test")


def _args(cfg, tmp_path):
    return trainer_args(TRLSFTConfig, cfg, tmp_path, "cpu", FP32, seed=1234)


@pytest.mark.parametrize("cfg", [SFTConfig(), GRPOConfig()], ids=["sft", "grpo"])
def test_defaults_give_the_trainer_todays_arguments(cfg, tmp_path):
    args = _args(cfg, tmp_path)
    assert args.lr_scheduler_type == "cosine" and not args.lr_scheduler_kwargs
    assert args.warmup_steps == math.floor(0.1 * cfg.max_steps)  # the old warmup_ratio arithmetic
    assert (args.learning_rate, args.max_steps, args.save_steps) == (cfg.lr, cfg.max_steps, 8)
    assert (args.weight_decay, args.max_grad_norm) == (0.0, 1.0)  # the Trainer's defaults
    assert args.per_device_train_batch_size == cfg.micro_batch_size == {"sft": 4, "grpo": 8}[cfg.section]
    assert args.gradient_accumulation_steps == 1


def test_shared_knobs_reach_the_trainer(tmp_path):
    cfg = SFTConfig(lr=1e-3, min_lr=1e-4, warmup_steps=3, max_steps=20, weight_decay=0.1, grad_clip=0.5, save_every=5)
    args = _args(cfg, tmp_path)
    assert (args.warmup_steps, args.weight_decay, args.max_grad_norm, args.save_steps) == (3, 0.1, 0.5, 5)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=args.learning_rate)
    sched = get_scheduler(
        args.lr_scheduler_type, opt, 3, args.max_steps, scheduler_specific_kwargs=args.lr_scheduler_kwargs
    )
    lrs = []
    for _ in range(args.max_steps):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[3] == pytest.approx(1e-3) and min(lrs[3:]) >= 1e-4 - 1e-12
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-4)  # the cosine ends at min_lr, not at zero
