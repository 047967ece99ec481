"""Prefix reuse for the hf engine: the KV cache of earlier prompts and traces, kept across calls.

A radix tree over token ids (as SGLang's RadixAttention): each node holds the keys and values of
its edge's tokens for every layer, so prompts sharing a prefix share its memory. `match(ids)`
returns the longest stored prefix of `ids` (its length and its per-layer K/V); `insert(ids, kv,
start)` stores the K/V of `ids[start:]` below the (already stored) `ids[:start]`. Memory is
bounded (`max_bytes`): the least recently used leaves go first.

Only caches whose every layer is plain attention (K/V per token) can be cut at a prefix; the
engine turns reuse off for models with recurrent state (Mamba layers, In-Place TTT fast weights)
or sliding-window layers.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field

import torch

KV = list[tuple[torch.Tensor, torch.Tensor]]       # per layer: keys, values [heads, tokens, dim]


@dataclass(eq=False)
class _Node:
    tokens: tuple[int, ...] = ()
    kv: KV = field(default_factory=list)
    parent: "_Node | None" = None
    children: dict[int, "_Node"] = field(default_factory=dict)
    used: int = 0

    def nbytes(self) -> int:
        return sum(k.numel() * k.element_size() + v.numel() * v.element_size() for k, v in self.kv)


def _common(a: tuple[int, ...], b: list[int], start: int) -> int:
    n = 0
    for x, y in zip(a, itertools.islice(b, start, None)):
        if x != y:
            break
        n += 1
    return n


class PrefixStore:
    """Token-id radix tree of K/V tensors with an LRU memory bound (module docstring)."""

    def __init__(self, max_bytes: int):
        self.root = _Node()
        self.max_bytes = max_bytes
        self.bytes = 0
        self._clock = itertools.count(1)
        self.hits = self.lookups = self.reused_tokens = 0

    def _walk(self, ids: list[int]) -> list[tuple[_Node, int]]:
        """The path of (node, tokens of its edge used) that matches a prefix of ids."""
        path, node, i = [], self.root, 0
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            used = _common(child.tokens, ids, i)
            path.append((child, used))
            i += used
            if used < len(child.tokens):
                break
            node = child
        return path

    def match(self, ids: list[int], limit: int | None = None) -> tuple[int, KV | None]:
        """(length, per-layer K/V [heads, length, dim]) of the longest stored prefix of ids,
        at most `limit` tokens."""
        self.lookups += 1
        path = self._walk(ids)
        total, pieces = 0, []
        stamp = next(self._clock)
        for node, used in path:
            if limit is not None:
                used = min(used, limit - total)
            if used <= 0:
                break
            node.used = stamp
            pieces.append((node, used))
            total += used
        if not total:
            return 0, None
        layers = len(pieces[0][0].kv)
        kv = [(torch.cat([n.kv[j][0][:, :u] for n, u in pieces], dim=1),
               torch.cat([n.kv[j][1][:, :u] for n, u in pieces], dim=1)) for j in range(layers)]
        self.hits += 1
        self.reused_tokens += total
        return total, kv

    def insert(self, ids: list[int], kv: KV, start: int = 0) -> None:
        """Store the K/V of ids[start:] (kv: per layer [heads, len(ids) - start, dim]); the tokens
        before `start` must be stored already (else nothing is stored)."""
        node, i = self.root, 0
        stamp = next(self._clock)
        while i < len(ids):
            child = node.children.get(ids[i])
            if child is None:
                break
            used = _common(child.tokens, ids, i)
            if used < len(child.tokens):
                child = self._split(child, used)       # continue from the shared head
            child.used = stamp
            node, i = child, i + used
        if i < start or i >= len(ids):
            return                             # a needed prefix was evicted, or all stored
        offset = i - start
        leaf = _Node(tokens=tuple(ids[i:]), parent=node, used=stamp,
                     kv=[(k[:, offset:].contiguous(), v[:, offset:].contiguous()) for k, v in kv])
        node.children[ids[i]] = leaf
        self.bytes += leaf.nbytes()
        self._evict()

    def _split(self, node: _Node, at: int) -> _Node:
        """Cut a node's edge after `at` tokens: the head becomes a new parent node."""
        head = _Node(tokens=node.tokens[:at], parent=node.parent, used=node.used,
                     kv=[(k[:, :at].contiguous(), v[:, :at].contiguous()) for k, v in node.kv])
        node.parent.children[node.tokens[0]] = head
        node.tokens = node.tokens[at:]
        node.kv = [(k[:, at:].contiguous(), v[:, at:].contiguous()) for k, v in node.kv]
        node.parent = head
        head.children[node.tokens[0]] = node
        return head

    def _evict(self) -> None:
        while self.bytes > self.max_bytes:
            leaves = [n for n in self._nodes() if not n.children]
            if not leaves:
                return
            oldest = min(leaves, key=lambda n: n.used)
            del oldest.parent.children[oldest.tokens[0]]
            self.bytes -= oldest.nbytes()

    def _nodes(self):
        stack = list(self.root.children.values())
        while stack:
            n = stack.pop()
            yield n
            stack.extend(n.children.values())

    def stats(self) -> dict:
        return {"prefix_lookups": self.lookups, "prefix_hits": self.hits,
                "prefix_reused_tokens": self.reused_tokens, "prefix_cache_bytes": self.bytes}
