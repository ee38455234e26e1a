"""The deploy library: settings validation, the exact trtllm-bench commands, report parsing, orchestration.

TensorRT-LLM is not installable here, so the orchestration runs against a fake runner that records argv and
writes what trtllm-bench would (dataset, engine, --report_json in the schema of
tensorrt_llm/bench/dataclasses/reporting.py); this tests compactlm's side, not TensorRT-LLM.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from compactlm.config import ConfigError
from compactlm.deploy.trtllm import (
    DeployError,
    DeploySettings,
    DeployUnavailable,
    bench_commands,
    check_backend_supported,
    checkpoint_quantization,
    llm_api_check,
    parse_report,
    require_tensorrt_llm,
    run_deploy,
    tensorrt_llm_available,
)

CKPT = "/runs/r1/quantize/export"
WORK = "/runs/r1/deploy/quantized"
DATASET = f"{WORK}/dataset_i128_o64_n16.jsonl"
WS = f"{WORK}/workspace"


def _settings(**kw) -> DeploySettings:
    return DeploySettings(**{"concurrency": [1, 8], "input_len": 128, "output_len": 64, "num_requests": 16, **kw})


# ---------------------------------------------------------------------------------------------- settings
def test_default_settings_are_valid():
    s = DeploySettings()
    assert (s.backend, s.concurrency, s.kv_cache_dtype, s.streaming, s.tp_size) == ("pytorch", [1], "auto", True, 1)


@pytest.mark.parametrize(
    "kw, message",
    [
        ({"backend": "vllm"}, r"deploy\.backend='vllm' is not allowed; choose one of: pytorch, tensorrt"),
        ({"kv_cache_dtype": "int8"}, r"deploy\.kv_cache_dtype='int8' is not allowed; choose one of: auto, fp8"),
        ({"concurrency": []}, r"deploy\.concurrency=\[\] must be a non-empty list"),
        ({"concurrency": [0]}, r"deploy\.concurrency=0 must be an integer >= 1"),
        ({"concurrency": [1, 8, 1]}, r"deploy\.concurrency=\[1, 8, 1\] lists a value twice"),
        ({"input_len": 0}, r"deploy\.input_len=0 must be an integer >= 1"),
        ({"tp_size": True}, r"deploy\.tp_size=True must be an integer >= 1"),
        ({"num_requests": 4}, r"deploy\.num_requests=4 is below the largest deploy\.concurrency=8"),
        ({"max_batch_size": 4}, r"deploy\.max_batch_size=4 is below the largest deploy\.concurrency=8"),
        (
            {"backend": "tensorrt", "kv_cache_dtype": "fp8"},
            r"deploy\.kv_cache_dtype=fp8 is not allowed with deploy\.backend=tensorrt",
        ),
    ],
)
def test_invalid_settings_name_the_key_and_what_is_allowed(kw, message):
    with pytest.raises(ConfigError, match=message):
        _settings(**kw)
    assert issubclass(ConfigError, ValueError)


# ---------------------------------------------------------------------------------------------- commands
PREPARE = [
    "trtllm-bench",
    "--model",
    CKPT,
    "--workspace",
    WS,
    "prepare-dataset",
    "--output",
    DATASET,
    "token-norm-dist",
    "--num-requests",
    "16",
    "--input-mean",
    "128",
    "--output-mean",
    "64",
    "--input-stdev",
    "0",
    "--output-stdev",
    "0",
]
BENCH = ["trtllm-bench", "--model", "quantized", "--model_path", CKPT, "--workspace", WS]


def test_pytorch_commands_golden():
    assert bench_commands("quantized", CKPT, WORK, _settings()) == [
        PREPARE,
        BENCH
        + [
            "throughput",
            "--backend",
            "pytorch",
            "--tp",
            "1",
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--concurrency",
            "1",
            "--report_json",
            f"{WORK}/throughput_c1.json",
            "--streaming",
        ],
        BENCH
        + [
            "throughput",
            "--backend",
            "pytorch",
            "--tp",
            "1",
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--concurrency",
            "8",
            "--report_json",
            f"{WORK}/throughput_c8.json",
            "--streaming",
        ],
        BENCH
        + [
            "latency",
            "--backend",
            "pytorch",
            "--tp",
            "1",
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--report_json",
            f"{WORK}/latency.json",
        ],
    ]


def test_tensorrt_commands_golden():
    engine = f"{WS}/quantized/tp_2_pp_1"  # where trtllm-bench build saves it: <workspace>/<model>/tp_X_pp_Y
    assert bench_commands("quantized", CKPT, WORK, _settings(backend="tensorrt", tp_size=2)) == [
        PREPARE,
        BENCH + ["build", "--tp_size", "2", "--dataset", DATASET],
        BENCH
        + [
            "throughput",
            "--backend",
            "tensorrt",
            "--engine_dir",
            engine,
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--concurrency",
            "1",
            "--report_json",
            f"{WORK}/throughput_c1.json",
            "--streaming",
        ],
        BENCH
        + [
            "throughput",
            "--backend",
            "tensorrt",
            "--engine_dir",
            engine,
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--concurrency",
            "8",
            "--report_json",
            f"{WORK}/throughput_c8.json",
            "--streaming",
        ],
        BENCH
        + [
            "latency",
            "--backend",
            "tensorrt",
            "--engine_dir",
            engine,
            "--dataset",
            DATASET,
            "--num_requests",
            "16",
            "--report_json",
            f"{WORK}/latency.json",
        ],
    ]


def test_optional_flags():
    cmds = bench_commands(
        "quantized",
        CKPT,
        WORK,
        _settings(kv_cache_dtype="fp8", max_batch_size=8, streaming=False, latency=False, concurrency=[4]),
    )
    assert [c[c.index("--workspace") + 2] for c in cmds] == ["prepare-dataset", "throughput"]
    throughput = cmds[1]
    assert throughput[throughput.index("--extra_llm_api_options") + 1] == f"{WORK}/llm_api_options.yaml"
    assert throughput[throughput.index("--max_batch_size") + 1] == "8"
    assert "--streaming" not in throughput and throughput[-1] == f"{WORK}/throughput_c4.json"


def test_model_name_must_be_a_plain_folder_name():
    with pytest.raises(ValueError, match="plain folder name"):
        bench_commands("/abs/teacher", CKPT, WORK, _settings())


# ---------------------------------------------------------------------------------------------- availability
needs_no_trtllm = pytest.mark.skipif(tensorrt_llm_available() is not None, reason="TensorRT-LLM is installed here")


@needs_no_trtllm
def test_unavailable_here_says_where_it_runs(tmp_path):
    where = r"NVIDIA's TensorRT-LLM container on a GPU \(nvcr\.io/nvidia/tensorrt-llm/release:<tag>"
    with pytest.raises(DeployUnavailable, match=where):
        require_tensorrt_llm("pytorch")
    ckpt = _checkpoint(tmp_path / "teacher")
    with pytest.raises(DeployUnavailable, match=where):
        run_deploy({"teacher": ckpt}, tmp_path / "deploy", _settings())
    with pytest.raises(DeployUnavailable, match=where):
        llm_api_check(ckpt, _settings())
    assert not (tmp_path / "deploy").exists()  # nothing started


def test_tensorrt_backend_only_until_it_was_removed():
    for version in ("1.2.0", "1.2.1", "1.3.0rc5", "1.3.0rc20"):
        check_backend_supported("tensorrt", version)
    for version in ("1.3.0rc21", "1.3.0rc26", "1.3.0", "1.4.0"):
        with pytest.raises(DeployUnavailable, match=r"backend=tensorrt needs TensorRT-LLM 1\.2\.0 to 1\.3\.0rc20"):
            check_backend_supported("tensorrt", version)
    check_backend_supported("pytorch", "1.4.0")


# ---------------------------------------------------------------------------------------------- reports
def _pct(avg: float) -> dict:
    """A PercentileStats dump as reporting.py writes it (already converted to ms or tok/s)."""
    return {
        "p50": avg,
        "p90": avg * 1.1,
        "p95": avg * 1.2,
        "p99": avg * 1.3,
        "minimum": avg * 0.9,
        "maximum": avg * 1.4,
        "average": avg,
    }


def bench_report(concurrency: int = 1, streaming: bool = True, tpot: float = 12.3) -> dict:
    """A --report_json in the schema of ReportUtility.get_statistics_dict (PyTorch backend, FP8 checkpoint)."""
    report = {
        "engine": {
            "model": "quantized",
            "model_path": CKPT,
            "engine_dir": "None",
            "version": "1.2.1",
            "backend": "Pytorch",
            "dtype": "bfloat16",
            "kv_cache_dtype": "FP8",
            "quantization": "FP8",
        },
        "world_info": {
            "tp_size": 1,
            "pp_size": 1,
            "ep_size": 1,
            "world_size": 1,
            "max_batch_size": 2048,
            "max_num_tokens": 8192,
            "scheduling_policy": "guaranteed_no_evict",
            "kv_cache_percentage": 0.9,
            "issue_rate": 1.0e9,
        },
        "request_info": {
            "num_requests": 16,
            "avg_num_concurrent_requests": concurrency * 0.97,
            "avg_input_length": 128.0,
            "avg_output_length": 64.0,
        },
        "performance": {
            "total_latency_ms": 2000.0,
            "avg_request_latency_ms": 64 * tpot + 25.0,
            "request_throughput_req_s": 8.0,
            "system_output_throughput_tok_s": 1000.0 / tpot * concurrency,
            "system_total_throughput_tok_s": 3000.0,
            "output_throughput_per_user_tok_s": 1000.0 / tpot,
            "output_throughput_per_gpu_tok_s": 1000.0 / tpot * concurrency,
            "request_latency_percentiles_ms": _pct(64 * tpot + 25.0),
        },
        "dataset": {
            "isl_stats": _pct(128),
            "osl_stats": _pct(64),
            "seq_len_stats": _pct(192),
            "num_requests": 16,
            "dataset_path": DATASET,
            "max_isl": 128,
            "max_osl": 64,
            "max_sequence_length": 192,
            "avg_isl": 128,
            "avg_osl": 64,
            "avg_sequence_length": 192,
        },
    }
    if streaming:
        report["streaming_metrics"] = {
            "token_output_speed_tok_s": 1000.0 / tpot,
            "avg_ttft_ms": 25.0,
            "avg_tpot_ms": tpot,
            "tpot_percentiles": _pct(tpot),
            "ttft_percentiles": _pct(25.0),
            "gen_tps_percentiles": _pct(1000.0 / tpot),
        }
    return report


def test_parse_streaming_report():
    m = parse_report(bench_report(concurrency=8), concurrency=8)
    assert m["concurrency"] == 8 and m["streaming"] is True
    assert m["output_tokens_per_s"] == pytest.approx(1000 / 12.3 * 8)
    assert (m["ttft_ms"], m["tpot_ms"]) == (25.0, 12.3)
    assert m["tpot_p99_ms"] == pytest.approx(12.3 * 1.3) and m["ttft_p50_ms"] == 25.0
    assert m["request_latency_ms"] == pytest.approx(64 * 12.3 + 25) == m["request_latency_p50_ms"]
    assert (m["quantization"], m["kv_cache_dtype"], m["backend"], m["tensorrt_llm_version"]) == (
        "FP8",
        "FP8",
        "Pytorch",
        "1.2.1",
    )
    assert (m["num_requests"], m["avg_input_len"], m["avg_output_len"], m["tp_size"]) == (16, 128.0, 64.0, 1)
    json.dumps(m)  # goes into the manifest as is


def test_parse_non_streaming_report_has_no_ttft():
    m = parse_report(bench_report(streaming=False))
    assert m["streaming"] is False and m["ttft_ms"] is None and m["tpot_p50_ms"] is None
    assert m["output_tokens_per_s"] == pytest.approx(1000 / 12.3)


def test_parse_report_without_performance_names_the_key():
    report = bench_report()
    del report["performance"]
    with pytest.raises(ValueError, match="no performance; sections found: engine, world_info, request_info"):
        parse_report(report)


def test_checkpoint_quantization(tmp_path):
    plain = _checkpoint(tmp_path / "teacher")
    quant = _checkpoint(tmp_path / "quantized", quant=("FP8", "FP8"))
    assert checkpoint_quantization(plain) is None
    assert checkpoint_quantization(quant) == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}


# ---------------------------------------------------------------------------------------------- orchestration
def _checkpoint(folder: Path, quant: tuple[str, str] | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    if quant:
        quantization = {"quant_algo": quant[0], "kv_cache_quant_algo": quant[1]}
        (folder / "hf_quant_config.json").write_text(
            json.dumps({"producer": {"name": "modelopt"}, "quantization": quantization})
        )
    return folder


class FakeTrtllmBench:
    """Stands in for trtllm-bench: records each call and writes the files the real command writes."""

    def __init__(self, fail_on: str | None = None, skip_report: bool = False):
        self.calls: list[dict] = []
        self.fail_on, self.skip_report = fail_on, skip_report

    def __call__(self, argv, **kw):
        self.calls.append({"argv": list(argv), **kw})
        kw["stdout"].write(f"[TRT-LLM] running {' '.join(argv)}\n")
        sub = argv[argv.index("--workspace") + 2]
        if sub == self.fail_on:
            kw["stdout"].write("RuntimeError: Engine supports a max sequence of 128.\n")
            return subprocess.CompletedProcess(argv, 1)
        if sub == "prepare-dataset":
            Path(argv[argv.index("--output") + 1]).write_text('{"task_id": 0, "input_ids": [1], "output_tokens": 64}\n')
        elif sub == "build":
            engine = Path(argv[argv.index("--workspace") + 1]) / argv[argv.index("--model") + 1] / "tp_1_pp_1"
            engine.mkdir(parents=True)
            (engine / "config.json").write_text("{}")
        elif not self.skip_report:
            conc = int(argv[argv.index("--concurrency") + 1]) if sub == "throughput" else 1
            tpot = 12.3 if argv[argv.index("--model") + 1] == "distilled" else 18.3
            report = bench_report(concurrency=conc, streaming=sub == "latency" or "--streaming" in argv, tpot=tpot)
            Path(argv[argv.index("--report_json") + 1]).write_text(json.dumps(report, indent=4))
        return subprocess.CompletedProcess(argv, 0)


def test_run_deploy_runs_every_command_and_parses_every_report(tmp_path):
    models = {
        "teacher": _checkpoint(tmp_path / "teacher"),
        "distilled": _checkpoint(tmp_path / "distilled", quant=("FP8", "FP8")),
    }
    settings = _settings(kv_cache_dtype="fp8")
    fake = FakeTrtllmBench()
    out = run_deploy(models, tmp_path / "deploy", settings, run=fake, version="1.2.1")

    expected = [
        c
        for label, ckpt in models.items()
        for c in bench_commands(label, ckpt.resolve(), tmp_path / "deploy" / label, settings)
    ]
    assert [c["argv"] for c in fake.calls] == expected
    assert all(c["env"]["HF_HUB_OFFLINE"] == "1" and c["check"] is False for c in fake.calls)
    assert json.loads((tmp_path / "deploy" / "commands.json").read_text())["teacher"] == expected[:4]
    for label, tpot in (("teacher", 18.3), ("distilled", 12.3)):
        m = out[label]
        assert [t["concurrency"] for t in m["throughput"]] == [1, 8]
        assert m["throughput"][0]["tpot_ms"] == tpot and m["latency"]["tpot_ms"] == tpot
        assert m["backend"] == "pytorch" and m["tensorrt_llm_version"] == "1.2.1"
        folder = tmp_path / "deploy" / label
        assert m["reports"] == {
            "throughput_c1": str(folder / "throughput_c1.json"),
            "throughput_c8": str(folder / "throughput_c8.json"),
            "latency": str(folder / "latency.json"),
        }
        assert (folder / "llm_api_options.yaml").read_text() == "kv_cache_config:\n  dtype: fp8\n"
        assert sorted(p.name for p in (folder / "logs").iterdir()) == [
            "latency.log",
            "prepare-dataset.log",
            "throughput_c1.log",
            "throughput_c8.log",
        ]
    assert out["teacher"]["checkpoint_quantization"] is None
    assert out["distilled"]["checkpoint_quantization"] == {"quant_algo": "FP8", "kv_cache_quant_algo": "FP8"}
    speedup = out["teacher"]["throughput"][0]["tpot_ms"] / out["distilled"]["throughput"][0]["tpot_ms"]
    assert speedup == pytest.approx(18.3 / 12.3)
    json.dumps(out)


def test_run_deploy_tensorrt_builds_the_engine_first(tmp_path):
    fake = FakeTrtllmBench()
    settings = _settings(backend="tensorrt", concurrency=[1], latency=False)
    out = run_deploy(
        {"teacher": _checkpoint(tmp_path / "teacher")}, tmp_path / "deploy", settings, run=fake, version="1.3.0rc20"
    )
    assert [c["argv"][c["argv"].index("--workspace") + 2] for c in fake.calls] == [
        "prepare-dataset",
        "build",
        "throughput",
    ]
    assert out["teacher"]["throughput"][0]["output_tokens_per_s"] > 0
    with pytest.raises(DeployUnavailable, match="removed the TensorRT engine backend"):
        run_deploy({"teacher": tmp_path / "teacher"}, tmp_path / "deploy2", settings, run=fake, version="1.3.0rc26")
    assert not (tmp_path / "deploy2").exists()


def test_failing_command_raises_with_its_log_tail(tmp_path):
    ckpt = _checkpoint(tmp_path / "teacher")
    with pytest.raises(DeployError, match=r"(?s)throughput .* exited with 1.*Engine supports a max sequence of 128"):
        run_deploy(
            {"teacher": ckpt},
            tmp_path / "deploy",
            _settings(),
            run=FakeTrtllmBench(fail_on="throughput"),
            version="1.2.1",
        )


def test_command_that_writes_no_report_is_an_error(tmp_path):
    ckpt = _checkpoint(tmp_path / "teacher")
    with pytest.raises(DeployError, match="exited 0 but wrote no report at .*throughput_c1.json"):
        run_deploy(
            {"teacher": ckpt}, tmp_path / "deploy", _settings(), run=FakeTrtllmBench(skip_report=True), version="1.2.1"
        )


def test_run_deploy_rejects_a_folder_that_is_not_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"teacher: .* \(no config\.json\)"):
        run_deploy({"teacher": tmp_path}, tmp_path / "deploy", _settings(), run=FakeTrtllmBench(), version="1.2.1")
