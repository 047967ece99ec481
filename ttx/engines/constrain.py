"""Output constraints (SamplingParams.constraint) enforced token by token for the hf engine.

Each constrained row of a batch owns a `Guide`: a grammar matcher and the bitmask of the tokens it
allows next. The decode loop masks the constrained rows' logits before sampling (`mask_logits`),
then advances each row's guide with the token it sampled (`Guide.advance`), which says when the
constraint is complete (only EOS may follow) so the row can finish at once. Guides belong to rows,
not to batch positions, so rows joining mid-batch, n traces of one prompt (n guides) and
cancelled rows need nothing else.

The library is llguidance (docs/structured-output.md has the measurements against xgrammar); it
is imported on the first constraint only. `backend="xgrammar"` is kept for that comparison
(bench/structured.py) and needs `pip install xgrammar`.
"""

from __future__ import annotations

import json

import torch

from ttx.engines.base import Constraint
from ttx.errors import TtxError

BACKENDS = ("llguidance", "xgrammar")
_SHIFTS = torch.arange(32, dtype=torch.int32)
# JSON nesting a schema may have: llguidance's parser stops at 128 (serde_json's recursion limit)
MAX_DEPTH = 128


class Guide:
    """One row's matcher and the mask of the tokens it allows next (int32 bits, 32 per word)."""

    def __init__(self, owner: "Constrainer", matcher, kind: str = ""):
        self.owner, self.matcher, self.kind = owner, matcher, kind
        self.mask = torch.empty(owner.words, dtype=torch.int32)
        self.complete = False
        owner.fill(self)

    def advance(self, token: int) -> bool:
        """Accept the sampled token; True once the constraint is complete (only EOS may follow,
        or EOS was the token)."""
        if self.complete:
            return True
        self.owner.accept(self, token)
        if token in self.owner.eos_ids:
            self.complete = True
        else:
            self.owner.fill(self)
            self.complete = self.owner.finished(self)
        return self.complete


class Constrainer:
    """Builds guides for one tokenizer and vocabulary (compiled grammars are cached by spec)."""

    def __init__(self, tokenizer, vocab_size: int, eos_ids, backend: str = "llguidance"):
        if backend not in BACKENDS:
            raise ValueError(f"unknown constraint backend {backend!r} (choose {', '.join(BACKENDS)})")
        self.backend, self.vocab_size = backend, int(vocab_size)
        self.eos_ids = frozenset(int(t) for t in eos_ids)
        self.words = (self.vocab_size + 31) // 32
        self._grammars: dict[str, object] = {}
        eos = sorted(self.eos_ids)
        if backend == "llguidance":
            import llguidance.hf

            self._tok = llguidance.hf.from_tokenizer(tokenizer, n_vocab=self.vocab_size,
                                                     eos_token=eos or None)
        else:
            import xgrammar

            info = xgrammar.TokenizerInfo.from_huggingface(tokenizer, vocab_size=self.vocab_size,
                                                          stop_token_ids=eos or None)
            self._compiler = xgrammar.GrammarCompiler(info, max_threads=1)
            self._eos_only = torch.zeros(self.words, dtype=torch.int32)
            for t in eos:
                self._eos_only[t // 32] |= _bit(t % 32)

    # ------------------------------------------------------------------ one row
    def guide(self, constraint: Constraint) -> Guide:
        grammar = self._grammar(constraint)
        if self.backend == "llguidance":
            import llguidance

            matcher = llguidance.LLMatcher(self._tok, grammar)
            if matcher.is_error():
                raise TtxError(f"cannot enforce the {constraint.kind} constraint: "
                               f"{_one_line(matcher.get_error())}", field="constraint")
        else:
            import xgrammar

            matcher = xgrammar.GrammarMatcher(grammar)
        return Guide(self, matcher, constraint.kind)

    def check(self, constraint: Constraint) -> None:
        """Compile the constraint and open one matcher on it, so a schema or pattern that is
        malformed, too deep or satisfied by no text at all fails before anything is generated."""
        self.guide(constraint)

    def fill(self, guide: Guide) -> None:
        if self.backend == "llguidance":
            import llguidance.torch

            llguidance.torch.fill_next_token_bitmask(guide.matcher, guide.mask.view(1, -1), 0)
            if guide.matcher.is_error():      # no token can continue: nothing satisfies it
                raise TtxError(f"cannot enforce the {guide.kind} constraint: no "
                               "text can complete it (llguidance: "
                               f"{_one_line(guide.matcher.get_error())})", field="constraint")
        else:
            guide.matcher.fill_next_token_bitmask(guide.mask.view(1, -1), 0)

    def accept(self, guide: Guide, token: int) -> None:
        if self.backend == "llguidance":
            ok = guide.matcher.consume_token(token)
        else:
            ok = guide.matcher.accept_token(token)
        if not ok:      # only a masked-out token can get here: a bug, not a user error
            raise RuntimeError(f"{self.backend} refused token {token} that its mask allowed")

    def finished(self, guide: Guide) -> bool:
        if self.backend == "llguidance":
            return guide.matcher.is_stopped()
        return guide.matcher.is_terminated() or torch.equal(guide.mask, self._eos_only)

    def _grammar(self, constraint: Constraint):
        depth = _depth(constraint.spec)
        if depth > MAX_DEPTH:                 # before anything recurses through it
            raise TtxError(f"cannot compile the {constraint.kind} constraint: the schema is "
                           f"nested more than {MAX_DEPTH} levels deep", field="constraint")
        key = constraint.key()
        if key not in self._grammars:
            try:
                self._grammars[key] = self._compile(constraint)
            except (ValueError, RuntimeError, TypeError) as exc:     # a bad schema or pattern
                raise TtxError(f"cannot compile the {constraint.kind} constraint: "
                               f"{_one_line(exc)}", field="constraint") from None
        return self._grammars[key]

    def _compile(self, c: Constraint):
        if self.backend == "llguidance":
            import llguidance

            if c.kind == "json":       # compact JSON: a small model cannot loop on whitespace
                grammar = llguidance.LLMatcher.grammar_from_json_schema(
                    c.spec, defaults={"whitespace_flexible": False})
            else:
                grammar = llguidance.grammar_from(c.kind, c.spec if c.kind == "regex"
                                                  else json.dumps(list(c.spec)))
            error = llguidance.LLMatcher.validate_grammar(grammar, self._tok)
            if error:
                raise ValueError(error)
            return grammar
        if c.kind == "json":
            return self._compiler.compile_json_schema(json.dumps(c.spec), any_whitespace=False,
                                                      separators=(",", ":"))
        if c.kind == "regex":
            return self._compiler.compile_regex(c.spec)
        return self._compiler.compile_grammar(
            "root ::= " + " | ".join(json.dumps(choice) for choice in c.spec))


def _one_line(error, limit: int = 300) -> str:
    """A library's error as one line: its lines joined, up to the parser-state dump llguidance
    appends, cut at `limit` characters."""
    lines = []
    for line in str(error).splitlines():
        if line.strip().startswith("<state>"):
            break
        if line.strip():
            lines.append(line.strip())
    text = " ".join(lines) or type(error).__name__
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _depth(spec) -> int:
    """How deeply lists and objects nest in a spec, counted without recursion."""
    deepest, stack = 0, [(spec, 1)]
    while stack:
        obj, d = stack.pop()
        if isinstance(obj, dict):
            obj = list(obj.values())
        if isinstance(obj, (list, tuple)):
            deepest = max(deepest, d)
            if d <= MAX_DEPTH:
                stack += [(v, d + 1) for v in obj]
    return deepest


def _bit(i: int) -> int:
    """Bit i of an int32 word, as a Python int that fits int32 (bit 31 is the sign)."""
    return -(1 << 31) if i == 31 else 1 << i


def mask_logits(scores: torch.Tensor, raw: torch.Tensor, guides: list) -> torch.Tensor:
    """Logits with every token a row's guide disallows at -inf (rows without a guide untouched).

    `scores` may already hold other bans (min_new_tokens' EOS); a row left with no token at all
    is masked from `raw` instead, so a complete constraint still gets its EOS."""
    rows = [b for b, g in enumerate(guides) if g is not None]
    if not rows:
        return scores
    index = torch.tensor(rows, device=scores.device)
    masks = torch.stack([guides[b].mask for b in rows]).to(scores.device)
    allowed = ((masks.unsqueeze(-1) >> _SHIFTS.to(scores.device)) & 1).bool().flatten(1)
    allowed = allowed[:, :scores.shape[-1]]
    if allowed.shape[1] < scores.shape[-1]:       # logits wider than the tokenizer's vocabulary
        allowed = torch.nn.functional.pad(allowed, (0, scores.shape[-1] - allowed.shape[1]))
    picked = scores[index].masked_fill(~allowed, -torch.inf)
    dead = torch.isinf(picked).all(dim=-1) & ~torch.isinf(raw[index]).all(dim=-1)
    if dead.any():
        picked[dead] = raw[index][dead].masked_fill(~allowed[dead], -torch.inf)
    out = scores.clone()
    out[index] = picked
    return out
