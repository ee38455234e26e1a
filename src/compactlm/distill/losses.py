"""Distillation losses per token: full-vocabulary KL (through ModelOpt) and the top-k teacher-cache KL.

Both return one value per token, shape [batch, seq], in float32; the trainer sums them and divides by
the number of tokens in the whole optimizer step (all micro-batches, all processes), so the loss it
optimizes is the mean KL per token whatever the micro-batch size, accumulation or world size.

Why not ModelOpt's default reduction: `LogitsDistillationLoss(reduction="mean")` calls
`F.kl_div(..., reduction="mean")`, which divides by batch × seq × vocab — every vocabulary entry counts as
an element — so the "mean" is the per-token KL divided by the vocabulary size. With `reduction="none"`
ModelOpt sums over the vocabulary and leaves [batch, seq] to us.

Memory: a [batch, seq, vocab] float32 tensor is the largest thing in a distillation step (Bielik's vocabulary
at sequence 8192 is 1 GiB per sequence). Both losses run through `per_token_chunked`, which computes the loss
and its gradient a slice of tokens at a time and keeps only the gradient (in the logits' dtype) for the
backward pass, so no float32 copy of the whole logits outlives a slice.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from modelopt.torch.distill import LogitsDistillationLoss

from compactlm.distill import CHUNK_ELEMENTS


def _token_slices(logits: torch.Tensor, chunk_elements: int):
    """Slices of the flattened tokens of `logits` [..., V], each holding about `chunk_elements` logits."""
    n, vocab = logits.shape[:-1].numel(), logits.shape[-1]
    rows = max(1, chunk_elements // vocab)
    return [slice(a, a + rows) for a in range(0, n, rows)]


class _PerTokenChunked(torch.autograd.Function):
    """loss_fn applied to slices of tokens; the gradient of the sum is computed in forward, slice by slice."""

    @staticmethod
    def forward(ctx, loss_fn, slices, logits, *others):
        lead = logits.shape[:-1]
        z = logits.reshape(-1, logits.shape[-1])
        flat = [o.reshape(z.shape[0], *o.shape[len(lead) :]) for o in others]
        out = torch.empty(z.shape[0], dtype=torch.float32, device=z.device)
        need_grad = ctx.needs_input_grad[2]
        grad = torch.empty_like(z) if need_grad else None
        for sl in slices:
            if need_grad:
                with torch.enable_grad():
                    piece = z[sl].detach().requires_grad_(True)
                    loss = loss_fn(piece, *(o[sl] for o in flat))
                    (g,) = torch.autograd.grad(loss.sum(), piece)
                grad[sl] = g
                out[sl] = loss.detach()
            else:
                out[sl] = loss_fn(z[sl], *(o[sl] for o in flat))
        if need_grad:
            ctx.save_for_backward(grad)
        ctx.logits_shape = logits.shape
        return out.reshape(lead)

    @staticmethod
    def backward(ctx, grad_out):
        (grad,) = ctx.saved_tensors
        g = grad * grad_out.reshape(-1, 1).to(grad.dtype)
        return (None, None, g.reshape(ctx.logits_shape), *(None,) * (len(ctx.needs_input_grad) - 3))


def per_token_chunked(loss_fn, logits: torch.Tensor, *others: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS):
    """`loss_fn(logits, *others)` per token, computed on slices of tokens; differentiable in `logits` only.

    Args:
        loss_fn: maps (logits [n, V], *others [n, ...]) to a per-token loss [n] (float32).
        logits: [..., V]; the gradient w.r.t. it is kept in its dtype (bf16 logits: a bf16 gradient).
        others: tensors with the same leading dimensions (teacher logits, cached log-probs, targets, ...).
        chunk_elements: about how many logits one slice holds.

    Returns:
        the per-token loss, shape logits.shape[:-1], float32. Equal to applying `loss_fn` to the whole tensors.
    """
    return _PerTokenChunked.apply(loss_fn, _token_slices(logits, chunk_elements), logits, *others)


def _kl_rows(zs: torch.Tensor, zt: torch.Tensor, t: float) -> torch.Tensor:
    zs, zt = zs.float(), zt.float()
    if t != 1.0:
        zs, zt = zs / t, zt / t
    log_q = F.log_softmax(zs, dim=-1)
    log_p = F.log_softmax(zt, dim=-1).detach()
    return F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(-1) * t**2


def token_nll(logits: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """Next-token negative log-likelihood [B, S - 1] of ids [B, S] under logits [B, S, V], sliced like the KL.

    The last position has no next token: its logits are never turned into a float32 copy of the shifted tensor.
    """
    targets = torch.cat([ids[:, 1:], ids.new_full((ids.shape[0], 1), -100)], dim=1)
    nll = per_token_chunked(lambda z, y: F.cross_entropy(z.float(), y, reduction="none"), logits, targets)
    return nll[:, :-1]


class PerTokenKL(LogitsDistillationLoss):
    """T² · KL(softmax(z_t / T) ‖ softmax(z_s / T)) for every token.

    The value of ModelOpt's `LogitsDistillationLoss(temperature, reduction="none")` (tests check it), computed
    with the teacher in log space (`kl_div(..., log_target=True)`) and without dividing by T when T = 1:
    ModelOpt's form takes the teacher's softmax and then its log inside `kl_div`, which is two more passes
    over [B, S, V] — a third of the step time for a small student with a large vocabulary.

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
        t = self._temperature if temperature is None else temperature
        return per_token_chunked(lambda zs, zt: _kl_rows(zs, zt, t), logits_s, logits_t)


# Log-prob given to masked-out ids: exp(-1e4) is 0 in float32, yet a fully masked row stays finite.
_MASKED = -1e4


def _tail_logsumexp(logp: torch.Tensor, ids: torch.Tensor, fill: float) -> torch.Tensor:
    """log Σ_{j ∉ ids} exp(logp_j) per token, computed directly (no 1 − Σ cancellation): [B, S]."""
    return torch.logsumexp(logp.scatter(-1, ids.long(), fill), dim=-1)


def teacher_topk(logits_t: torch.Tensor, k: int, temperature: float):
    """The teacher's k most likely tokens at `temperature`.

    Returns:
        values [B, S, k] float32: log-probs of the k ids, most likely first.
        ids [B, S, k] int32.
        tail [B, S] float32: log of the probability mass outside the k ids (-inf when k = vocab).
    """
    flat = logits_t.reshape(-1, logits_t.shape[-1])
    parts = []
    for sl in _token_slices(logits_t, CHUNK_ELEMENTS):  # sliced like the losses: no float32 copy of the whole logits
        logp = F.log_softmax(flat[sl].float() / temperature, dim=-1)
        values, ids = logp.topk(k, dim=-1)
        parts.append((values, ids.to(torch.int32), _tail_logsumexp(logp, ids, float("-inf"))))
    lead = logits_t.shape[:-1]
    values, ids, tail = (torch.cat(p) for p in zip(*parts))
    return values.reshape(*lead, k), ids.reshape(*lead, k), tail.reshape(lead)


class TopKDistillationLoss(LogitsDistillationLoss):
    """KL between the teacher and the student over the teacher's top-k tokens plus one "tail" bucket.

    The cache holds, per token, the teacher's log-probabilities log p_i (at temperature T) of its k most
    likely ids and the log of its remaining mass log p_tail. The vocabulary is coarsened into k + 1
    outcomes — the k ids, and "any other id" — and the loss is the exact KL between the two coarsened
    distributions:

        KL = Σ_{i ∈ topk} p_i (log p_i − log q_i)  +  p_tail (log p_tail − log q_tail)
        q = softmax(z_s / T) over the FULL vocabulary,   q_tail = Σ_{j ∉ topk} q_j

    times T². The teacher is not renormalized: its tail mass is kept, so the student is pushed to put the
    same total mass outside the top-k, not zero. This is a lower bound of the full KL (coarsening never
    increases KL) and equals it when k is the vocabulary size (p_tail = 0). Both tails are log-sum-exps
    over the ids outside the top-k, not 1 − Σ, so a tiny tail is not lost to rounding.

    Args (forward):
        logits_s: student logits [B, S, V].
        teacher_logp: cached teacher log-probs [B, S, k] at the cache's temperature (fp16 or fp32).
        teacher_ids: cached teacher token ids [B, S, k] (int32 or int64).
        teacher_tail: cached log of the teacher's mass outside the ids [B, S] (may be -inf).
        temperature: temperature of the student's softmax; must equal the cache's temperature.

    Returns:
        [B, S] float32 (times T²).
    """

    def __init__(self, temperature: float = 1.0):
        super().__init__(temperature=temperature, reduction="none")

    def forward(self, logits_s, teacher_logp, teacher_ids, teacher_tail, temperature: float | None = None):
        t = self._temperature if temperature is None else temperature
        return per_token_chunked(
            lambda z, lp, i, tl: _topk_kl_rows(z, lp, i, tl, t), logits_s, teacher_logp, teacher_ids, teacher_tail
        )


def _topk_kl_rows(logits_s, teacher_logp, teacher_ids, teacher_tail, t: float) -> torch.Tensor:
    ids = teacher_ids.long()
    log_q = F.log_softmax(logits_s.float() / t, dim=-1)
    log_p = teacher_logp.float()
    p = log_p.exp()
    head = (p * (log_p - log_q.gather(-1, ids))).sum(-1)
    p_tail = teacher_tail.float().exp()
    tail = torch.xlogy(p_tail, p_tail) - p_tail * _tail_logsumexp(log_q, ids, _MASKED)
    return (head + tail) * t**2
