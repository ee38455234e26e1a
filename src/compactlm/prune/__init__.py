"""Minitron structured pruning on Hugging Face decoders: importance scoring, slicing, plots.

    scores = collect_importance(model, adapter, batches)          # forward-only hooks
    prune_model(model, adapter, scores, {"num_layers": 40, "ffn_hidden_size": 11264})
    save_pruned(model, tokenizer, out_dir)

Submodules import torch; they are loaded on first attribute access so `import compactlm.prune` stays cheap.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "ImportanceScores": "importance",
    "collect_importance": "importance",
    "lm_loss_block_scores": "importance",
    "add_lm_loss_scores": "importance",
    "select_layers": "importance",
    "skipped_layers": "importance",
    "prune_model": "slicing",
    "validate_export_config": "slicing",
    "save_pruned": "slicing",
    "plot_depth": "plots",
    "plot_width": "plots",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
