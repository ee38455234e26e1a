"""GGUF export for llama.cpp: locating or building llama.cpp (`llamacpp`), conversion, quantization and
verification against the source checkpoint (`convert`), llama.cpp's own perplexity and serving benchmark
(`measure`), and the gguf stage (`compactlm.gguf.stage`).

`llamacpp` and `convert` import neither torch nor transformers at module level: config validation reads them.
"""
