"""The Modelfile's TEMPLATE, rendered by Go's own text/template (the engine Ollama renders with) on data shaped as
Ollama passes it, gives the same prompt string as the tokenizer's chat template (transformers apply_chat_template):
SmolLM2's ChatML template (with its default system prompt) and a Llama-3 template (BOS token, headers, eot)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
from transformers import AutoTokenizer

from compactlm.release import ollama

HERE = Path(__file__).resolve().parent
GO_INSTALL = "apt-get install -y golang-go"
# Meta's Llama-3 (8B-Instruct) chat template
LLAMA3 = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}"
    "{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"
)
THREE_TURNS = [
    {"role": "system", "content": "You answer in one sentence."},
    {"role": "user", "content": "What is the capital of France?"},
    {"role": "assistant", "content": "Paris is the capital of France."},
    {"role": "user", "content": "And of Poland? Write {{ it }} in braces."},
]


@pytest.fixture(scope="session")
def go_render(tmp_path_factory) -> Path:
    """tests/release/render_template.go built with the real Go toolchain."""
    go = shutil.which("go")
    if go is None:
        pytest.skip(f"needs the Go toolchain to render Ollama templates with Go's text/template: {GO_INSTALL}")
    out = tmp_path_factory.mktemp("go")
    env = {**os.environ, "GOCACHE": str(out / "cache"), "GOPATH": str(out / "path"), "GOFLAGS": "-mod=mod"}
    subprocess.run([go, "build", "-o", str(out / "render"), str(HERE / "render_template.go")], check=True, env=env)
    return out / "render"


def render_go(binary: Path, template: str, messages: list[dict[str, str]]) -> str:
    r = subprocess.run(
        [str(binary)], input=json.dumps({"template": template, "messages": messages}), capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="session")
def llama3_tokenizer(smol_tokenizer_dir, tmp_path_factory):
    """SmolLM2's vocabulary with Llama-3's special tokens and chat template, saved and loaded back."""
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tok.add_special_tokens(
        {
            "bos_token": "<|begin_of_text|>",
            "eos_token": "<|eot_id|>",
            "additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|end_of_text|>"],
        }
    )
    tok.chat_template = LLAMA3
    folder = tmp_path_factory.mktemp("llama3-tok")
    tok.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def test_smollm2_chatml_modelfile_renders_the_chat_template(go_render, smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    assert "<|im_start|>" in tok.chat_template
    text = ollama.modelfile("smol-q8_0.gguf", tok, add_bos=False)
    template = ollama.template_of(text)
    for messages in (THREE_TURNS, THREE_TURNS[1:]):  # with a system message, and with the template's default one
        want = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        assert render_go(go_render, template, messages) == want
    assert "You are a helpful AI assistant named SmolLM" in render_go(go_render, template, THREE_TURNS[1:])
    lines = text.splitlines()
    assert lines[1] == "FROM ./smol-q8_0.gguf"
    assert 'PARAMETER stop "<|im_end|>"' in lines and 'PARAMETER stop "<|im_start|>"' in lines


def test_llama3_modelfile_renders_the_chat_template(go_render, llama3_tokenizer):
    tok = llama3_tokenizer
    want = tok.apply_chat_template(THREE_TURNS, tokenize=False, add_generation_prompt=True)
    assert want.startswith("<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n")
    # a GGUF whose tokenizer does not add BOS: the template writes it, the strings are equal
    text = ollama.modelfile("l3-q4_k_m.gguf", tok, add_bos=False)
    assert render_go(go_render, ollama.template_of(text), THREE_TURNS) == want
    assert 'PARAMETER stop "<|eot_id|>"' in text.splitlines()
    # llama.cpp adds BOS itself (tokenizer.ggml.add_bos_token): the template leaves it out, once in the prompt
    text = ollama.modelfile("l3-q4_k_m.gguf", tok, add_bos=True)
    assert "<|begin_of_text|>" + render_go(go_render, ollama.template_of(text), THREE_TURNS) == want


def test_an_assistant_message_last_is_continued(go_render, smol_tokenizer_dir):
    """Ollama's rule: no end-of-turn after a last assistant message and no generation prompt (the model continues)."""
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    template = ollama.template_of(ollama.modelfile("m.gguf", tok, add_bos=False))
    got = render_go(go_render, template, THREE_TURNS[:3])
    assert got.endswith("<|im_start|>assistant\nParis is the capital of France.")


def test_a_template_that_is_not_fixed_pieces_is_refused(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    # the turn number in every header: no fixed text around a message's content
    tok.chat_template = "{% for m in messages %}[{{ loop.index }}:{{ m['role'] }}]{{ m['content'] }}\n{% endfor %}"
    with pytest.raises(ollama.TemplateNotTranslatable):
        ollama.modelfile("m.gguf", tok, add_bos=False)


def test_no_chat_template_gives_a_modelfile_without_template(smol_tokenizer_dir):
    tok = AutoTokenizer.from_pretrained(smol_tokenizer_dir)
    tok.chat_template = None
    text = ollama.modelfile("m.gguf", tok, add_bos=False)
    assert "TEMPLATE" not in text and "FROM ./m.gguf" in text
