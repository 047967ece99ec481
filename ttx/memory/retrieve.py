"""Retrieval of bank items for a problem: BM25 through `bm25s` (no model download), top-k,
leave-one-out by source id, and the block of text that goes before the question."""

from __future__ import annotations

from collections.abc import Sequence

PREAMBLE = ("Notes from earlier problems. They may or may not apply to this one; "
            "use them only if they help.")


def _tokens(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class BM25Retriever:
    """Okapi BM25 over each item's title and text (ReasoningBank retrieves with k = 1 best)."""

    def __init__(self, items: Sequence[dict]):
        import bm25s

        self.items = list(items)
        self._index = None
        if self.items:
            corpus = _tokens([f"{it['title']} {it['text']}" for it in self.items])
            if any(corpus):
                self._index = bm25s.BM25()
                self._index.index(corpus, show_progress=False)

    def retrieve(self, query: str, k: int = 1, exclude_source: str | None = None) -> list[dict]:
        """The k best items with a positive score, never one drawn from `exclude_source`."""
        if self._index is None or k <= 0:
            return []
        q = _tokens([query])[0]
        if not q:
            return []
        scores = self._index.get_scores(q)
        order = sorted(range(len(self.items)), key=lambda i: (-float(scores[i]), i))
        out = []
        for i in order:
            if float(scores[i]) <= 0:
                break
            item = self.items[i]
            if exclude_source is not None and str(exclude_source) in item["source_ids"]:
                continue                                    # leave-one-out by source id
            out.append(item)
            if len(out) == k:
                break
        return out


def memory_block(items: Sequence[dict]) -> str | None:
    """The text injected before the question, or None when there is nothing to inject."""
    if not items:
        return None
    lines = [PREAMBLE] + [f"- {it['title']}: {it['text']}" if it["title"] and it["kind"] != "concept"
                          else f"- {it['text']}" for it in items]
    return "\n".join(lines)
