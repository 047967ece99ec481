"""How PERK turns a record into tensors: the context as a batch of segments, the question as a
prompt without the context (Chen et al. 2025, §3.1).

The context is cut into segments of `segment_tokens` tokens; segment i becomes its own sequence
`doc_{i}: {segment}<eos>` with the `doc_{i}:` prefix masked from the loss. The segments form one
batch (their order does not matter), which test time may split for gradient accumulation. The
question is asked as `You have memorized {N} documents.\\n{question}\\nAnswer:` and, in the outer
loop, only the answer tokens carry the loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class Segments:
    input_ids: torch.Tensor        # [segments, length], right-padded
    attention_mask: torch.Tensor   # [segments, length]
    labels: torch.Tensor           # [segments, length], shifted: labels[:, t] is token t + 1; -100 off
    count: int                     # N, the number of documents the question prompt names

    @property
    def loss_tokens(self) -> int:
        return int((self.labels != -100).sum())

    def split(self, parts: int) -> list["Segments"]:
        """At most `parts` groups of whole segments (gradient accumulation at test time)."""
        parts = max(1, min(parts, self.input_ids.shape[0]))
        groups = torch.arange(self.input_ids.shape[0]).tensor_split(parts)
        return [Segments(self.input_ids[g], self.attention_mask[g], self.labels[g], self.count)
                for g in groups]

    def to(self, device) -> "Segments":
        return Segments(self.input_ids.to(device), self.attention_mask.to(device),
                        self.labels.to(device), self.count)


def _eos_id(tokenizer) -> int:
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no end-of-sequence token")
    return int(tokenizer.eos_token_id)


def context_segments(tokenizer, context: str, segment_tokens: int = 128) -> Segments:
    """The context as `doc_{i}: {segment}<eos>` sequences, prefix masked (loss on segment + eos)."""
    ids = tokenizer(context, add_special_tokens=False).input_ids
    if not ids:
        raise ValueError("empty context")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else _eos_id(tokenizer)
    rows, targets = [], []
    for i, start in enumerate(range(0, len(ids), segment_tokens)):
        prefix = tokenizer(f"doc_{i}:", add_special_tokens=False).input_ids
        body = ids[start:start + segment_tokens] + [_eos_id(tokenizer)]
        seq = prefix + body
        label = [-100] * (len(prefix) - 1) + body + [-100]   # position t predicts token t + 1
        rows.append(seq)
        targets.append(label)
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    labels = torch.full((len(rows), width), -100, dtype=torch.long)
    for i, (seq, label) in enumerate(zip(rows, targets)):
        input_ids[i, :len(seq)] = torch.tensor(seq)
        mask[i, :len(seq)] = 1
        labels[i, :len(label)] = torch.tensor(label)
    return Segments(input_ids, mask, labels, len(rows))


def question_prompt(question: str, documents: int) -> str:
    """The prompt the adapted model answers: the question without the context."""
    return f"You have memorized {documents} documents.\n{question}\nAnswer:"


def answer_example(tokenizer, question: str, answer: str, documents: int
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """(input_ids [1, L], shifted labels [1, L]) with the loss on ` {answer}<eos>` only.

    The prompt is tokenized exactly as the hf engine tokenizes a raw-text prompt."""
    prompt = tokenizer(question_prompt(question, documents)).input_ids
    target = tokenizer(" " + str(answer).strip(), add_special_tokens=False).input_ids
    target = target + [_eos_id(tokenizer)]
    seq = prompt + target
    labels = [-100] * (len(prompt) - 1) + target + [-100]
    return torch.tensor([seq]), torch.tensor([labels])
