"""ETMR: entropy-fork tree majority rollouts (Liu et al. 2025, ETTRL, arXiv 2508.11356, §3.1).

For each prompt, M trees. A tree starts from one fully sampled response, its root. The N positions
of the root whose token entropy H_t = −Σ_v π(v | q, o_<t) log π(v | q, o_<t) is highest are its
forks; from each fork B branches are sampled: the prefix o_<t is kept and everything from the fork
token on is generated anew. Every root and every branch is a leaf, so a prompt gets

    R_tree = M (1 + B·N)                                                     (ETTRL, rollout count)

rollouts, and the majority vote runs over all of them. With forks spread evenly a branch
regenerates half a response on average, so the token cost relative to R_tree independent samples is

    TR_tree = (1 + 0.5·B·N) / (1 + B·N)                                      (ETTRL, token ratio)

(4/7 for N = 3, B = 2: the paper's "60% of the rollout tokens"). The paper's setting is M = 12,
N = 2, B = 2: 60 leaves against TTRL's 64 samples.

The branch re-samples the fork token itself (its prefix stops before it), as TreeRL's EPTree does,
the tree search ETMR builds on (THUDM/TreeRL, openrlhf/trainer/ppo_utils/tree_node.py,
TreeNode.get_prefix_ids(split_idx) = tokens[:split_idx]).

Everything is generated through the Engine interface: roots as n = M traces of the prompt (one shared
prefill), branches as n = B traces of the prompt text followed by the decoded prefix, each with the
remaining token budget so a leaf is never longer than a root may be.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from ttx.engines.base import Prompt, SamplingParams
from ttx.models import render_prompt

# (prompt token ids per row, response token ids per row) -> per-token entropies per row
EntropyFn = Callable[[list[list[int]], list[list[int]]], list[list[float]]]


@dataclass
class Leaf:
    tree: int                        # which of the prompt's M trees
    fork: int | None                 # the token position the branch forked at; None for the root
    response_ids: list[int]          # the whole response: prefix + what the branch generated
    generated: int                   # tokens this leaf generated itself (a branch reuses its prefix)
    finish_reason: str


def fork_positions(entropies: Sequence[float], n: int) -> list[int]:
    """The n positions of highest entropy (ties: the earliest), in increasing order."""
    order = sorted(range(len(entropies)), key=lambda t: (-entropies[t], t))
    return sorted(order[:n])


def token_ratio(branches: int, forks: int) -> float:
    """TR_tree: tokens a tree generates relative to as many independent samples (even forks)."""
    return (1 + 0.5 * branches * forks) / (1 + branches * forks)


def tree_rollouts(engine, tokenizer, prompts: Sequence[Prompt], params: SamplingParams, *, trees: int,
                  forks: int, branches: int, entropy_fn: EntropyFn, branch_seed: int | None = None
                  ) -> list[list[Leaf]]:
    """The leaves of every prompt: its roots first (tree order), then each tree's branches."""
    roots = engine.generate(list(prompts), trees, params)
    prompt_ids = [engine.encode(p) for p in prompts]
    rows = [(p, trace) for p, gen in enumerate(roots) for trace in gen.traces]
    entropies = entropy_fn([prompt_ids[p] for p, _ in rows], [list(t.token_ids) for _, t in rows])
    leaves: list[list[Leaf]] = [[] for _ in prompts]
    jobs = []                                    # (prompt, tree, fork position, prefix)
    for (p, trace), ent in zip(rows, entropies):
        tree = len(leaves[p])
        ids = list(trace.token_ids)
        leaves[p].append(Leaf(tree, None, ids, trace.completion_tokens, trace.finish_reason))
        for t in fork_positions(ent, forks):
            jobs.append((p, tree, t, ids[:t]))
    if not jobs or branches == 0:
        return leaves
    branch_prompts, per = [], []
    for p, _, _, prefix in jobs:
        if prefix:
            text = render_prompt(tokenizer, prompts[p]) + tokenizer.decode(prefix, skip_special_tokens=False)
            branch_prompts.append(text)
        else:
            branch_prompts.append(prompts[p])
        per.append(replace(params, max_new_tokens=params.max_new_tokens - len(prefix),
                           seed=branch_seed if branch_seed is not None else params.seed))
    gens = engine.generate(branch_prompts, branches, per)
    for (p, tree, t, prefix), gen in zip(jobs, gens):
        for trace in gen.traces:
            leaves[p].append(Leaf(tree, t, prefix + list(trace.token_ids), trace.completion_tokens,
                                  trace.finish_reason))
    return leaves
