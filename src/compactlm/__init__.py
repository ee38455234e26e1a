"""compactlm: make LLMs smaller and faster with Minitron pruning, distillation and quantization."""

__version__ = "0.1.0"
