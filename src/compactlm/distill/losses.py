"""Distillation losses per token: full-vocabulary KL (through ModelOpt) and the top-k teacher-cache KL.

Both return one value per token, shape [batch, seq], in float32; the trainer sums them and divides by
the number of tokens in the whole optimizer step (all micro-batches, all processes), so the loss it
optimizes is the mean KL per token whatever the micro-batch size, accumulation or world size.

Why not ModelOpt's default reduction: `LogitsDistillationLoss(reduction="mean")` calls
`F.kl_div(..., reduction="mean")`, which divides by batch × seq × vocab — every vocabulary entry counts as
an element — so the "mean" is the per-token KL divided by the vocabulary size. With `reduction="none"`
ModelOpt sums over the vocabulary and leaves [batch, seq] to us.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from modelopt.torch.distill import LogitsDistillationLoss


class PerTokenKL(LogitsDistillationLoss):
    """T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) for every token.

    Args (forward):
        logits_s: student logits [B, S, V] (any float dtype; upcast to float32).
        logits_t: teacher logits [B, S, V].
        temperature: override the training temperature for this call (validation uses 1.0).

    Returns:
        [B, S] float32, in nats (times T²).
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature=temperature, reduction="none")

    def forward(self, logits_s: torch.Tensor, logits_t: torch.Tensor, temperature: float | None = None):
        if temperature is not None and temperature != self._temperature:
            return PerTokenKL(temperature)(logits_s, logits_t)
        return super().forward(logits_s.float(), logits_t.float())


def teacher_topk(logits_t: torch.Tensor, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """The teacher's k most likely tokens: (log-probs at `temperature` [B, S, k] float32, ids [B, S, k] int32)."""
    logp = F.log_softmax(logits_t.float() / temperature, dim=-1)
    values, ids = logp.topk(k, dim=-1)
    return values, ids.to(torch.int32)


class TopKDistillationLoss(LogitsDistillationLoss):
    """KL between the teacher and the student over the teacher's top-k tokens plus one "tail" bucket.

    The cache holds, per token, the teacher's log-probabilities log p_i (at temperature T) of its k most
    likely ids. The vocabulary is coarsened into k + 1 outcomes — the k ids, and "any other id" — and the
    loss is the exact KL between the two coarsened distributions:

        KL = Σ_{i ∈ topk} p_i (log p_i − log q_i)  +  p_tail (log p_tail − log q_tail)
        p_tail = 1 − Σ p_i,   q_i = softmax(z_s / T)_i (over the FULL vocabulary),   q_tail = 1 − Σ q_i

    times T². The teacher is not renormalized: its tail mass is kept, so the student is pushed to put the
    same total mass outside the top-k, not zero. This is a lower bound of the full KL (coarsening never
    increases KL) and equals it exactly when k is the vocabulary size (p_tail = 0).

    Args (forward):
        logits_s: student logits [B, S, V].
        teacher_logp: cached teacher log-probs [B, S, k] at the cache's temperature (fp16 or fp32).
        teacher_ids: cached teacher token ids [B, S, k] (int32 or int64).
        temperature: temperature for the student's softmax; must equal the cache's temperature.

    Returns:
        [B, S] float32 (times T²).
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature=temperature, reduction="none")

    def forward(self, logits_s, teacher_logp, teacher_ids, temperature: float | None = None):
        t = self._temperature if temperature is None else temperature
        log_q = F.log_softmax(logits_s.float() / t, dim=-1)
        log_q_k = log_q.gather(-1, teacher_ids.long())
        log_p_k = teacher_logp.float()
        p_k = log_p_k.exp()
        head = (p_k * (log_p_k - log_q_k)).sum(-1)
        p_tail = (1.0 - p_k.sum(-1)).clamp_min(0.0)
        # log(1 − Σq_i) = log(−expm1(logsumexp(log q_i))); clamped so that p_tail = 0 gives 0, not NaN.
        log_q_tail = (-torch.expm1(torch.logsumexp(log_q_k, dim=-1))).clamp_min(1e-30).log()
        tail = torch.xlogy(p_tail, p_tail) - p_tail * log_q_tail
        return (head + tail) * t**2
