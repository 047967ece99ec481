"""Memory at test time: a bank of short items distilled from solution traces, retrieved into
prompts (Dynamic Cheatsheet arXiv 2504.07952, ArcMemo arXiv 2509.04439, ReasoningBank arXiv
2509.25140). bank: schema, merge, rewrite, uses, lock, events; parse: the extractor's output;
extract: traces -> items; cheatsheet: the Dynamic Cheatsheet rewrite; retrieve: BM25 or
embeddings, top-k; online: retrieval and learning inside tts-run (--memory-update)."""
