"""The outcome verifier: one logit per (question, trace), trained to predict the trace's verdict.

Cobbe et al. 2021 (arXiv 2110.14168) verifiers and Math-Shepherd's ORM (arXiv 2312.08935, eq. 1):
L_ORM = -[y_s log r_s + (1 - y_s) log(1 - r_s)], r_s = sigmoid(logit). The model is the base's
*ForSequenceClassification with num_labels = 1 (its new `score` head reads the last token that is
not padding), LoRA on the linear layers or every weight. The input is reward_inputs.orm_text, the
text tts-run's RewardModel builds, encoded as it encodes it (no special tokens added to a chat
template's text, which already has them).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ttx.verifier.data import Example
from ttx.verifier.heads import HeadConfig, attach_lora, device_of, pad, pad_id_of, quiet_transformers


@dataclass
class Item:
    ids: list[int]
    label: float


class OutcomeVerifier:
    kind = "orm"

    def __init__(self, folder, cfg: HeadConfig, pos_weight: float | None = None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        quiet_transformers()
        self.cfg = cfg
        from ttx.models import check_folder

        check_folder(Path(folder))                   # no remote code, safetensors only
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.pad_id = pad_id_of(self.tokenizer)
        torch.manual_seed(cfg.seed)                  # the new head's initial weights
        model = AutoModelForSequenceClassification.from_pretrained(
            folder, num_labels=1, dtype=torch.float32, trust_remote_code=False,
            use_safetensors=True)
        model.config.pad_token_id = self.pad_id      # where the head reads: the last non-pad token
        self.model = attach_lora(model, cfg, "SEQ_CLS")
        self.pos_weight = pos_weight

    def text(self, question: str, response: str) -> str:
        from ttx.reward_inputs import orm_text

        return orm_text(self.tokenizer, question, response)

    def input_ids(self, question: str, response: str) -> list[int]:
        """A chat template writes its own special tokens; plain text gets the tokenizer's."""
        return self.tokenizer(self.text(question, response),
                              add_special_tokens=not self.tokenizer.chat_template).input_ids

    def encode(self, examples: list[Example]) -> tuple[list[Item], list[int]]:
        """Items, and the indices of the examples kept (longer than --max-length: left out)."""
        items, kept = [], []
        for i, e in enumerate(examples):
            ids = self.input_ids(e.question, e.text)
            if len(ids) <= self.cfg.max_length:
                items.append(Item(ids, 1.0 if e.correct else 0.0))
                kept.append(i)
        return items, kept

    def logits(self, module, items: list[Item]) -> torch.Tensor:
        ids, mask = pad([it.ids for it in items], self.pad_id, device_of(module))
        return module(input_ids=ids, attention_mask=mask).logits[:, 0].float()

    def loss(self, module, items: list[Item]):
        logits = self.logits(module, items)
        target = torch.tensor([it.label for it in items], device=logits.device)
        weight = None
        if self.pos_weight is not None:
            weight = torch.tensor(self.pos_weight, device=logits.device)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, target,
                                                                    pos_weight=weight)
        return loss

    @torch.inference_mode()
    def scores(self, module, items: list[Item], batch_size: int = 8) -> list[float]:
        """P(correct) = sigmoid(logit) per item, as RewardModel reads a one-label head."""
        module.eval()
        out = []
        for b in range(0, len(items), batch_size):
            out += torch.sigmoid(self.logits(module, items[b:b + batch_size])).tolist()
        return out

    def reading(self) -> dict:
        """ttx_reward.json: how tts-run reads this folder."""
        return {"kind": "orm", "head": "sequence-classification", "num_labels": 1,
                "score": "sigmoid", "input": "chat" if self.tokenizer.chat_template else "plain"}
