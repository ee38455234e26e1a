"""Inference speed of the teacher vs the student (`speed`: TTFT, TPOT, tokens/s, peak memory with transformers'
generate) and the bench stage (`compactlm.bench.stage`). Not the repository's top-level `benchmarks/` scripts, which
measure compactlm itself."""
