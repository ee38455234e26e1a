"""Logit distillation of a pruned student from its teacher (engine=torch).

`distill()` trains with ModelOpt's `modelopt.torch.distill` KL loss (or from a cached top-k of the
teacher's logits), under one process or torchrun (DDP / FSDP2), resumable after any interruption, and
exports the student as a plain Hugging Face checkpoint. CLI: `python -m compactlm.distill.train --help`.

Attributes are imported lazily: `import compactlm.distill` does not import torch or ModelOpt.
"""

__all__ = ["Preempted", "distill", "lr_at", "total_steps"]


def __getattr__(name):
    if name in __all__:
        from compactlm.distill import train

        return getattr(train, name)
    raise AttributeError(f"module 'compactlm.distill' has no attribute {name!r}")
