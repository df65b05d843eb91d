"""Prompts, applied as sentence-transformers applies them.

A prompt is a string prepended to every text before tokenising (``"query: "``), so the
model's token limit, token counts and truncation include it. :func:`resolve_prompt` picks it
the way ``SentenceTransformer.encode(texts, prompt_name=..., prompt=...)`` does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from .errors import ConfigurationError, Param


def resolve_prompt(
    prompts: Mapping[str, str],
    default_prompt_name: str | None,
    prompt_name: str | None = None,
    prompt: str | None = None,
) -> str:
    """The prompt to prepend: ``prompt`` if given, else the named one, else the default.

    As sentence-transformers: an explicit ``prompt`` wins over ``prompt_name`` (even an empty
    one, which turns the default prompt off); with neither, the model's default prompt
    applies; a model with no default prompt gets none (``""``).

    Raises:
        ConfigurationError: ``prompt_name`` is not one of ``prompts`` (the message lists them).
    """
    if prompt is not None:
        return prompt
    if prompt_name is not None:
        if prompt_name not in prompts:
            # No "or pass the text as prompt": not every front end has that setting (HTTP).
            known = ", ".join(repr(name) for name in prompts)
            fix = f"(known: {known}); name one of them" if known else "(it has none); leave it out"
            raise ConfigurationError(
                f"{{prompt_name}}: {prompt_name!r} is not one of this model's prompts {fix}",
                params=(Param("prompt_name"),),
            )
        return prompts[prompt_name]
    if default_prompt_name is not None:
        return prompts.get(default_prompt_name, "")
    return ""


def apply_prompt(texts: Sequence[str], prompt: str) -> Sequence[str]:
    """``texts`` with ``prompt`` prepended to each (the same sequence when it is empty)."""
    return [prompt + text for text in texts] if prompt else texts
