"""The release stage: the run's final model, its quantized export and GGUF files, Ollama Modelfiles and a model card
that carries what the run measured, in `<run>/release/`, with SHA256SUMS (release/stage.py), and its upload to the
Hub (release/upload.py)."""
