"""Chat templates: the model's Jinja template rendered like transformers' ``apply_chat_template``.

Templates come from the model file, so they run in Jinja's immutable sandbox (no attribute access to Python
internals, no mutation of the messages), with the helpers transformers gives templates: ``raise_exception``,
``strftime_now`` and a ``tojson`` filter that keeps non-ASCII text.  A model without a template gets a plain
fallback format (:data:`FALLBACK_TEMPLATE`).
"""
from __future__ import annotations

import json
from datetime import datetime
from functools import lru_cache
from typing import Any, Sequence

from ..errors import UnsupportedError, WorkbenchError

# used when the model has no template: "role: content" turns and an open assistant turn
FALLBACK_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ message['role'] | capitalize }}: {{ message['content'] | trim }}\n\n"
    "{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}"
)


class TemplateError(WorkbenchError):
    """The chat template failed (a syntax error, or it raised on these messages)."""


def _raise_exception(message: str):
    import jinja2

    raise jinja2.exceptions.TemplateError(message)


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None, separators=None,
            sort_keys: bool = False) -> str:
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)


def strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


def _environment():
    try:
        import jinja2
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        raise UnsupportedError("chat templates need the jinja2 package",
                               hint="Install it with: pip install jinja2") from None
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols],
                                        undefined=jinja2.Undefined)
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(template: str):
    import jinja2

    try:
        return _environment().from_string(template)
    except jinja2.exceptions.TemplateSyntaxError as exc:
        raise TemplateError(f"the chat template has a syntax error on line {exc.lineno}: {exc.message}",
                            hint="Fix tokenizer.chat_template (workbench set-metadata) or pass another template.") \
            from None


def apply_chat_template(template: str | None, messages: Sequence[dict], add_generation_prompt: bool = True, *,
                        bos_token: str = "", eos_token: str = "", **extra: Any) -> str:
    """The prompt text for ``messages`` (``[{"role": "user", "content": "..."}, ...]``).

    ``template`` is the model's Jinja chat template, or None for :data:`FALLBACK_TEMPLATE`.  ``extra`` values
    (``tools``, ``documents``, ``enable_thinking``...) are passed to the template as variables.
    """
    import jinja2

    for i, m in enumerate(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise TemplateError(f"message {i} is not a dict with a 'role'")
    compiled = _compile(template if template else FALLBACK_TEMPLATE)
    try:
        return compiled.render(messages=list(messages), add_generation_prompt=add_generation_prompt,
                               bos_token=bos_token, eos_token=eos_token, **extra)
    except jinja2.exceptions.SecurityError as exc:
        raise TemplateError(f"the chat template tried something the sandbox forbids: {exc}") from None
    except jinja2.exceptions.TemplateError as exc:
        raise TemplateError(f"the chat template failed: {exc}") from None
    except (TypeError, ValueError, KeyError, IndexError, AttributeError) as exc:
        raise TemplateError(f"the chat template failed on these messages: {type(exc).__name__}: {exc}") from None
