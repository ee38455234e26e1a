"""Every shipped configuration composes and validates; bad input fails before anything runs, naming the key."""

from __future__ import annotations

import itertools
import json

import pytest
from helpers import REPO, compose, group_options, run_launch

from compactlm.config import ConfigError
from compactlm.launch.validate import to_config, validate
from compactlm.pipeline import STAGE_NAMES
from compactlm.run_config import CompactLMConfig

# Groups whose shipped options leave a required key open (???): what a user must add on the command line.
REQUIRED = {
    ("model", "local"): None,  # filled per test with a tiny local folder
    ("data", "jsonl"): None,  # filled per test with a small file
    ("data", "text"): None,
    ("data", "hf"): ["data.hf_dataset=allenai/c4"],
    ("cluster", "slurm"): ["cluster.slurm.account=compactlm"],
    ("cluster", "dgxc"): [
        "cluster.dgxc.base_url=https://acme.run.ai/api/v1",
        "cluster.dgxc.project_name=compactlm",
        "cluster.dgxc.pvcs.0.claim_name=compactlm-ws",
        "cluster.container_image=nvcr.io/acme/compactlm-train:1.0",
        "distill.global_batch_size=64",  # 2 nodes × 8 GPUs × micro-batch 4: the CPU demo's 8 cannot be dealt out
    ],
    ("cluster", "dgx_h200"): [
        "cluster.lepton.node_group=h200-pool",
        "cluster.container_image=nvcr.io/acme/compactlm-train:1.0",
    ],
}


def _prune_for(model: str) -> str:
    return {"smollm2_135m": "smollm2_33pct", "bielik_11b_v3": "exp_010", "local": "smollm2_33pct"}[model]


@pytest.fixture(scope="module")
def jsonl_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("jsonl") / "docs.jsonl"
    p.write_text("\n".join(json.dumps({"text": f"Dokument numer {i}: zażółć gęślą jaźń."}) for i in range(50)))
    return p


@pytest.fixture(scope="module")
def text_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("text") / "docs.txt"
    p.write_text("\n".join(f"Dokument numer {i}: zażółć gęślą jaźń." for i in range(50)), encoding="utf-8")
    return p


@pytest.mark.slow
def test_every_shipped_combination_composes_and_validates(tiny_llama_dir, jsonl_file, text_file):
    # every recipe x model x data on this machine, and every cluster with every recipe (the cluster does not
    # interact with the model or data choice: those pairs would only multiply the composing time)
    combos = [
        (r, m, d, "local")
        for r, m, d in itertools.product(group_options("recipe"), group_options("model"), group_options("data"))
    ]
    combos += [
        (r, "smollm2_135m", "pydoc", c)
        for r in group_options("recipe")
        for c in group_options("cluster")
        if c != "local"
    ]
    assert len(combos) >= 6 * 3 * 4 + 6 * 3
    for recipe, model, data, cluster in combos:
        ov = [f"recipe={recipe}", f"model={model}", f"data={data}", f"cluster={cluster}", f"prune={_prune_for(model)}"]
        if model == "local":
            ov += [
                f"model.path={tiny_llama_dir}",
                "prune.model=null",
                "prune.export_config.ffn_hidden_size=64",
                "prune.export_config.num_layers=2",
            ]
        if data in ("jsonl", "text", "polish_text"):  # polish_text's default paths are this team's ../shared
            ov.append(f"data.paths=[{jsonl_file if data == 'jsonl' else text_file}]")
        ov += REQUIRED.get(("data", data)) or []
        ov += REQUIRED.get(("cluster", cluster)) or []
        conf = to_config(compose(ov))
        assert isinstance(conf, CompactLMConfig)
        if "deploy" in conf.recipe.stages and cluster == "local":
            with pytest.raises(ConfigError, match="no TensorRT-LLM"):  # tested in test_deploy_stage.py
                validate(conf, STAGE_NAMES)
            continue
        if "deploy" in conf.recipe.stages:
            ov.append("cluster.deploy_image=nvcr.io/nvidia/tensorrt-llm/release:1.2.0")
            conf = to_config(compose(ov))
        if model == "bielik_11b_v3" and cluster == "local" and "model" in conf.recipe.stages:
            # its Hub id is checked last, against the offline cache (HF_HUB_OFFLINE=1), which holds no Bielik here:
            # every other check passed when this is the error
            with pytest.raises(ConfigError, match=r"^model.path='speakleash/.* nor a Hub model in the local cache"):
                validate(conf, STAGE_NAMES)
            continue
        validate(conf, STAGE_NAMES)
        assert conf.recipe.name == recipe and conf.model.name == model and conf.data.name == data


def test_every_yaml_starts_with_a_comment_naming_its_command():
    paths = sorted((REPO / "conf").rglob("*.yaml")) + sorted((REPO / "recipes").glob("*.yaml"))
    assert [p.stem for p in paths if p.parent == REPO / "recipes"] == group_options("recipe") != []
    for path in paths:
        first = path.read_text().lstrip().splitlines()[0]
        assert first.startswith("#"), path
        assert "python launch.py" in path.read_text(), f"{path} does not say which command runs it"


def test_precedence_schema_group_recipe_command_line():
    conf = to_config(compose([]))
    assert conf.data.validation_sequences == 24  # schema default
    assert conf.data.kind == "pydoc"  # group YAML
    conf = to_config(compose(["data=polish_text"]))
    assert conf.data.seq_len == 128  # group YAML over schema (256)
    conf = to_config(compose(["data=polish_text", "data.seq_len=64"]))
    assert conf.data.seq_len == 64  # command line over group YAML


def _error(overrides: list[str]) -> str:
    with pytest.raises((ConfigError, Exception)) as exc:
        validate(to_config(compose(overrides)), STAGE_NAMES)
    cause = exc.value.__cause__
    return str(exc.value) + (f" {cause}" if cause else "")


BAD = [
    (["data.seq_len=-5"], "data.seq_len=-5"),
    (["data.seq_len=abc"], "data.seq_len"),
    (["data.validation_sequences=0"], "data.validation_sequences=0"),
    (["engine.device=tpu"], "engine.device='tpu'"),
    (["engine.dtype=float8"], "engine.dtype='float8'"),
    (["model.shape.num_attention_heads=10"], "model.shape.num_attention_heads=10"),
    (["model.shape.hidden_size=-1"], "model.shape.hidden_size=-1"),
    (["model.shape.model_type=gpt2"], "model.shape.model_type='gpt2'"),
    (["model=local", "model.path=/nonexistent/model"], "model.path='/nonexistent/model' does not exist"),
    (["model=local"], "model.path is required"),
    (["data=text_missing_group"], "data/text_missing_group"),
    (["data=polish_text", "data.paths=[/nonexistent/*.txt]"], "data.paths: '/nonexistent/*.txt' matches no file"),
    (["data=jsonl"], "data.paths is empty; data.kind=jsonl needs at least one local file"),
    (["run_name=a/b"], "run_name='a/b'"),
    (["recipe=eval", "force_stages=[distill]"], "force_stages contains 'distill', which recipe=eval does not run"),
    (["recipe.stages=[model,train_everything]"], "recipe.stages contains 'train_everything'"),
    (["distill.global_batch_size=6", "distill.micro_batch_size=4"], "distill.global_batch_size=6"),
    (["distill.temperature=0"], "distill.temperature=0"),
    (
        ["recipe=prune", "prune.export_config.ffn_hidden_size=20000"],
        "prune.export_config.ffn_hidden_size=20000 exceeds the model's 1536",
    ),
    (
        ["recipe=prune", "prune.export_config.num_attention_heads=8"],
        "prune.export_config.num_attention_heads=8 is not divisible by the model's num_key_value_heads=3",
    ),
    (["recipe=prune", "prune.export_config.num_layers=0"], "prune.export_config.num_layers=0 must be an integer >= 1"),
    (["recipe=prune", "prune.export_config.hidden_size=-64"], "prune.export_config.hidden_size=-64"),
    (["recipe=prune", "prune=exp_010"], "prune=exp_010 is a preset for model=bielik_11b_v3, not model=smollm2_135m"),
    (
        ["recipe=prune", "prune.export_config.num_layers=null", "prune.export_config.ffn_hidden_size=null"],
        "prune.export_config is empty",
    ),
    (["recipe=prune", "prune.depth_method=random"], "prune.depth_method='random'"),
    (["recipe=quantize", "quantize.format=fp6"], "quantize.format='fp6' is not allowed"),
    (
        ["recipe=quantize", "quantize=nvfp4", "quantize.deploy_gpu=h100"],
        "quantize.format=nvfp4 cannot be served on quantize.deploy_gpu='h100'",
    ),
    (
        ["recipe=quantize", "quantize.exclude=[model.layers.30.*]"],
        "quantize.exclude: pattern 'model.layers.30.*' matches no module",
    ),
    (
        ["recipe=prune", "model=bielik_11b_v3", "prune=exp_001", "prune.export_config.hidden_size=8192"],
        "prune.export_config.hidden_size=8192 exceeds the model's 4096",
    ),
    (["gguf.types=[q8_0,q9_k]"], "gguf.types='q9_k' is not allowed; choose one of: q8_0, q6_k"),
    (["gguf.types=[iq2_xs]"], "gguf.types: 'iq2_xs' needs an importance matrix"),
    (["gguf.types=[]"], "gguf.types=[] must be a non-empty list of llama.cpp types"),
    (["gguf.types=[q4_k_m,Q4_K_M]"], "gguf.types lists 'Q4_K_M' twice"),
    (["gguf.outtype=q8_0"], "gguf.outtype='q8_0' is not allowed; choose one of: f16, bf16, f32"),
    (["gguf.concurrency=[1,0]"], "gguf.concurrency=0 must be an integer >= 1"),
    (["gguf.perplexity_chunks=0"], "gguf.perplexity_chunks=0 must be an integer >= 1"),
    (["gguf.llama_cpp=/nonexistent/llama.cpp"], "gguf.llama_cpp='/nonexistent/llama.cpp' is not a llama.cpp build"),
]


@pytest.mark.parametrize("overrides,needle", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_bad_input_names_the_key(overrides, needle):
    assert needle in _error(overrides)


def test_empty_data_file_is_rejected(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    assert f"data.paths: '{empty}' is empty" in _error(["data=polish_text", f"data.paths=[{empty}]"])


def test_unknown_architecture_in_local_folder(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt2", "n_embd": 8}))
    msg = _error(["model=local", f"model.path={tmp_path}"])
    assert "'gpt2' is not a supported architecture" in msg and "llama, mistral, qwen2, qwen3" in msg


def test_cli_rejects_bad_input_before_writing_anything(tmp_path):
    proc = run_launch(["data.seq_len=-1", f"runs_root={tmp_path}"])
    assert proc.returncode == 2
    assert "data.seq_len=-1 must be an integer >= 8" in proc.stderr
    assert not any(tmp_path.iterdir()), "nothing may be written for an invalid config"


def test_cli_unknown_group_option_lists_the_choices(tmp_path):
    proc = run_launch(["model=gpt5", f"runs_root={tmp_path}"])
    assert proc.returncode == 2
    assert proc.stderr.strip() == (
        "compactlm: configuration error: model=gpt5: Could not find 'model/gpt5'; "
        "choose one of: bielik_11b_v3, local, smollm2_135m"
    )


def test_gguf_export_of_a_checkpoint_without_tokenizer_is_refused_at_launch(tmp_path, tiny_llama_dir):
    import shutil

    folder = tmp_path / "no-tokenizer"
    shutil.copytree(tiny_llama_dir, folder)
    for f in folder.glob("tokenizer*"):
        f.unlink()
    msg = _error(["recipe=quantize", "model=local", f"model.path={folder}"])
    assert f"model.path='{folder}' (recipe=quantize exports GGUF)" in msg and "has no tokenizer" in msg
