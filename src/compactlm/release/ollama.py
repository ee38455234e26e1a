"""An Ollama Modelfile per GGUF file: the tokenizer's chat template translated to Ollama's Go text/template, and the
stop tokens.

The translation is read off the template's own output, not parsed from its Jinja source: the chat template is rendered
(transformers `apply_chat_template`) for conversations whose messages hold unique markers, and the text around the
markers gives, per role, what comes before and after a message's content, the generation prompt, and the default
system block a template inserts when the conversation has none (SmolLM2's). The Go template is assembled from those
pieces, and the translation is checked before it is written: the pieces must reproduce the Jinja output of every probe
conversation exactly, or the template is refused (one whose output depends on more than role and content, e.g. on
the date or on tools, cannot be written as fixed pieces).

Ollama renders a template with `.Messages` (each `.Role`, `.Content`), and generates after it: the generation prompt
follows the last message unless that message is the assistant's (then the model continues it, so its end-of-turn
text is left out, as in Ollama's own templates). A template that trims contents (Llama-3's `| trim`) renders them
untrimmed here: Go's text/template has no trim, and Ollama's messages are rarely padded. A BOS token that llama.cpp adds itself (the GGUF's
`tokenizer.ggml.add_bos_token`) is left out of the template, or the prompt would start with it twice.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compactlm.manifest import atomic_write_text

# Markers: plain letters and digits, so no tokenizer-side normalisation or template filter (trim) changes them.
MARK = {"system": "SYSQ7X", "user": ("USRQ1X", "USRQ3X"), "assistant": "ASTQ2X"}
BOS_MARK = "BOSQ9X"
ROLES = ("system", "user", "assistant")


class TemplateNotTranslatable(ValueError):
    """The chat template's output is not made of fixed per-role pieces around each message's content."""


@dataclass
class ChatPieces:
    """What a chat template writes around each message, read off its output."""

    prefix: dict[str, str]
    """role -> text before the message's content."""
    suffix: dict[str, str]
    """role -> text after the message's content."""
    generation: str
    """The generation prompt (add_generation_prompt=True), after the last message."""
    default_system: str
    """Text the template writes first when the conversation has no system message ("" when none)."""
    bos: str
    """Text before the first message's prefix in every conversation (the BOS token of Llama-3 templates, or "")."""


def _render(tokenizer: Any, messages: list[dict[str, str]], generation: bool, **kwargs: str) -> str:
    """The template's text (keyword arguments replace the special tokens it is given, e.g. bos_token)."""
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation, **kwargs)


def _conversation(system: bool) -> list[dict[str, str]]:
    turns = [
        {"role": "user", "content": MARK["user"][0]},
        {"role": "assistant", "content": MARK["assistant"]},
        {"role": "user", "content": MARK["user"][1]},
    ]
    return ([{"role": "system", "content": MARK["system"]}] if system else []) + turns


def _split(text: str, marks: list[str]) -> list[str]:
    """The text between consecutive markers: len(marks) + 1 pieces."""
    pieces, rest = [], text
    for m in marks:
        if rest.count(m) != 1:
            raise TemplateNotTranslatable(f"the rendered template holds the message {m!r} {rest.count(m)} times")
        head, rest = rest.split(m)
        pieces.append(head)
    return pieces + [rest]


def read_pieces(tokenizer: Any) -> ChatPieces:
    """Per-role prefixes and suffixes, generation prompt, default system block and BOS of `tokenizer`'s chat template.

    full  = bos + P_sys SYS S_sys + P_usr U1 S_usr + P_ast A2 S_ast + P_usr U3 S_usr + gen
    Three more renders (no generation prompt; ending at the assistant; no system message) separate the pieces.
    """
    marks = [MARK["system"], MARK["user"][0], MARK["assistant"], MARK["user"][1]]
    full = _split(_render(tokenizer, _conversation(True), True), marks)
    plain = _split(_render(tokenizer, _conversation(True), False), marks)
    to_assistant = _split(_render(tokenizer, _conversation(True)[:3], False), marks[:3])
    no_system = _split(_render(tokenizer, _conversation(False), True), marks[1:])
    suffix_user = plain[4]
    suffix_assistant = to_assistant[3]
    if not full[4].startswith(suffix_user):
        raise TemplateNotTranslatable("the generation prompt does not follow the user's end of turn")
    generation = full[4][len(suffix_user) :]
    if not full[2].startswith(suffix_user):
        raise TemplateNotTranslatable("a user turn ends differently before an assistant turn")
    prefix_assistant = full[2][len(suffix_user) :]
    if not full[3].startswith(suffix_assistant):
        raise TemplateNotTranslatable("an assistant turn ends differently before a user turn")
    prefix_user = full[3][len(suffix_assistant) :]
    if not full[1].endswith(prefix_user):
        raise TemplateNotTranslatable("the user turn after the system message starts differently")
    suffix_system = full[1][: len(full[1]) - len(prefix_user)]
    if not no_system[0].endswith(prefix_user):
        raise TemplateNotTranslatable("a conversation without a system message starts differently")
    head = no_system[0][: len(no_system[0]) - len(prefix_user)]  # bos + default system block
    # the BOS is the template's `bos_token` variable at the start (Llama-3), not a literal that equals it (SmolLM2's
    # bos_token is "<|im_start|>", which its template writes as text): rendered with a marker in its place
    bos = tokenizer.bos_token or ""
    if not _render(tokenizer, _conversation(True), True, bos_token=BOS_MARK).startswith(BOS_MARK):
        bos = ""
    if not (full[0].startswith(bos) and head.startswith(bos)):
        raise TemplateNotTranslatable("the BOS token is not at the start of every conversation")
    prefix_system = full[0][len(bos) :]
    pieces = ChatPieces(
        prefix={"system": prefix_system, "user": prefix_user, "assistant": prefix_assistant},
        suffix={"system": suffix_system, "user": suffix_user, "assistant": suffix_assistant},
        generation=generation,
        default_system=head[len(bos) :],
        bos=bos,
    )
    check_pieces(tokenizer, pieces)
    return pieces


def expected(pieces: ChatPieces, messages: list[dict[str, str]], generation: bool) -> str:
    """What the Go template renders for `messages`, assembled in Python from the pieces (Ollama's rules: no
    end-of-turn after a last assistant message, the generation prompt after a last non-assistant message);
    `generation` False gives what HF renders without the generation prompt, for the check."""
    out = pieces.bos
    if not messages or messages[0]["role"] != "system":
        out += pieces.default_system
    for i, m in enumerate(messages):
        last = i == len(messages) - 1
        out += pieces.prefix[m["role"]] + m["content"]
        if not (last and m["role"] == "assistant" and generation):
            out += pieces.suffix[m["role"]]
        if last and generation and m["role"] != "assistant":
            out += pieces.generation
    return out


def check_pieces(tokenizer: Any, pieces: ChatPieces) -> None:
    """The pieces reproduce the template's own output for conversations other than the probes (other contents,
    several turns, no system message, with and without the generation prompt), or TemplateNotTranslatable."""
    checks = [
        [{"role": "user", "content": "Hi there"}],
        [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "What is 2+2?"},
            {"role": "assistant", "content": "4"},
            {"role": "user", "content": "And 3+3?"},
            {"role": "assistant", "content": "6"},
            {"role": "user", "content": "Thanks"},
        ],
    ]
    for messages in checks:
        for generation in (True, False):
            want = _render(tokenizer, messages, generation)
            got = expected(pieces, messages, generation) if generation else _plain(pieces, messages)
            if got != want:
                raise TemplateNotTranslatable(
                    f"its output for a {len(messages)}-message conversation is not fixed pieces around the "
                    f"contents: {want[:200]!r}"
                )


def _plain(pieces: ChatPieces, messages: list[dict[str, str]]) -> str:
    out = pieces.bos + ("" if messages[0]["role"] == "system" else pieces.default_system)
    return out + "".join(pieces.prefix[m["role"]] + m["content"] + pieces.suffix[m["role"]] for m in messages)


def _literal(text: str) -> str:
    """`text` as literal Go template text: an action opener in it is written as a string action."""
    return text.replace("{{", '{{ "{{" }}')


def go_template(pieces: ChatPieces, add_bos: bool) -> str:
    """The Go text/template Ollama renders: `.Messages` in order, each role's pieces around `.Content`, the default
    system block when the first message is not a system message, the generation prompt after a last non-assistant
    message. No `{{-` trimming: every character between actions is the template's own."""
    role_branches = "".join(
        ("{{ if" if i == 0 else "{{ else if")
        + f' eq $m.Role "{role}" }}}}{_literal(pieces.prefix[role])}{{{{ $m.Content }}}}'
        + (
            f"{{{{ if not $last }}}}{_literal(pieces.suffix[role])}{{{{ end }}}}"
            if role == "assistant"
            else _literal(pieces.suffix[role])
        )
        for i, role in enumerate(ROLES)
    )
    return (
        ("" if add_bos else _literal(pieces.bos))
        + (
            '{{ if or (not .Messages) (ne (index .Messages 0).Role "system") }}'
            + _literal(pieces.default_system)
            + "{{ end }}"
            if pieces.default_system
            else ""
        )
        + "{{ range $i, $m := .Messages }}{{ $last := eq (len (slice $.Messages $i)) 1 }}"
        + role_branches
        + "{{ end }}"
        + f'{{{{ if and $last (ne $m.Role "assistant") }}}}{_literal(pieces.generation)}{{{{ end }}}}'
        + "{{ end }}"
    )


def stop_tokens(tokenizer: Any, pieces: ChatPieces) -> list[str]:
    """Ollama's `PARAMETER stop` values: the special tokens that end an assistant turn or start the next turn, and
    the EOS token, in that order without repeats."""
    special = sorted(set(tokenizer.all_special_tokens) | _added_special(tokenizer), key=len, reverse=True)
    out: list[str] = []
    for text in (pieces.suffix["assistant"], pieces.prefix["user"]):
        for tok in special:
            if tok in text and tok not in out:
                out.append(tok)
    if tokenizer.eos_token and tokenizer.eos_token not in out:
        out.append(tokenizer.eos_token)
    return out


def _added_special(tokenizer: Any) -> set[str]:
    decoder = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return {t.content for t in decoder.values() if getattr(t, "special", False)}


def modelfile(gguf_name: str, tokenizer: Any, add_bos: bool) -> str:
    """The Modelfile text for the GGUF file `gguf_name` (beside it): FROM, TEMPLATE and PARAMETER stop lines; a
    tokenizer without a chat template gets FROM alone (Ollama then sends the prompt as it is)."""
    lines = [f"# Ollama: ollama create <name> -f {gguf_name.removesuffix('.gguf')}.Modelfile", f"FROM ./{gguf_name}"]
    if not getattr(tokenizer, "chat_template", None):
        return "\n".join(lines) + "\n"
    pieces = read_pieces(tokenizer)
    template = go_template(pieces, add_bos)
    if '"""' in template:
        raise TemplateNotTranslatable('the template holds """, which ends a Modelfile TEMPLATE block')
    lines.append(f'TEMPLATE """{template}"""')
    for tok in stop_tokens(tokenizer, pieces):
        lines.append(f"PARAMETER stop {_quote(tok)}")
    return "\n".join(lines) + "\n"


def _quote(value: str) -> str:
    """A Modelfile parameter value in double quotes (Ollama's parser reads Go-style escapes)."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def template_of(modelfile_text: str) -> str:
    """The TEMPLATE of a Modelfile written by :func:`modelfile`."""
    start = modelfile_text.index('TEMPLATE """') + len('TEMPLATE """')
    return modelfile_text[start : modelfile_text.index('"""', start)]


def write_modelfile(path: Path, text: str) -> None:
    """Write through compactlm.manifest (never through a link)."""
    atomic_write_text(path, text)
