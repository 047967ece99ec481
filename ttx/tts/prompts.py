"""How a problem becomes a prompt. tts-run and tlm-adapt template questions the same way."""

from __future__ import annotations

DEFAULT_INSTRUCTION: str | None = None   # the question as it is: measured best for the default model


def build_prompt(question: str, *, instruction: str | None = DEFAULT_INSTRUCTION,
                 system: str | None = None, chat: bool = True):
    """Chat messages for a chat model, or plain text ("Question: ...\\nAnswer:") for a base model."""
    body = f"{question}\n{instruction}" if instruction else question
    if not chat:
        head = f"{system}\n\n" if system else ""
        return f"{head}Question: {body}\nAnswer:"
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": body}]
