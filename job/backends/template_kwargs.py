"""--chat-template-kwargs (hf, vllm): warn about names the chat template never reads.

Jinja ignores unknown variables, and vLLM 0.33 drops them (resolve_chat_template_kwargs), so
a misspelt `enable_thinking` would change nothing, silently; a warning names it instead."""

from __future__ import annotations

import logging
from typing import Any

log = logging.getLogger(__name__)


def template_variables(template: str) -> set[str]:
    """The variables a Jinja template reads from its caller (jinja2.meta, as vLLM does)."""
    import jinja2.meta
    import jinja2.sandbox

    env = jinja2.sandbox.ImmutableSandboxedEnvironment(extensions=["jinja2.ext.loopcontrols"])
    try:
        return set(jinja2.meta.find_undeclared_variables(env.parse(template)))
    except Exception:  # an extension we do not load ({% generation %}): no check, no failure
        return set()


def warn_unused(spec: str, template: Any, kwargs: dict[str, Any]) -> None:
    """Log the kwargs that `template` (text, or named templates) never reads."""
    if not kwargs or not template:
        return
    texts = template.values() if isinstance(template, dict) else [template]
    used = set().union(*(template_variables(t) for t in texts if isinstance(t, str)))
    unused = sorted(k for k in kwargs if k not in used)
    if used and unused:
        log.warning(
            "%s: --chat-template-kwargs: the chat template never reads %s; ignored", spec, ", ".join(unused)
        )
