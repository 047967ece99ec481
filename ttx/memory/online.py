"""Memory inside tts-run: what each problem is given, and (--memory-update) learning online.

`Recall` answers, per problem, the memory block to put before its question and the ids of the
items in it, retrieved when the problem's prompt is built (BM25 or embeddings, top-k,
leave-one-out). With --memory-update the bank is updated from each record right after it is
written and before the next problem is prompted, the Dynamic Cheatsheet way (arXiv 2504.07952;
ReasoningBank's closed loop, arXiv 2509.25140): the record's traces are judged (gold answer, or
the model itself when there is none or with --memory-judge self), distilled in the chosen style
and merged into the bank, and the items the record was given are credited (`uses`, solved /
failed). Each record is learned once, keyed in the bank's `extracted_from`; on --resume the
records already written but not yet learned (an interruption between the two) are learned first.
As in memory-extract, an engine that enforces output constraints is asked for the items with a
JSON schema and for the self judge's verdict from the choice list yes / no (ttx.memory.structured).
"""

from __future__ import annotations

import time
from collections import Counter

from ttx.errors import TtxError

DEFAULT_EMBEDDER = "smollm2-135m-instruct"
_SALT = 7919                                  # extraction seeds differ from generation seeds


class Settings:
    """The memory options (ttx.tts.options.MemoryOptions) read together with the run's settings
    (ttx.tts.run.RunConfig: output, fields, repeats, seed), which know nothing of memory."""

    def __init__(self, memory, run):
        self._memory, self._run = memory, run

    def __getattr__(self, name: str):
        return getattr(self._memory if name.startswith("memory") else self._run, name)


def check_memory_options(memory, run) -> None:
    """Refuse impossible memory settings before a model is loaded."""
    from pathlib import Path

    from ttx.memory.bank import load_bank
    from ttx.memory.retrieve import RETRIEVERS

    cfg = Settings(memory, run)
    if not cfg.memory:
        if cfg.memory_update:
            raise TtxError("--memory-update needs --memory BANK (created if missing)",
                           field="--memory-update")
        return
    if cfg.output != "-" and Path(cfg.output).resolve() == Path(cfg.memory).resolve():
        raise TtxError("the memory bank and the output are the same file", path=cfg.memory,
                       field="--memory")
    if cfg.memory_retriever not in RETRIEVERS:
        raise TtxError(f"unknown retriever {cfg.memory_retriever!r}", field="--memory-retriever")
    from ttx.memory.extract import check_style

    check_style(cfg.memory_style, cfg.memory_item_format)
    if cfg.memory_update and cfg.repeats.maximum > cfg.repeats.minimum:
        raise TtxError("--memory-update needs a fixed number of repeats: dynamic repeats "
                       "regenerate finished calls, which an updated bank would change",
                       field="--memory-update")
    if not cfg.memory_update and not Path(cfg.memory).exists():
        raise TtxError("no such file (a bank from ttx memory-extract, or add --memory-update "
                       "to build one during the run)", path=cfg.memory, field="--memory")
    load_bank(cfg.memory)                         # a bad bank fails here
    if cfg.memory_retriever == "embedding":
        from ttx.models import resolve_model

        resolve_model(cfg.memory_embedder or DEFAULT_EMBEDDER)


def record_key(record: dict) -> str:
    """What `extracted_from` lists for a learned record: the id, plus level and repeat past the
    first (so each attempt is learned once)."""
    level, repeat = int(record.get("level", 1)), int(record.get("repeat", 0))
    pid = str(record["id"])
    return pid if (level, repeat) == (1, 0) else f"{pid}@{level}.{repeat}"


class Recall:
    """tts-run's memory hook (ttx.tts.run.RunHook): before(problem) -> (memory block or None,
    item ids); after(problem, record) learns online; resume(records) catches up."""

    def __init__(self, memory, run, problems: list[dict], engine):
        self.memory_options = memory
        self.cfg, self.engine = Settings(memory, run), engine
        cfg = self.cfg
        self.problems = {str(p["id"]): p for p in problems}
        self.order = {str(p["id"]): i for i, p in enumerate(problems)}
        self._cache: dict[str, tuple[str | None, list[str]]] = {}
        self._in_flight: set[str] = set()     # prompted, record not yet learned
        self._retriever = None
        self._embedder = None
        self.with_items: set[str] = set()
        self.learned, self.learn_s = 0, 0.0
        self.events: Counter = Counter()
        self.counts: Counter = Counter()
        if not cfg.memory:
            return
        if cfg.memory_retriever == "embedding":
            from ttx.memory.retrieve import Embedder

            self._embedder = Embedder(cfg.memory_embedder or DEFAULT_EMBEDDER)
        if cfg.memory_update:
            from ttx.memory.bank import load_meta

            self.extracted = set(load_meta(cfg.memory).get("extracted_from", []))

    def fingerprint(self) -> dict:
        """The memory options, by the names the resume check has always used."""
        from dataclasses import asdict

        return asdict(self.memory_options)

    def inputs(self) -> list[str]:
        return [self.cfg.memory] if self.cfg.memory else []

    @property
    def one_at_a_time(self) -> bool:
        return bool(self.cfg.memory and self.cfg.memory_update)

    def resume(self, records: list[dict]) -> None:
        """--resume: learn the records already written but not learned, in file order."""
        for record in records:
            problem = self.problems.get(str(record.get("id")))
            if problem is not None and "traces" in record:
                self.learn(problem, record)

    def before(self, problem: dict) -> tuple[str | None, list[str]]:
        return self[str(problem["id"])]

    def after(self, problem: dict, record: dict) -> None:
        self.learn(problem, record)

    def retriever(self):
        if self._retriever is None:
            from ttx.memory.bank import load_bank
            from ttx.memory.retrieve import BM25Retriever, EmbeddingRetriever

            items = load_bank(self.cfg.memory)
            self._retriever = (EmbeddingRetriever(items, self._embedder) if self._embedder
                               else BM25Retriever(items))
        return self._retriever

    def __getitem__(self, pid: str) -> tuple[str | None, list[str]]:
        if not self.cfg.memory:
            return None, []
        if pid not in self._cache:
            from ttx.memory.retrieve import memory_block

            question = self.problems[pid][self.cfg.question_field]
            items = self.retriever().retrieve(question, self.cfg.memory_k, exclude_source=pid)
            self._cache[pid] = (memory_block(items), [it["id"] for it in items])
            self._in_flight.add(pid)
            if items:
                self.with_items.add(pid)
        return self._cache[pid]

    def learn(self, problem: dict, record: dict) -> None:
        """--memory-update: judge the record, distil it into the bank, credit the items it was
        given. Called right after the record is written; a record learned before is skipped."""
        if not (self.cfg.memory and self.cfg.memory_update):
            return
        key = record_key(record)
        if key in self.extracted:
            return
        from ttx.engines.base import SamplingParams
        from ttx.memory import bank as bank_mod
        from ttx.memory.cheatsheet import update_cheatsheet
        from ttx.memory.extract import ExtractConfig, add_record, attempts_text, extract_items, judge_problems
        from ttx.scoring.answers import answers_equal, extract_answer
        from ttx.seeds import call_seed

        t0 = time.perf_counter()
        cfg = self.cfg
        gold = problem.get(cfg.answer_field)
        judge = "gold" if cfg.memory_judge == "gold" and gold is not None else "self"
        ecfg = ExtractConfig(style=cfg.memory_style, judge=judge, item_format=cfg.memory_item_format,
                             question_field=cfg.question_field, answer_field=cfg.answer_field)
        row = {**problem, **record, "memory_ids": record.get("memory_ids") or []}
        if judge == "gold":
            row["correct"] = float(answers_equal(record.get("pred"), extract_answer(str(gold))))
        else:
            row.pop(cfg.answer_field, None)        # --memory-judge self: the gold stays unseen
        groups: dict = {}
        pid = add_record(groups, row, ecfg, cfg.output, 0)
        p = groups[pid]
        seed = call_seed(cfg.strategy.params.seed, _SALT, self.order.get(pid, 0),
                         int(record.get("level", 1)), int(record.get("repeat", 0)))
        params = SamplingParams(max_new_tokens=cfg.memory_extract_tokens, temperature=0.0,
                                seed=seed)
        if judge == "self":
            judge_problems(self.engine, [p], seed, self.counts)
        self.counts["uses_recorded"] += bank_mod.record_uses(
            cfg.memory, [(pid, p.memory_ids, p.correct)])
        meta = {"retriever": cfg.memory_retriever}
        if self._embedder is not None:
            meta.update(embedder=self._embedder.name, dimension=self._embedder.dimension)
        if cfg.memory_style == "cheatsheet":
            shown, mode, _ = attempts_text(p, ecfg)
            self.counts[f"mode_{mode}"] += 1
            events = update_cheatsheet(self.engine, cfg.memory, p, shown, params, self.counts,
                                       item_format=cfg.memory_item_format, extracted_key=key,
                                       meta_updates=meta)
        else:
            items = extract_items(self.engine, [p], ecfg, params, self.counts)
            events = bank_mod.add_items(cfg.memory, items, meta_updates={
                **meta, "extracted_from": [key], "style": cfg.memory_style})
        self.events.update(e["event"] for e in events)
        self.extracted.add(key)
        self.learned += 1
        self._retriever = None                    # the next problem sees the updated bank,
        self._in_flight.discard(pid)              # while a record still to be written keeps
        self._cache = {k: v for k, v in self._cache.items() if k in self._in_flight}  # its own
        self.learn_s += time.perf_counter() - t0

    def summary(self) -> dict:
        if not self.cfg.memory:
            return {}
        out = {"memory_problems_with_items": len(self.with_items)}
        if self.cfg.memory_update:
            from ttx.memory.bank import load_bank

            out["memory_update"] = {
                "learned": self.learned, **{k: int(v) for k, v in sorted(self.counts.items())},
                "events": {k: self.events.get(k, 0) for k in ("ADD", "UPDATE", "DELETE", "NOOP")},
                "bank_items": len(load_bank(self.cfg.memory)), "wall_s": round(self.learn_s, 3)}
        return out
