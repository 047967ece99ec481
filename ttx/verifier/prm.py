"""The process verifier: a causal LM that predicts a good or bad token at each step's tag.

Math-Shepherd's convention (arXiv 2312.08935; peiyi9979/math-shepherd-mistral-7b-prm's model
card): the input is reward_inputs.tag_text, every step followed by " ки"; the logits at a tag
predict "+" (good) or "-" (bad), and a step's score is P(+) against P(-) there. Training is
Math-Shepherd's L_PRM (eq. 2), the cross-entropy of that two-way softmax against the step label y:
-[y log P(+) + (1 - y) log P(-)], averaged over the tags of a micro-batch; y is 0/1 (hard) or a
fraction (soft), as OpenRLHF's PRMLoss (openrlhf/models/loss.py, PRMLoss, before commit 6a981c8c)
restricts the logits to the two reward tokens and uses [y, 1 - y] as soft targets.

The tag, good and bad tokens must each be one token of the tokenizer: one that splits them gets
them as added tokens, the embeddings resized, the new rows set to the mean embedding.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ttx.errors import TtxError
from ttx.reward_inputs import MATH_SHEPHERD_TAG, tag_positions, tag_text
from ttx.verifier.data import Example
from ttx.verifier.heads import HeadConfig, attach_lora, device_of, pad, pad_id_of, quiet_transformers

GOOD_TOKEN, BAD_TOKEN = "+", "-"


@dataclass
class Item:
    ids: list[int]
    positions: list[int]          # the tag of each step (those cut by --max-length dropped)
    labels: list[float]


class ProcessVerifier:
    kind = "prm"

    def __init__(self, folder, cfg: HeadConfig, tag: str = MATH_SHEPHERD_TAG,
                 good: str = GOOD_TOKEN, bad: str = BAD_TOKEN, pos_weight: float | None = None):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        quiet_transformers()
        self.cfg, self.tag, self.good_text, self.bad_text = cfg, tag, good, bad
        from ttx.models import check_folder

        check_folder(Path(folder))                   # no remote code, safetensors only
        self.tokenizer = AutoTokenizer.from_pretrained(folder, trust_remote_code=False)
        self.pad_id = pad_id_of(self.tokenizer)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32,
                                                     trust_remote_code=False, use_safetensors=True)
        self.added = self._single_tokens(model, [tag, good, bad])
        self.tag_id, self.good, self.bad = (self._one(t) for t in (tag, good, bad))
        probe = self.tokenizer(tag_text("q", ["a", "b"], tag)).input_ids
        if len(tag_positions(probe, self.tag_id)) != 2:
            raise TtxError(f"the step tag {tag!r} is not one token where tag_text puts it",
                           field="--step-tag")
        self.model = attach_lora(model, cfg, "CAUSAL_LM")
        self.pos_weight = pos_weight

    def _one(self, text: str) -> int:
        ids = self.tokenizer(text, add_special_tokens=False).input_ids
        assert len(ids) == 1, (text, ids)
        return ids[0]

    def _single_tokens(self, model, texts: list[str]) -> list[str]:
        """Add the texts the tokenizer splits as tokens of their own; resize the embeddings."""
        from tokenizers import AddedToken

        split = [t for t in dict.fromkeys(texts)
                 if len(self.tokenizer(t, add_special_tokens=False).input_ids) != 1]
        if not split:
            return []
        self.tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in split])
        old = model.get_input_embeddings().weight.shape[0]
        model.resize_token_embeddings(len(self.tokenizer), mean_resizing=False)
        with torch.no_grad():                    # deterministic: the mean of the old rows
            emb = model.get_input_embeddings().weight
            emb[old:] = emb[:old].mean(0)
            out = model.get_output_embeddings()
            if out is not None and out.weight.data_ptr() != emb.data_ptr():
                out.weight[old:] = out.weight[:old].mean(0)
        return split

    def encode(self, examples: list[Example]) -> tuple[list[Item], list[int]]:
        """Items, and the indices of the examples kept: a trace with no step, or whose text holds
        the tag itself (its tags would not be one per step), is left out."""
        items, kept = [], []
        for i, e in enumerate(examples):
            if not e.steps or e.step_labels is None:
                continue
            ids = self.tokenizer(tag_text(e.question, e.steps, self.tag)).input_ids
            positions = tag_positions(ids, self.tag_id)
            if len(positions) != len(e.steps):
                continue
            ids = ids[:self.cfg.max_length]          # steps whose tag is cut lose their label
            cut = [p for p in positions if p < len(ids)]
            if not cut:
                continue
            items.append(Item(ids, cut, list(e.step_labels[:len(cut)])))
            kept.append(i)
        return items, kept

    def pair_logits(self, module, items: list[Item]) -> tuple[torch.Tensor, torch.Tensor]:
        """(logits of [good, bad] at every tag of the batch, in item order; the item of each)."""
        ids, mask = pad([it.ids for it in items], self.pad_id, device_of(module))
        keep = sorted({p for it in items for p in it.positions})
        index = {p: j for j, p in enumerate(keep)}
        logits = module(input_ids=ids, attention_mask=mask,
                        logits_to_keep=torch.tensor(keep, device=ids.device)).logits
        rows = torch.tensor([b for b, it in enumerate(items) for _ in it.positions], device=ids.device)
        cols = torch.tensor([index[p] for it in items for p in it.positions], device=ids.device)
        return logits[rows, cols][:, [self.good, self.bad]].float(), rows

    def loss(self, module, items: list[Item]):
        pair, _ = self.pair_logits(module, items)
        y = torch.tensor([v for it in items for v in it.labels], device=pair.device)
        logp = torch.log_softmax(pair, -1)
        per_tag = -(y * logp[:, 0] + (1 - y) * logp[:, 1])       # Math-Shepherd eq. 2
        if self.pos_weight is not None:
            per_tag = per_tag * (self.pos_weight * y + (1 - y))
        return per_tag.mean()

    @torch.inference_mode()
    def step_scores(self, module, items: list[Item], batch_size: int = 8) -> list[list[float]]:
        """P(good) against P(bad) at each tag, per item."""
        module.eval()
        out = []
        for b in range(0, len(items), batch_size):
            chunk = items[b:b + batch_size]
            pair, rows = self.pair_logits(module, chunk)
            p = torch.softmax(pair, -1)[:, 0].tolist()
            rows = rows.tolist()
            out += [[v for v, r in zip(p, rows) if r == k] for k in range(len(chunk))]
        return out

    def reading(self) -> dict:
        """ttx_reward.json: how tts-run reads this folder."""
        return {"kind": "prm", "format": "tag", "prm_input": "model-card", "step_tag": self.tag,
                "good_token": self.good_text, "bad_token": self.bad_text,
                "added_tokens": self.added}
