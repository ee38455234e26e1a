"""Logit distillation of a pruned student from its teacher (engine=torch), and the distill stage
(`compactlm.distill.stage`).

`compactlm.distill.train.distill()` trains with ModelOpt's `modelopt.torch.distill` KL loss (or from a cached
top-k of the teacher's logits), under one process or torchrun (DDP / FSDP2), resumable after any interruption,
and exports the student as a plain Hugging Face checkpoint. Users run it through `launch.py` (recipe=prune_distill);
from Python, call `distill()` directly.
"""

CHUNK_ELEMENTS = 1 << 24
"""Float32 elements of one slice of `losses.per_token_chunked` (64 MiB per temporary): rows = CHUNK_ELEMENTS // vocab.
Here, torch-free, so that the launcher's plan (`compactlm.launch.plan`) sizes the same slices."""
