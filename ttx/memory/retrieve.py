"""Retrieval of bank items for a problem: BM25 through `bm25s` (no model download) or cosine
similarity of mean-pooled hidden states from a local model, top-k, leave-one-out by source id,
and the block of text that goes before the question. k = 0 gives every item in bank order (the
whole cheatsheet, Dynamic Cheatsheet's cumulative variant)."""

from __future__ import annotations

from collections.abc import Sequence

PREAMBLE = ("Notes from earlier problems. They may or may not apply to this one; "
            "use them only if they help.")
RETRIEVERS = ("bm25", "embedding")


def _tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


def _item_text(it: dict) -> str:
    return f"{it['title']} {it['text']}"


def _top(items: list[dict], scores, k: int, exclude_source: str | None,
         positive_only: bool) -> list[dict]:
    """The k best-scoring items (all of them, in bank order, when k = 0), never one drawn from
    `exclude_source` (leave-one-out by source id)."""
    keep = lambda it: exclude_source is None or str(exclude_source) not in it["source_ids"]  # noqa: E731
    if k == 0:
        return [it for it in items if keep(it)]
    order = sorted(range(len(items)), key=lambda i: (-float(scores[i]), i))
    out = []
    for i in order:
        if positive_only and float(scores[i]) <= 0:
            break
        if keep(items[i]):
            out.append(items[i])
            if len(out) == k:
                break
    return out


class BM25Retriever:
    """Okapi BM25 over each item's title and text (ReasoningBank retrieves with k = 1 best)."""

    name = "bm25"

    def __init__(self, items: Sequence[dict]):
        import bm25s

        self.items = list(items)
        self._index = None
        if self.items:
            corpus = _tokens([_item_text(it) for it in self.items])
            if any(corpus):
                self._index = bm25s.BM25()
                self._index.index(corpus, show_progress=False)

    def retrieve(self, query: str, k: int = 1, exclude_source: str | None = None) -> list[dict]:
        """The k best items with a positive score, never one drawn from `exclude_source`."""
        if k == 0:
            return _top(self.items, [], 0, exclude_source, False)
        if self._index is None or k < 0:
            return []
        q = _tokens([query])[0]
        if not q:
            return []
        return _top(self.items, self._index.get_scores(q), k, exclude_source, True)


class Embedder:
    """Mean-pooled last hidden states of a local model, L2-normalised (cosine = dot product).

    `spec` is a model folder, a .gguf file or the default model's alias, resolved by
    ttx.models.resolve_model: nothing is ever downloaded (local_files_only)."""

    def __init__(self, spec: str, device: str = "cpu", batch: int = 16, max_tokens: int = 256):
        import torch
        from transformers import AutoModel, AutoTokenizer

        from ttx.errors import TtxError
        from ttx.models import resolve_model

        folder = resolve_model(spec)
        try:
            self.model = AutoModel.from_pretrained(folder, dtype=torch.float32, local_files_only=True,
                                                   trust_remote_code=False,
                                                   use_safetensors=True).to(device).eval()
            self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True,
                                                           trust_remote_code=False)
        except (OSError, ValueError, KeyError) as exc:
            raise TtxError(f"cannot load as an embedder ({exc})".splitlines()[0],
                           path=str(folder), field="--memory-embedder") from None
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.name, self.device = str(spec), device
        self.dimension = int(self.model.config.hidden_size)
        self.batch, self.max_tokens = batch, max_tokens
        self._cache: dict[str, object] = {}

    def embed(self, texts: Sequence[str]):
        """[len(texts), dimension] unit vectors; texts seen before come from a cache."""
        import torch

        todo = [t for t in dict.fromkeys(texts) if t not in self._cache]
        for s in range(0, len(todo), self.batch):
            part = todo[s:s + self.batch]
            enc = self.tokenizer(part, return_tensors="pt", padding=True, truncation=True,
                                 max_length=self.max_tokens).to(self.device)
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state            # [b, t, d]
            mask = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)  # mean over real tokens
            pooled = torch.nn.functional.normalize(pooled, dim=-1)
            for t, v in zip(part, pooled):
                self._cache[t] = v.cpu()
        if not texts:
            return torch.zeros(0, self.dimension)
        return torch.stack([self._cache[t] for t in texts])


class EmbeddingRetriever:
    """Cosine similarity between the question and each item's title and text."""

    name = "embedding"

    def __init__(self, items: Sequence[dict], embedder: Embedder):
        self.items, self.embedder = list(items), embedder
        self._matrix = embedder.embed([_item_text(it) for it in self.items])

    def retrieve(self, query: str, k: int = 1, exclude_source: str | None = None) -> list[dict]:
        if not self.items or k < 0:
            return []
        if k == 0:
            return _top(self.items, [], 0, exclude_source, False)
        scores = (self._matrix @ self.embedder.embed([query])[0]).tolist()
        return _top(self.items, scores, k, exclude_source, False)


def memory_block(items: Sequence[dict]) -> str | None:
    """The text injected before the question, or None when there is nothing to inject."""
    if not items:
        return None
    lines = [PREAMBLE] + [f"- {it['title']}: {it['text']}" if it["title"] and it["kind"] != "concept"
                          else f"- {it['text']}" for it in items]
    return "\n".join(lines)
