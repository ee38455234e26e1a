"""Minitron structured pruning on Hugging Face decoders, and its two stages (`compactlm.prune.stage`).

scores = importance.collect_importance(model, adapter, batches)          # forward-only hooks
slicing.prune_model(model, adapter, scores, {"num_layers": 40, "ffn_hidden_size": 11264})
slicing.save_pruned(model, tokenizer, out_dir)
"""
