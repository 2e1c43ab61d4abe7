"""Chat templates: validates messages and renders them with Jinja as transformers does.

The environment matches transformers' `apply_chat_template`: a sandbox (templates come from
model files and are untrusted), `trim_blocks` and `lstrip_blocks`, loop controls, a `tojson`
filter that does not HTML-escape, `raise_exception`, `strftime_now`, and `{% generation %}`
blocks (rendered as their body).
"""

from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

import jinja2
import jinja2.ext
import jinja2.nodes
from jinja2.sandbox import ImmutableSandboxedEnvironment

from floorline.errors import CorruptFileError, InvalidRequestError


class _GenerationBlock(jinja2.ext.Extension):
    """`{% generation %}...{% endgeneration %}`: marks assistant text for training masks; renders its body."""

    tags = {"generation"}

    def parse(self, parser: jinja2.parser.Parser) -> jinja2.nodes.Node:
        lineno = next(parser.stream).lineno
        body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
        return jinja2.nodes.Scope(body).set_lineno(lineno)


class _Namespace(jinja2.utils.Namespace):
    """`namespace()` that refuses underscore names, so a template cannot reach Python internals."""

    def __init__(*args: Any, **kwargs: Any):  # noqa: N805 - same signature trick as jinja's Namespace
        self, rest = args[0], args[1:]
        attrs = dict(*rest, **kwargs)
        for name in attrs:
            _Namespace._check(name)
        jinja2.utils.Namespace.__init__(self, attrs)

    def __setitem__(self, name: str, value: Any) -> None:
        _Namespace._check(name)
        jinja2.utils.Namespace.__setitem__(self, name, value)

    @staticmethod
    def _check(name: Any) -> None:
        if isinstance(name, str) and name.startswith("_"):
            raise jinja2.exceptions.SecurityError(f"a chat template may not set the attribute {name!r}")


def _raise_exception(message: str) -> None:
    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    # Jinja's own tojson HTML-escapes '<', '>', '&' and "'"; chat templates want plain JSON.
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True, lstrip_blocks=True, extensions=[_GenerationBlock, jinja2.ext.loopcontrols]
    )
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    env.globals["namespace"] = _Namespace
    return env


@lru_cache(maxsize=16)
def compile_template(source: str) -> jinja2.Template:
    """The compiled template (cached: servers render the same one for every request)."""
    try:
        return _environment().from_string(source)
    except jinja2.exceptions.TemplateSyntaxError as e:
        raise CorruptFileError(f"the chat template is not valid Jinja (line {e.lineno}: {e.message})") from e


def validate_messages(messages: Any) -> list[dict[str, Any]]:
    """Plain copies of `messages`; raises InvalidRequestError naming the first bad message."""
    if not isinstance(messages, Sequence) or isinstance(messages, (str, bytes)):
        raise InvalidRequestError(
            f"messages must be a list of {{'role': str, 'content': str}} dicts, got {type(messages).__name__}",
            param="messages",
        )
    if not messages:
        raise InvalidRequestError("messages is empty: give at least one message", param="messages")
    out = []
    for i, msg in enumerate(messages):
        where = f"messages[{i}]"
        if not isinstance(msg, Mapping):
            raise InvalidRequestError(
                f"{where} must be a dict with 'role' and 'content', got {type(msg).__name__}", param="messages"
            )
        role = msg.get("role")
        if not isinstance(role, str) or not role:
            raise InvalidRequestError(f"{where}.role must be a non-empty string, got {role!r}", param="messages")
        if "content" not in msg:
            raise InvalidRequestError(f"{where} has no 'content'", param="messages")
        content = msg["content"]
        # An assistant turn that only calls tools carries no text.
        if not isinstance(content, str) and not (content is None and msg.get("tool_calls")):
            raise InvalidRequestError(
                f"{where}.content must be a string, got {type(content).__name__}", param="messages"
            )
        out.append(_plain(msg))
    return out


def _plain(value: Any) -> Any:
    """A deep copy in plain JSON types: the template sees data, never the caller's objects."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return str(value)


def render_chat(source: str | None, messages: Any, *, add_generation_prompt: bool = True,
                special_tokens: Mapping[str, str] | None = None, **kwargs: Any) -> str:
    """Renders `messages` with the template `source`; `kwargs` (tools, enable_thinking, ...) reach it too."""
    if not source:
        raise InvalidRequestError(
            "this model has no chat template, so chat messages cannot be formatted; "
            "send a plain text prompt (completion) instead",
            param="messages",
        )
    template = compile_template(source)
    chat = validate_messages(messages)
    variables: dict[str, Any] = {"tools": None, "documents": None}
    variables.update(special_tokens or {})
    variables.update({k: _plain(v) for k, v in kwargs.items()})
    try:
        return template.render(messages=chat, add_generation_prompt=add_generation_prompt, **variables)
    except jinja2.exceptions.TemplateError as e:
        raise InvalidRequestError(f"the chat template rejected the messages: {e}", param="messages") from e
    except Exception as e:  # e.g. a template adding None to a string: still the request's shape
        raise InvalidRequestError(
            f"the chat template failed on these messages ({type(e).__name__}: {e})", param="messages"
        ) from e
