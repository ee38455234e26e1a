"""DPO-Positive on TRL's DPOTrainer: the loss equals eq. 3 of Smaug (Pal et al. 2024) computed directly from a
tiny model's log-probabilities, and with λ = 0 equals TRL's own sigmoid (plain DPO) loss."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_tiny_model

from compactlm.align.train import CHATML

trl = pytest.importorskip("trl")


def _trainer(tmp_path, tokenizer, lam, policy, ref, cls=None):
    from datasets import Dataset
    from trl import DPOConfig

    from compactlm.align.dpop import DPOPTrainer

    tok = tokenizer
    tok.chat_template = CHATML
    rows = [
        {
            "prompt": [{"role": "user", "content": f"Say {w}."}],
            "chosen": [{"role": "assistant", "content": f"{w} {w}, as asked."}],
            "rejected": [{"role": "assistant", "content": f"No. {i}"}],
        }
        for i, w in enumerate(["yes", "class", "def", "return"])
    ]
    args = DPOConfig(
        output_dir=str(tmp_path / "out"),
        per_device_train_batch_size=4,
        max_length=64,
        beta=0.3,
        report_to=[],
        use_cpu=True,
        loss_type=["sigmoid"],
        seed=0,
    )
    kw = dict(model=policy, ref_model=ref, args=args, train_dataset=Dataset.from_list(rows), processing_class=tok)
    return DPOPTrainer(**kw, dpop_lambda=lam) if cls is None else cls(**kw)


def _batch(trainer):
    return trainer._prepare_inputs(next(iter(trainer.get_train_dataloader())))


def _direct(model, batch):
    """Sum of log π over each sequence's completion tokens, computed from the logits."""
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, :-1].float()
    token_logps = torch.log_softmax(logits, -1).gather(2, batch["input_ids"][:, 1:, None])[..., 0]
    return (token_logps * batch["completion_mask"][:, 1:]).sum(1).chunk(2)


def test_dpop_loss_equals_the_formula_and_plain_dpo_at_lambda_zero(tmp_path, tiny_tokenizer):
    from trl import DPOTrainer

    policy, ref = build_tiny_model("llama", seed=1).float(), build_tiny_model("llama", seed=0).float()
    lam = 5.0
    trainer = _trainer(tmp_path, tiny_tokenizer, lam, policy, ref)
    batch = _batch(trainer)
    policy.eval()
    loss = trainer.compute_loss(trainer.model, batch).item()
    c, r = _direct(policy, batch)
    c0, r0 = _direct(ref, batch)
    penalty = torch.clamp(c0 - c, min=0)
    assert (penalty > 0).any(), "the test needs pairs where the chosen answer lost likelihood"
    expected = -F.logsigmoid(0.3 * ((c - c0) - (r - r0) - lam * penalty)).mean().item()
    assert loss == pytest.approx(expected, rel=1e-4, abs=1e-5)
    assert trainer._metrics["eval"]["dpop/penalty"][-1] == pytest.approx(penalty.mean().item(), rel=1e-4)
    # λ = 0: exactly TRL's sigmoid loss on the same batch (and not the λ = 5 value)
    zero = _trainer(tmp_path, tiny_tokenizer, 0.0, policy, ref).compute_loss(policy, batch).item()
    plain = _trainer(tmp_path, tiny_tokenizer, 0.0, policy, ref, cls=DPOTrainer).compute_loss(policy, batch).item()
    assert zero == pytest.approx(plain, rel=1e-6) and abs(zero - loss) > 1e-3
    # TRL pads and batches the pair its own way: on a CPU without bf16 kernels (AMD EPYC, float32) its summed
    # log-probs differ from the direct ones by float32 rounding, 4.4e-4 in the loss here (1e-4 held on AMX/AVX512-BF16
    # machines); the lambda = 5 loss above is > 1e-3 away, so this still tells the two losses apart
    assert plain == pytest.approx(-F.logsigmoid(0.3 * ((c - c0) - (r - r0))).mean().item(), rel=1e-4, abs=1e-3)
