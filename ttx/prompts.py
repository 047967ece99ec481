"""How a problem becomes a prompt. tts-run and tlm-adapt template questions the same way."""

from __future__ import annotations

DEFAULT_INSTRUCTION: str | None = None   # the question as it is: measured best for the default model


def build_prompt(question: str, *, instruction: str | None = DEFAULT_INSTRUCTION,
                 system: str | None = None, chat: bool = True, memory: str | None = None):
    """Chat messages for a chat model, or plain text ("Question: ...\\nAnswer:") for a base model.

    `memory` (ttx.memory.retrieve.memory_block) goes before the question."""
    body = f"{question}\n{instruction}" if instruction else question
    if not chat:
        head = "".join(f"{part}\n\n" for part in (system, memory) if part)
        return f"{head}Question: {body}\nAnswer:"
    if memory:
        body = f"{memory}\n\n{body}"
    messages = [{"role": "system", "content": system}] if system else []
    return messages + [{"role": "user", "content": body}]
