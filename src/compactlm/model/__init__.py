"""The teacher: loading (hub ids, local folders, GGUF files shipped in packages), parameter accounting, and the
model stage (`compactlm.model.stage`). `loading` and `params` import torch/transformers only inside the
functions that build models, so the launcher can read a config.json and print parameter tables cheaply."""
