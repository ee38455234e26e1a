"""Serve and benchmark ModelOpt's unified HF checkpoints (teacher, students, quantized or not) with TensorRT-LLM.

    settings = DeploySettings(backend="pytorch", concurrency=[1, 8], input_len=512, output_len=256)
    metrics = run_deploy({"teacher": teacher_dir, "quantized": export_dir}, workdir, settings)
    metrics["quantized"]["throughput"][0]["tpot_ms"]      # ms per output token at concurrency 1

TensorRT-LLM runs only inside NVIDIA's TensorRT-LLM container on a GPU. Nothing here imports it at module level;
where it is missing, every entry point that needs it raises :class:`DeployUnavailable` (never a silent skip).

Interfaces, as read in NVIDIA/TensorRT-LLM (tensorrt_llm/commands/bench.py, bench/benchmark/{throughput,
low_latency}.py, bench/build/build.py, bench/dataset/prepare_dataset.py, bench/dataclasses/reporting.py,
llmapi/llm_utils.py):
- `trtllm-bench --model NAME --model_path DIR --workspace DIR <subcommand>`; `--model` is only a name when
  `--model_path` is given, except for `prepare-dataset`, which loads its tokenizer from `--model`.
- `prepare-dataset` is a trtllm-bench subcommand since 1.2 (it replaced `benchmarks/cpp/prepare_dataset.py`).
- The PyTorch backend (the default since 1.0) loads the HF folder directly; a ModelOpt export is recognized by
  its `hf_quant_config.json` (quant_algo, kv_cache_quant_algo) with no flag. `kv_cache_config.dtype` (auto|fp8)
  is an LLM-API option, passed to trtllm-bench through `--extra_llm_api_options <yaml>`.
- The TensorRT engine backend (`trtllm-bench build`, `throughput --backend tensorrt --engine_dir`,
  `tensorrt_llm._tensorrt_engine.LLM`) is legacy: deprecated in early 2026, removed after 1.3.0rc20.
- `--report_json` is `ReportUtility.get_statistics_dict()`: sections engine, world_info, request_info,
  performance and, for streaming runs (always for `latency`), streaming_metrics; times in ms, rates per second.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import yaml
from packaging.version import InvalidVersion, Version

from compactlm.deploy.schema import DeployConfig as DeploySettings
from compactlm.manifest import atomic_write_text, open_nofollow

# Said by every DeployUnavailable: where the stage can run.
WHERE_IT_RUNS = (
    "the deploy stage runs only inside NVIDIA's TensorRT-LLM container on a GPU "
    "(nvcr.io/nvidia/tensorrt-llm/release:<tag>, 1.2 or later; backend=tensorrt needs a tag from 1.2.0 to "
    "1.3.0rc20); run it on a cluster whose deploy image is that container"
)
# Last release with the TensorRT engine backend ("will be removed in the next version", v1.3.0rc20 notes).
TENSORRT_BACKEND_LAST = "1.3.0rc20"
LABEL = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")


class DeployUnavailable(RuntimeError):
    """TensorRT-LLM (or the part of it a setting needs) is not installed where the deploy stage runs."""


class DeployError(RuntimeError):
    """A TensorRT-LLM command failed or did not produce what it promised; the message has its log tail."""


# -------------------------------------------------------------------------------------------- settings
def tensorrt_llm_available() -> Optional[str]:
    """The installed TensorRT-LLM version, or None; does not import it (the import loads CUDA libraries)."""
    spec = importlib.util.find_spec("tensorrt_llm")
    if spec is None:
        return None
    for dist in ("tensorrt_llm", "tensorrt-llm"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            pass
    for folder in spec.submodule_search_locations or []:  # a source checkout without dist-info
        version_py = Path(folder) / "version.py"
        if version_py.is_file():
            m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", version_py.read_text())
            if m:
                return m.group(1)
    return "unknown"


def _parse_version(version: str):

    try:
        return Version(version)
    except InvalidVersion:
        return None


def check_backend_supported(backend: str, version: str) -> None:
    """Raise DeployUnavailable when TensorRT-LLM `version` has no `backend` (tensorrt is gone after 1.3.0rc20)."""
    if backend != "tensorrt":
        return
    v = _parse_version(version)
    if v is None or v > _parse_version(TENSORRT_BACKEND_LAST):
        raise DeployUnavailable(
            f"deploy.backend=tensorrt needs TensorRT-LLM 1.2.0 to {TENSORRT_BACKEND_LAST}, found {version}: later "
            "releases removed the TensorRT engine backend (trtllm-build, trtllm-bench build, --backend tensorrt); "
            f"use deploy.backend=pytorch, or {WHERE_IT_RUNS}"
        )


def require_tensorrt_llm(backend: str) -> str:
    """Check this machine can run the deploy stage with `backend`; returns the TensorRT-LLM version.

    Raises DeployUnavailable naming where the stage can run when TensorRT-LLM, `trtllm-bench` or the
    subcommands the settings need are missing. Imports nothing from TensorRT-LLM.
    """
    version = tensorrt_llm_available()
    if version is None:
        raise DeployUnavailable(
            f"TensorRT-LLM is not installed here (`import tensorrt_llm` finds nothing): {WHERE_IT_RUNS}"
        )
    if shutil.which("trtllm-bench") is None:
        raise DeployUnavailable(
            f"TensorRT-LLM {version} is installed but `trtllm-bench` is not on PATH: {WHERE_IT_RUNS}"
        )
    package = Path(importlib.util.find_spec("tensorrt_llm").submodule_search_locations[0])
    if not (package / "bench" / "dataset" / "prepare_dataset.py").is_file():
        raise DeployUnavailable(
            f"TensorRT-LLM {version} predates `trtllm-bench prepare-dataset` (1.2): {WHERE_IT_RUNS}"
        )
    check_backend_supported(backend, version)
    if backend == "tensorrt" and not (package / "bench" / "build" / "build.py").is_file():
        raise DeployUnavailable(f"TensorRT-LLM {version} has no `trtllm-bench build`: {WHERE_IT_RUNS}")
    return version


# -------------------------------------------------------------------------------------------- commands
@dataclass(frozen=True)
class BenchPaths:
    """Where the commands of one model read and write, under its work folder."""

    workdir: Path
    dataset: Path
    workspace: Path
    engine: Path
    llm_api_options: Path
    logs: Path

    def throughput_report(self, concurrency: int) -> Path:
        return self.workdir / f"throughput_c{concurrency}.json"

    @property
    def latency_report(self) -> Path:
        return self.workdir / "latency.json"


def bench_paths(model_name: str, workdir: str | Path, settings: DeploySettings) -> BenchPaths:
    """The files of one model's benchmark; the engine path is where `trtllm-bench build` saves it."""
    w = Path(workdir)
    workspace = w / "workspace"
    return BenchPaths(
        workdir=w,
        dataset=w / f"dataset_i{settings.input_len}_o{settings.output_len}_n{settings.num_requests}.jsonl",
        workspace=workspace,
        engine=workspace / model_name / f"tp_{settings.tp_size}_pp_1",  # build.py: <workspace>/<model>/tp_X_pp_Y
        llm_api_options=w / "llm_api_options.yaml",
        logs=w / "logs",
    )


def llm_api_options(settings: DeploySettings) -> Optional[dict]:
    """LLM-API arguments trtllm-bench gets through `--extra_llm_api_options` (None: nothing to override)."""
    if settings.kv_cache_dtype != "auto":
        return {"kv_cache_config": {"dtype": settings.kv_cache_dtype}}
    return None


def bench_commands(
    model_name: str, checkpoint_dir: str | Path, workdir: str | Path, settings: DeploySettings
) -> list[list[str]]:
    """The exact argv lists the deploy stage runs for one checkpoint, in order; runs nothing.

    1. `trtllm-bench prepare-dataset ... token-norm-dist`: `num_requests` synthetic requests of exactly
       `input_len` prompt tokens and `output_len` output tokens (stdev 0), tokenized by the checkpoint.
    2. backend=tensorrt only: `trtllm-bench build --dataset ...` (engine sized for that dataset).
    3. `trtllm-bench throughput` once per concurrency, report in `throughput_c<N>.json`.
    4. `trtllm-bench latency` (when settings.latency), report in `latency.json`.

    Args:
        model_name: `--model`, a plain name (the label, e.g. "teacher"); it also names the engine folder.
        checkpoint_dir: the HF folder (ModelOpt unified checkpoint or plain), passed as `--model_path`.
        workdir: this model's work folder (datasets, reports, logs, engine).
    """
    if not LABEL.fullmatch(model_name):
        raise ValueError(
            f"model name {model_name!r} must be a plain folder name ([A-Za-z0-9_.-], no '/'): "
            "trtllm-bench saves engines under <workspace>/<model name>/"
        )
    p = bench_paths(model_name, workdir, settings)
    ckpt = str(checkpoint_dir)
    s = settings
    # prepare-dataset loads its tokenizer from --model, so there --model is the checkpoint folder
    prepare = [
        "trtllm-bench",
        "--model",
        ckpt,
        "--workspace",
        str(p.workspace),
        "prepare-dataset",
        "--output",
        str(p.dataset),
        "token-norm-dist",
        "--num-requests",
        str(s.num_requests),
        "--input-mean",
        str(s.input_len),
        "--output-mean",
        str(s.output_len),
        "--input-stdev",
        "0",
        "--output-stdev",
        "0",
    ]
    bench = ["trtllm-bench", "--model", model_name, "--model_path", ckpt, "--workspace", str(p.workspace)]
    commands = [prepare]
    if s.backend == "tensorrt":
        commands.append(bench + ["build", "--tp_size", str(s.tp_size), "--dataset", str(p.dataset)])
        runtime = ["--backend", "tensorrt", "--engine_dir", str(p.engine)]  # TP is baked into the engine
    else:
        runtime = ["--backend", "pytorch", "--tp", str(s.tp_size)]
        if llm_api_options(s):
            runtime += ["--extra_llm_api_options", str(p.llm_api_options)]
    batch = ["--max_batch_size", str(s.max_batch_size)] if s.max_batch_size else []
    common = ["--dataset", str(p.dataset), "--num_requests", str(s.num_requests)]
    for c in s.concurrency:
        commands.append(
            bench
            + ["throughput"]
            + runtime
            + common
            + batch
            + ["--concurrency", str(c), "--report_json", str(p.throughput_report(c))]
            + (["--streaming"] if s.streaming else [])
        )
    if s.latency:
        commands.append(bench + ["latency"] + runtime + common + ["--report_json", str(p.latency_report)])
    return commands


# -------------------------------------------------------------------------------------------- reports
PERCENTILES = ("p50", "p90", "p95", "p99", "minimum", "maximum")


def _get(report: dict, *keys: str, required: bool = False):
    node: Any = report
    for k in keys:
        if not isinstance(node, dict) or k not in node:
            if required:
                raise ValueError(
                    f"trtllm-bench report has no {'.'.join(keys)}; sections found: "
                    f"{', '.join(report) if isinstance(report, dict) else type(report).__name__}"
                )
            return None
        node = node[k]
    return node


def parse_report(report: dict, concurrency: Optional[int] = None) -> dict:
    """Flat metrics from a `trtllm-bench throughput|latency --report_json` file (already json-loaded).

    Units: ms for times, tokens (or requests) per second for rates. "Output" tokens include the first one.
    ttft_*/tpot_* come from `streaming_metrics` and are None for a non-streaming throughput run.
    `concurrency` is the value the run was started with (the report only has the measured average).
    """
    perf = _get(report, "performance", required=True)
    req = _get(report, "request_info", required=True)
    stream = report.get("streaming_metrics") or {}
    out = {
        "concurrency": concurrency,
        "output_tokens_per_s": _get(report, "performance", "system_output_throughput_tok_s", required=True),
        "total_tokens_per_s": perf.get("system_total_throughput_tok_s"),
        "requests_per_s": perf.get("request_throughput_req_s"),
        "output_tokens_per_s_per_user": perf.get("output_throughput_per_user_tok_s"),
        "output_tokens_per_s_per_gpu": perf.get("output_throughput_per_gpu_tok_s"),
        "total_latency_ms": perf.get("total_latency_ms"),
        "request_latency_ms": _get(report, "performance", "avg_request_latency_ms", required=True),
        "ttft_ms": stream.get("avg_ttft_ms"),
        "tpot_ms": stream.get("avg_tpot_ms"),
        "decode_tokens_per_s_per_user": stream.get("token_output_speed_tok_s"),
        "streaming": bool(stream),
        "num_requests": req.get("num_requests"),
        "avg_concurrent_requests": req.get("avg_num_concurrent_requests"),
        "avg_input_len": req.get("avg_input_length"),
        "avg_output_len": req.get("avg_output_length"),
    }
    for name, pct in (
        ("request_latency", perf.get("request_latency_percentiles_ms") or {}),
        ("ttft", stream.get("ttft_percentiles") or {}),
        ("tpot", stream.get("tpot_percentiles") or {}),
    ):
        for q in PERCENTILES:
            out[f"{name}_{q}_ms"] = pct.get(q)
    engine = report.get("engine") or {}
    world = report.get("world_info") or {}
    out.update(
        {
            "backend": engine.get("backend"),
            "quantization": engine.get("quantization"),
            "kv_cache_dtype": engine.get("kv_cache_dtype"),
            "dtype": engine.get("dtype"),
            "tensorrt_llm_version": engine.get("version"),
            "tp_size": world.get("tp_size"),
            "max_batch_size": world.get("max_batch_size"),
            "max_num_tokens": world.get("max_num_tokens"),
        }
    )
    return out


def checkpoint_quantization(checkpoint_dir: str | Path) -> Optional[dict]:
    """quant_algo and kv_cache_quant_algo from a ModelOpt export's hf_quant_config.json (None: not quantized)."""
    path = Path(checkpoint_dir) / "hf_quant_config.json"
    if not path.is_file():
        return None
    q = json.loads(path.read_text()).get("quantization", {})
    return {"quant_algo": q.get("quant_algo"), "kv_cache_quant_algo": q.get("kv_cache_quant_algo")}


# -------------------------------------------------------------------------------------------- LLM API
def _enum_value(x: Any) -> Any:
    return getattr(x, "value", x) if x is not None else None


def llm_api_check(
    checkpoint_dir: str | Path, settings: DeploySettings, prompt: str = "The capital of France is", max_tokens: int = 32
) -> dict:
    """Load a checkpoint with TensorRT-LLM's LLM API, generate greedily once, report text, timing, quantization.

    backend=pytorch uses `tensorrt_llm.LLM` (the HF folder is loaded as is); backend=tensorrt uses
    `tensorrt_llm._tensorrt_engine.LLM`, which builds an engine first. The quantization TensorRT-LLM detected
    (`llm.args.quant_config`) must agree with the checkpoint's hf_quant_config.json, or this raises.
    Returns {"text", "output_tokens", "load_s", "generate_s", "tokens_per_s", "quant_algo",
    "kv_cache_quant_algo", "checkpoint_quantization", "backend", "tensorrt_llm_version"}.
    """
    version = require_tensorrt_llm(settings.backend)
    from tensorrt_llm import SamplingParams  # only in NVIDIA's TensorRT-LLM image: imported where it runs

    kwargs: dict[str, Any] = {"tensor_parallel_size": settings.tp_size}
    if settings.backend == "tensorrt":
        from tensorrt_llm._tensorrt_engine import LLM  # TensorRT-LLM image only
    else:
        from tensorrt_llm import LLM  # TensorRT-LLM image only
        from tensorrt_llm.llmapi import KvCacheConfig

        if settings.kv_cache_dtype != "auto":
            kwargs["kv_cache_config"] = KvCacheConfig(dtype=settings.kv_cache_dtype)
    t0 = time.perf_counter()
    llm = LLM(model=str(checkpoint_dir), **kwargs)
    load_s = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        result = llm.generate([prompt], SamplingParams(max_tokens=max_tokens, top_k=1))[0].outputs[0]
        generate_s = time.perf_counter() - t0
        qc = llm.args.quant_config
        detected = {
            "quant_algo": _enum_value(qc.quant_algo),
            "kv_cache_quant_algo": _enum_value(qc.kv_cache_quant_algo),
        }
    finally:
        llm.shutdown()
    expected = checkpoint_quantization(checkpoint_dir)
    if expected and expected["quant_algo"] != detected["quant_algo"]:
        raise DeployError(
            f"TensorRT-LLM loaded {checkpoint_dir} as quant_algo={detected['quant_algo']} but its "
            f"hf_quant_config.json says {expected['quant_algo']}"
        )
    n = len(result.token_ids)
    return {
        "text": result.text,
        "output_tokens": n,
        "load_s": load_s,
        "generate_s": generate_s,
        "tokens_per_s": n / generate_s if generate_s > 0 else None,
        **detected,
        "checkpoint_quantization": expected,
        "backend": settings.backend,
        "tensorrt_llm_version": version,
    }


# -------------------------------------------------------------------------------------------- orchestration
Runner = Callable[..., "subprocess.CompletedProcess"]


def _tail(path: Path, lines: int = 40) -> str:
    text = path.read_text(errors="replace") if path.is_file() else ""
    return "\n".join(text.splitlines()[-lines:])


def _step_name(argv: list[str]) -> str:
    sub = argv[argv.index("--workspace") + 2]  # the subcommand follows the global options
    if sub == "throughput":
        return f"throughput_c{argv[argv.index('--concurrency') + 1]}"
    return sub


def _run_logged(run: Runner, argv: list[str], log: Path, env: dict) -> None:
    """Run argv with stdout and stderr in `log`; raise DeployError with the log's tail when it fails."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with open_nofollow(log, "w") as f:
        proc = run(argv, stdout=f, stderr=subprocess.STDOUT, text=True, env=env, check=False)
    if proc.returncode != 0:
        raise DeployError(f"`{' '.join(argv)}` exited with {proc.returncode}; last lines of {log}:\n{_tail(log)}")


def run_deploy(
    models: dict[str, str | Path],
    workdir: str | Path,
    settings: DeploySettings,
    run: Runner = subprocess.run,
    version: Optional[str] = None,
) -> dict[str, dict]:
    """Benchmark every checkpoint with trtllm-bench; returns {label: metrics}.

    Args:
        models: label -> HF checkpoint folder (e.g. {"teacher": ..., "distilled": ..., "quantized": ...}).
        workdir: folder of the stage; each model gets `<workdir>/<label>/` with its dataset, reports
            (`throughput_c<N>.json`, `latency.json`), engine (backend=tensorrt) and `logs/<step>.log`.
        run: `subprocess.run`-compatible runner (tests inject a fake that records argv).
        version: the TensorRT-LLM version; None (the normal case) detects it and checks that this machine
            can run the stage, raising DeployUnavailable otherwise.
    Every command must succeed and write what it promises, or DeployError is raised with its log's tail.
    metrics[label] = {"checkpoint", "checkpoint_quantization", "backend", "tensorrt_llm_version",
    "throughput": [parse_report(...) per concurrency], "latency": parse_report(...) or None, "reports"}.
    """
    if version is None:
        version = require_tensorrt_llm(settings.backend)
    check_backend_supported(settings.backend, version)
    for label, ckpt in models.items():
        if not LABEL.fullmatch(label):
            raise ValueError(f"model label {label!r} must be a plain folder name ([A-Za-z0-9_.-])")
        if not (Path(ckpt) / "config.json").is_file():
            raise FileNotFoundError(f"{label}: {ckpt} is not a Hugging Face checkpoint folder (no config.json)")
    root = Path(workdir)
    root.mkdir(parents=True, exist_ok=True)
    plan = {
        label: bench_commands(label, Path(ckpt).resolve(), root / label, settings) for label, ckpt in models.items()
    }
    atomic_write_text(root / "commands.json", json.dumps(plan, indent=2) + "\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}  # --model is a label, never a hub id: fail fast, never download
    results: dict[str, dict] = {}
    for label, commands in plan.items():
        p = bench_paths(label, root / label, settings)
        p.workdir.mkdir(parents=True, exist_ok=True)
        options = llm_api_options(settings)
        if options:
            atomic_write_text(p.llm_api_options, yaml.safe_dump(options, sort_keys=False))
        metrics: dict[str, Any] = {
            "checkpoint": str(models[label]),
            "checkpoint_quantization": checkpoint_quantization(models[label]),
            "backend": settings.backend,
            "tensorrt_llm_version": version,
            "throughput": [],
            "latency": None,
            "reports": {},
        }
        for argv in commands:
            step = _step_name(argv)
            print(f"[deploy] {label}: {step} (log {p.logs / (step + '.log')})", flush=True)
            t0 = time.perf_counter()
            _run_logged(run, argv, p.logs / f"{step}.log", env)
            if step == "prepare-dataset" and not (p.dataset.is_file() and p.dataset.stat().st_size):
                raise DeployError(f"{label}: trtllm-bench prepare-dataset wrote no dataset at {p.dataset}")
            if step == "build" and not (p.engine / "config.json").is_file():
                raise DeployError(f"{label}: trtllm-bench build wrote no engine at {p.engine}")
            if step.startswith("throughput") or step == "latency":
                report_path = Path(argv[argv.index("--report_json") + 1])
                if not report_path.is_file():
                    raise DeployError(f"{label}: `{' '.join(argv)}` exited 0 but wrote no report at {report_path}")
                report = json.loads(report_path.read_text())
                conc = int(argv[argv.index("--concurrency") + 1]) if step != "latency" else 1
                parsed = parse_report(report, concurrency=conc)
                if (settings.streaming or step == "latency") and not parsed["streaming"]:
                    raise DeployError(
                        f"{label}: {report_path} has no streaming_metrics (TTFT/TPOT) although the run streamed"
                    )
                metrics["reports"][step] = str(report_path)
                if step == "latency":
                    metrics["latency"] = parsed
                else:
                    metrics["throughput"].append(parsed)
                tpot = f", TPOT {parsed['tpot_ms']:.2f} ms" if parsed["tpot_ms"] is not None else ""
                print(
                    f"[deploy] {label}: {step} {parsed['output_tokens_per_s']:.1f} output tok/s{tpot} "
                    f"({time.perf_counter() - t0:.0f} s)",
                    flush=True,
                )
        results[label] = metrics
    return results
