"""DPO-Positive (Smaug, Pal et al. 2024, eq. 3) on top of TRL's DPOTrainer.

    L = −log σ( β · [ (log π(y_w|x) − log π_ref(y_w|x)) − (log π(y_l|x) − log π_ref(y_l|x))
                      − λ · max(0, log π_ref(y_w|x) − log π(y_w|x)) ] )

Plain DPO only widens the gap between chosen and rejected, and can do so by lowering both; the penalty grows as
soon as the chosen answer's log-likelihood falls below the reference's, which keeps it up. λ = 0 is TRL's
`sigmoid` loss exactly.

TRL 1.16 computes its losses inside `DPOTrainer._compute_loss`; this trainer lets TRL do everything it does
(tokenization, the reference pass, every logged metric, with loss_type=sigmoid) and replaces only the returned
loss, computed from the sequence log-probabilities of that same forward pass (read with forward hooks).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from trl import DPOTrainer


def dpop_loss(
    chosen_logps: torch.Tensor,
    rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    lam: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(per-pair loss, per-pair penalty max(0, log π_ref(y_w) − log π(y_w))) from sequence log-probabilities."""
    penalty = torch.clamp(ref_chosen_logps - chosen_logps, min=0)
    logits = (chosen_logps - ref_chosen_logps) - (rejected_logps - ref_rejected_logps) - lam * penalty
    return -F.logsigmoid(beta * logits), penalty


class DPOPTrainer(DPOTrainer):
    """TRL's DPOTrainer (run with loss_type=["sigmoid"]) whose loss is DPO-Positive with λ = `dpop_lambda`."""

    def __init__(self, *args: Any, dpop_lambda: float, **kwargs: Any):
        super().__init__(*args, **kwargs)
        if (
            list(self.loss_types) != ["sigmoid"]
            or self.ld_alpha is not None
            or self.use_weighting
            or self.aux_loss_enabled
        ):
            raise ValueError(
                "DPOPTrainer runs TRL's DPO with loss_type=['sigmoid'], no ld_alpha, no weighting and a "
                "dense model (no MoE router loss)"
            )
        self.dpop_lambda = float(dpop_lambda)
        self._logps: dict[str, torch.Tensor] = {}
        self.accelerator.unwrap_model(self.model).register_forward_hook(self._keep("policy"))
        if self.ref_model is not None:
            self.ref_model.register_forward_hook(self._keep("reference"))

    def _keep(self, name: str):
        def hook(_module, _args, output):
            log_probs = getattr(output, "log_probs", None)
            if log_probs is not None:  # the fused-head forward TRL runs for the loss
                self._logps[name] = log_probs

        return hook

    def sequence_logps(
        self, per_token: torch.Tensor, completion_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(chosen, rejected) sums of completion-token log-probabilities; the batch is [chosen; rejected]."""
        mask = completion_mask[..., 1:]
        return (per_token[:, -mask.size(1) :] * mask).sum(dim=1).chunk(2, dim=0)

    def _compute_loss(self, model, inputs, return_outputs):
        self._logps.clear()
        out = super()._compute_loss(model, inputs, return_outputs)
        mask = inputs["completion_mask"]
        chosen, rejected = self.sequence_logps(self._logps["policy"], mask)
        if "ref_chosen_logps" in inputs:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]
        else:
            ref_chosen, ref_rejected = self.sequence_logps(self._logps["reference"], mask)
        per_pair, penalty = dpop_loss(chosen, rejected, ref_chosen, ref_rejected, self.beta, self.dpop_lambda)
        loss = per_pair.mean()
        mode = "train" if self.model.training else "eval"
        self._metrics[mode]["dpop/penalty"].append(self.accelerator.gather(penalty.detach()).mean().item())
        self._metrics[mode]["dpop/sigmoid_loss"].append((out[0] if return_outputs else out).detach().item())
        return (loss, out[1]) if return_outputs else loss
