"""Chat templates: rendering equals transformers; messages are validated; errors are clear."""

from __future__ import annotations

import pytest

from floorline.errors import CorruptFileError, InvalidRequestError
from floorline.tokenizer import render_chat
from tests.tokenizer.texts import CONVERSATIONS


def _hf_ids(hf_tok, messages, **kw):
    out = hf_tok.apply_chat_template(messages, tokenize=True, **kw)
    return list(out["input_ids"] if hasattr(out, "keys") else out)


@pytest.mark.parametrize("name", sorted(CONVERSATIONS))
@pytest.mark.parametrize("gen", [True, False])
def test_render_matches_transformers(tok, hf_tok, name, gen):
    msgs = CONVERSATIONS[name]
    expected = hf_tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=gen)
    assert tok.apply_chat_template(msgs, add_generation_prompt=gen) == expected
    assert tok.encode_chat(msgs, add_generation_prompt=gen) == _hf_ids(hf_tok, msgs, add_generation_prompt=gen)


# Exercises the environment: tojson (no HTML escaping), namespace, loop controls, trim/lstrip
# blocks, special-token variables, extra keyword arguments, {% generation %}.
FEATURE_TEMPLATE = """{{ bos_token }}
{% set ns = namespace(n=0) %}
{% for m in messages %}
    {% if m.role == 'system' %}{% continue %}{% endif %}
    {% set ns.n = ns.n + 1 %}
    <{{ m.role }}>{{ m.content | tojson }}</{{ m.role }}>
    {% if m.role == 'assistant' %}{% generation %}{{ m.content }}{% endgeneration %}{% endif %}
{% endfor %}
{{ ns.n }} turns; flag={{ my_flag }}; tools={{ tools | tojson(indent=2) }}
{% if add_generation_prompt %}<assistant>{{ eos_token }}{% endif %}"""


def test_template_features_match_transformers(tok, hf_tok):
    msgs = CONVERSATIONS["multi_system"] + [{"role": "assistant", "content": "<b>&'\"</b> é"}]
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"x": "<int>"}}}]
    kw = dict(chat_template=FEATURE_TEMPLATE, add_generation_prompt=True, tools=tools, my_flag="yes")
    assert tok.apply_chat_template(msgs, **kw) == hf_tok.apply_chat_template(msgs, tokenize=False, **kw)


def test_strftime_now_and_raise_exception():
    out = render_chat("{{ strftime_now('%Y') }}", [{"role": "user", "content": "x"}])
    assert len(out) == 4 and out.isdigit()
    strict = "{% if messages[0].role != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert render_chat(strict, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(InvalidRequestError, match="first must be user"):
        render_chat(strict, [{"role": "assistant", "content": "x"}])


def test_sandbox_blocks_python_internals():
    with pytest.raises(InvalidRequestError):
        render_chat("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}",
                    [{"role": "user", "content": "x"}])


@pytest.mark.parametrize(
    "messages, fragment",
    [
        ("hello", "must be a list"),
        ([], "empty"),
        (["hello"], r"messages\[0\] must be a dict"),
        ([{"content": "x"}], r"messages\[0\]\.role"),
        ([{"role": 3, "content": "x"}], r"messages\[0\]\.role"),
        ([{"role": "user"}], r"messages\[0\] has no 'content'"),
        ([{"role": "user", "content": "a"}, {"role": "user", "content": 5}],
         r"messages\[1\]\.content must be a string"),
        ([{"role": "user", "content": ["a"]}], r"messages\[0\]\.content must be a string"),
    ],
)
def test_invalid_messages(tok, messages, fragment):
    with pytest.raises(InvalidRequestError, match=fragment) as info:
        tok.apply_chat_template(messages)
    assert info.value.param == "messages"


def test_tool_call_message_may_have_no_content():
    msgs = [{"role": "assistant", "content": None, "tool_calls": [{"name": "f"}]}]
    assert render_chat("{{ messages[0].tool_calls[0].name }}", msgs) == "f"


def test_no_template_is_a_clear_error():
    with pytest.raises(InvalidRequestError, match="no chat template"):
        render_chat(None, [{"role": "user", "content": "x"}])


def test_bad_template_syntax():
    with pytest.raises(CorruptFileError, match="not valid Jinja"):
        render_chat("{% for m in messages %}", [{"role": "user", "content": "x"}])


def test_unknown_named_template(tok):
    with pytest.raises(InvalidRequestError, match="no chat template named"):
        tok.apply_chat_template([{"role": "user", "content": "x"}], chat_template="tool_use")
