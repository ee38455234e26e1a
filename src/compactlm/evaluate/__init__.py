"""Measuring the run's models: held-out perplexity, KL and top-1 agreement to the teacher, decoding speed
(`quality`), task accuracy through lm-evaluation-harness (`lmeval`, tasks in `lm_eval_tasks/`), and the evaluate
stage (`compactlm.evaluate.stage`)."""
