"""Memory at test time: a bank of short items distilled from solution traces, retrieved into
prompts (Dynamic Cheatsheet arXiv 2504.07952, ArcMemo arXiv 2509.04439, ReasoningBank arXiv
2509.25140). bank: schema, merge, lock, events; extract: traces -> items; retrieve: BM25, top-k."""
