"""Per-token KL (through ModelOpt's LogitsDistillationLoss) and the top-k teacher-cache KL."""

import gc
import math
import weakref

import pytest
import torch
import torch.nn.functional as F
from modelopt.torch.distill import LogitsDistillationLoss

from compactlm.distill.losses import PerTokenKL, TopKDistillationLoss, per_token_chunked, teacher_topk, token_nll

B, S, V = 2, 5, 50


def _logits(seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, S, V, generator=g) * 3


def _manual_kl(zs, zt, t=1.0):
    p = F.softmax(zt / t, -1)
    return (p * (p.log() - F.log_softmax(zs / t, -1))).sum(-1) * t * t


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_per_token_kl_matches_definition(t):
    zs, zt = _logits(0), _logits(1)
    kl = PerTokenKL(t)(zs, zt)
    assert kl.shape == (B, S) and kl.dtype == torch.float32
    torch.testing.assert_close(kl, _manual_kl(zs, zt, t), rtol=1e-5, atol=1e-6)
    # Same value as ModelOpt's own loss with reduction="none" (which sums over the vocabulary).
    torch.testing.assert_close(kl, LogitsDistillationLoss(t, reduction="none")(zs, zt), rtol=1e-5, atol=1e-6)
    # The validation override: temperature 1 whatever the training temperature.
    torch.testing.assert_close(PerTokenKL(t)(zs, zt, temperature=1.0), _manual_kl(zs, zt), rtol=1e-5, atol=1e-6)


@pytest.mark.filterwarnings("ignore:reduction")
def test_modelopt_mean_reduction_divides_by_vocab():
    """Why we reduce ourselves: ModelOpt's default 'mean' is the per-token KL divided by the vocabulary size."""
    zs, zt = _logits(0), _logits(1)
    per_token = PerTokenKL()(zs, zt).mean()
    torch.testing.assert_close(LogitsDistillationLoss()(zs, zt), per_token / V)


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_topk_with_whole_vocab_equals_full_kl_and_gradient(t):
    zs, zt = _logits(2).requires_grad_(), _logits(3)
    values, ids, tail = teacher_topk(zt, V, t)
    assert torch.isneginf(tail).all()
    topk = TopKDistillationLoss(t)(zs, values, ids, tail)
    full = PerTokenKL(t)(zs, zt)
    torch.testing.assert_close(topk, full, rtol=1e-5, atol=1e-6)
    (g_topk,) = torch.autograd.grad(topk.sum(), zs)
    (g_full,) = torch.autograd.grad(full.sum(), zs)
    torch.testing.assert_close(g_topk, g_full, rtol=1e-4, atol=1e-6)


def test_topk_is_a_lower_bound_with_finite_gradients():
    zs, zt = _logits(4).requires_grad_(), _logits(5)
    full = PerTokenKL()(zs, zt)
    for k in (1, 5, 20):
        values, ids, tail = teacher_topk(zt, k, 1.0)
        torch.testing.assert_close(values.exp().sum(-1) + tail.exp(), torch.ones(B, S))
        loss = TopKDistillationLoss()(zs, values, ids, tail)
        assert (loss <= full + 1e-5).all() and (loss >= -1e-6).all()
        (g,) = torch.autograd.grad(loss.sum(), zs)
        assert torch.isfinite(g).all()
    # A student equal to the teacher has zero loss.
    values, ids, tail = teacher_topk(zt, 7, 1.0)
    assert TopKDistillationLoss()(zt, values, ids, tail).abs().max() < 1e-5


def test_topk_tail_is_not_lost_to_rounding():
    """A confident teacher has a tail far below float32 resolution of 1 − Σp; it is still counted."""
    zt = torch.full((1, 1, V), -30.0)
    zt[..., 0] = 0.0
    zs = torch.zeros(1, 1, V)
    values, ids, tail = teacher_topk(zt, 1, 1.0)
    expected = float(_manual_kl(zs, zt))
    got = float(TopKDistillationLoss()(zs, values, ids, tail))
    assert math.isclose(got, expected, rel_tol=1e-5)


# ----------------------------------------------------------------------------------- sliced computation
def _saved_bytes(fn):
    """Bytes of the tensors the graph `fn()` returns still keeps for its backward (saved and still alive)."""
    saved = []

    def pack(t):
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    gc.collect()
    alive = {id(t): t for t in (r() for r in saved) if t is not None}
    return out, sum(t.numel() * t.element_size() for t in alive.values())


@pytest.mark.parametrize("t", [1.0, 2.0])
def test_sliced_kl_equals_whole_kl_value_and_gradient(t):
    """Two rows per slice (5 slices of 10 tokens): the same value and gradient as the unsliced formula."""
    zs, zt = _logits(6).requires_grad_(), _logits(7)
    g_out = torch.rand(B, S)
    sliced = per_token_chunked(lambda a, b: _manual_kl(a, b, t), zs, zt, chunk_elements=2 * V)
    whole = _manual_kl(zs, zt, t)
    torch.testing.assert_close(sliced, whole, rtol=1e-5, atol=1e-6)
    (g_sliced,) = torch.autograd.grad(sliced, zs, g_out)
    (g_whole,) = torch.autograd.grad(whole, zs, g_out)
    torch.testing.assert_close(g_sliced, g_whole, rtol=1e-5, atol=1e-6)
    # PerTokenKL goes through the same slicing.
    (g_kl,) = torch.autograd.grad(PerTokenKL(t)(zs, zt), zs, g_out)
    torch.testing.assert_close(g_kl, g_whole, rtol=1e-5, atol=1e-6)


def test_sliced_kl_keeps_one_gradient_in_the_logits_dtype():
    """The graph holds one [B, S, V] tensor (the gradient, bf16 for bf16 logits) instead of float32 copies."""
    zs = _logits(8).to(torch.bfloat16).requires_grad_()
    zt = _logits(9).to(torch.bfloat16)
    logits_bytes = zs.numel() * zs.element_size()
    kl, saved = _saved_bytes(lambda: PerTokenKL()(zs, zt))
    assert saved == logits_bytes
    _, unsliced = _saved_bytes(lambda: _manual_kl(zs.float(), zt.float()))
    assert unsliced >= 2 * zs.numel() * 4  # what the plain formula keeps: float32 copies of [B, S, V]
    (g,) = torch.autograd.grad(kl.sum(), zs)
    assert g.dtype == torch.bfloat16
    (ref,) = torch.autograd.grad(_manual_kl(zs.float(), zt.float()).sum(), zs)
    torch.testing.assert_close(g.float(), ref.float(), rtol=2e-2, atol=2e-3)


def test_token_nll_equals_cross_entropy():
    z = _logits(10).requires_grad_()
    ids = torch.randint(0, V, (B, S), generator=torch.Generator().manual_seed(0))
    nll = token_nll(z, ids)
    ref = F.cross_entropy(z[:, :-1].transpose(1, 2), ids[:, 1:], reduction="none")
    assert nll.shape == (B, S - 1)
    torch.testing.assert_close(nll, ref)
    torch.testing.assert_close(torch.autograd.grad(nll.sum(), z)[0], torch.autograd.grad(ref.sum(), z)[0])


def test_sliced_topk_equals_whole_formula():
    zs, zt = _logits(11).requires_grad_(), _logits(12)
    values, ids, tail = teacher_topk(zt, 7, 1.0)
    loss = TopKDistillationLoss()
    sliced = per_token_chunked(lambda *a: loss(*a), zs, values, ids, tail, chunk_elements=V)
    whole = loss(zs, values, ids, tail)  # itself sliced at the default size: one slice here
    torch.testing.assert_close(sliced, whole)
    torch.testing.assert_close(torch.autograd.grad(sliced.sum(), zs)[0], torch.autograd.grad(whole.sum(), zs)[0])


def test_teacher_topk_sliced_equals_whole(monkeypatch):
    """teacher_topk works a slice of tokens at a time: the same values, ids and tails as one pass."""
    import compactlm.distill.losses as losses

    zt = _logits(13)
    whole = teacher_topk(zt, 5, 2.0)
    monkeypatch.setattr(losses, "CHUNK_ELEMENTS", 3 * V)  # 3 tokens per slice: 4 slices of 10 tokens
    assert len(losses._token_slices(zt, losses.CHUNK_ELEMENTS)) == 4
    sliced = teacher_topk(zt, 5, 2.0)
    for a, b in zip(whole, sliced):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b)
