"""TTT-Discover's pieces against the authors' code (test-time-training/discover@96df74f): the
entropic advantages with the adaptive β and the PUCT archive. The reference's rules are written out
here from its code (file and line cited) and driven on the same inputs as ttx's."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch

from ttx.rl.entropic import entropic_advantages, group_entropic, kl_to_uniform, solve_beta
from ttx.rl.puct import PUCTBuffer

# --- entropic_adaptive_beta -------------------------------------------------------------------


def ref_entropic_adaptive_beta(rewards):
    """tinker_cookbook/rl/train.py:73-125 (compute_advantages, adv_estimator ==
    "entropic_adaptive_beta"), written out; returns (β, advantages)."""
    delta, beta_max, iters, eps = np.log(2), 1e6, 60, 1e-12          # :74-77
    r = torch.tensor(rewards).float()                                  # :57, :79
    k = r.shape[0]
    if k < 2:
        beta = r.new_tensor(0.0)                                       # :83
    else:
        log_k = math.log(k)

        def kl_hat(b):                                                 # :87-94
            b = r.new_tensor(b)
            logits = b * (r - r.max(dim=0, keepdim=True).values)
            logq = logits - torch.logsumexp(logits, dim=0, keepdim=True)
            return float((torch.exp(logq) * (logq + log_k)).sum(dim=0).mean().item())

        lo, hi = 0.0, 1.0                                              # :96-114
        if kl_hat(hi) < delta:
            while hi < beta_max and kl_hat(hi) < delta:
                hi *= 2.0
            beta = r.new_tensor(hi) if kl_hat(hi) < delta else None
        else:
            beta = None
        if beta is None:
            for _ in range(iters):
                mid = 0.5 * (lo + hi)
                if kl_hat(mid) < delta:
                    lo = mid
                else:
                    hi = mid
            beta = r.new_tensor(hi)
    e = torch.exp(beta * (r - r.max(dim=0, keepdim=True).values))    # :117
    z = e if k == 1 else (e.sum(dim=0, keepdim=True) - e) / (k - 1)    # :119-122
    return float(beta), (e / (z + eps) - 1.0).tolist()                 # :124-125


FIXED = [
    [0.0, 1.0],
    [0.1, 0.2, 0.3, 0.4],
    [0.5, 0.5, 0.5, 0.9],                  # one outlier: β small
    [0.01, 0.02, 0.011, 0.019, 0.015],     # a narrow range: β large (the doubling branch)
    [1 / (1 + d) for d in (0, 3, 7, 12, 40, 40, 81, 2)],
    [0.0, 0.0, 0.0, 1e-7],                 # the KL never reaches ln 2 below 1e6: best effort
]


@pytest.mark.parametrize("rewards", FIXED)
def test_beta_and_advantages_match_reference(rewards):
    beta, adv = ref_entropic_adaptive_beta(rewards)
    assert solve_beta(rewards) == beta
    assert entropic_advantages(rewards, solve_beta(rewards)) == adv


def test_beta_hits_ln2_and_advantages_random_groups():
    rng = random.Random(0)
    for _ in range(30):
        k = rng.choice([2, 3, 8, 16])
        rewards = [rng.random() * rng.choice([1e-3, 1, 50]) for _ in range(k)]
        beta, adv = ref_entropic_adaptive_beta(rewards)
        assert solve_beta(rewards) == beta
        assert entropic_advantages(rewards, beta) == adv
        if beta < 1e6:                      # the bisection converged onto KL = ln 2
            kl = kl_to_uniform(torch.tensor(rewards, dtype=torch.float32), beta)
            assert kl == pytest.approx(math.log(2), abs=1e-4)


def test_known_values():
    # two samples 0 and 1: KL(q_β || uniform) = ln 2 − H(σ(β)) reaches ln 2 only where float32
    # rounds σ(β) to 1 (β ≈ 20.3), found after doubling to 32 and bisecting
    assert solve_beta([0.0, 1.0]) == ref_entropic_adaptive_beta([0.0, 1.0])[0]
    assert 16 < solve_beta([0.0, 1.0]) < 32
    # the best sample of a group gets a positive advantage, the worst −1 < A < 0
    adv = entropic_advantages([0.1, 0.2, 0.3, 0.4], solve_beta([0.1, 0.2, 0.3, 0.4]))
    assert adv[3] > 0 > adv[0] > -1 and adv == sorted(adv)
    assert solve_beta([3.0]) == 0.0 and entropic_advantages([3.0], 0.0) == pytest.approx([0.0])


def test_constant_groups_are_dropped():
    """data_processing.py:196-207 keeps only groups whose rewards are not all the same."""
    rewards = [0.5, 0.5, 0.5, 0.1, 0.9, 0.2, 0.0, 0.0]
    groups = [0, 0, 0, 1, 1, 1, 2, 2]
    adv, betas = group_entropic(rewards, groups)
    assert adv[:3] == [None] * 3 and adv[6:] == [None, None] and set(betas) == {1}
    beta, ref = ref_entropic_adaptive_beta([0.1, 0.9, 0.2])
    assert betas[1] == beta and adv[3:6] == ref


# --- PUCT archive -----------------------------------------------------------------------------


class RefPUCT:
    """tinker_cookbook/recipes/ttt/sampler.py PUCTSampler (:319-623) written out, states as dicts
    {id, code, value, parents}, group_size 1 (:356), no files."""

    def __init__(self, n_initial=1, puct_c=1.0, topk_children=2, max_buffer_size=1000):
        self.puct_c, self.topk, self.max = puct_c, topk_children, max_buffer_size
        self.states = [{"id": f"init{i}", "code": "", "value": 0.0, "parents": []} for i in range(n_initial)]
        self.initial = [dict(s) for s in self.states]
        self.n, self.m, self.T, self.G = {}, {}, 0, 1

    def sample_states(self, num_states):                                  # :471-527
        initial_ids = {s["id"] for s in self.initial}
        cands = list(self.states)
        vals = np.array([float(s["value"]) for s in cands])
        mask = np.array([s["id"] not in initial_ids for s in cands])
        v = vals[mask] if mask.any() else vals                             # :428-432
        scale = float(max(np.max(v) - np.min(v), 1e-6)) if v.size > 0 else 1.0
        # :434-440; numpy's default argsort orders ties as its SIMD sort happens to (not stably):
        # ttx breaks ties by buffer order, which is kind="stable" here (the one deviation)
        ranks = np.argsort(np.argsort(-vals, kind="stable"), kind="stable")
        w = (len(vals) - ranks).astype(np.float64)
        P = w / w.sum()
        sqrt_t = np.sqrt(1.0 + self.T / self.G)
        scores = []
        for i, s in enumerate(cands):                                      # :491-498
            n = self.n.get(s["id"], 0)
            m = self.m.get(s["id"], vals[i])
            Q = m if n > 0 else vals[i]
            scores.append((Q + self.puct_c * scale * P[i] * sqrt_t / (1.0 + n / self.G), vals[i], s))
        scores.sort(key=lambda x: (x[0], x[1]), reverse=True)
        if num_states > 1:                                                 # :502-513
            children = {}
            for s in self.states:
                for p in s["parents"]:
                    children.setdefault(p, set()).add(s["id"])
            picked, blocked = [], set()
            for entry in scores:
                s = entry[2]
                if s["id"] in blocked:
                    continue
                picked.append(s)
                lineage, queue, seen = {s["id"], *s["parents"]}, [s["id"]], {s["id"]}
                while queue:
                    for c in children.get(queue.pop(0), []):
                        if c not in seen:
                            seen.add(c)
                            lineage.add(c)
                            queue.append(c)
                blocked.update(lineage)
                if len(picked) >= num_states:
                    break
            return picked
        return [t[2] for t in scores[:num_states]]

    def update_states(self, child, parent):                               # :529-583, one child
        y = float(child["value"])
        pid = parent["id"]
        self.m[pid] = max(self.m.get(pid, y), y)
        for aid in [pid] + parent["parents"]:
            self.n[aid] = self.n.get(aid, 0) + 1
        self.T += 1
        if child["code"] in {s["code"] for s in self.states if s["code"]}:
            return
        child["parents"] = [pid] + parent["parents"]
        self.states.append(child)

    def record_failed_rollout(self, parent):                              # :619-623
        for aid in [parent["id"]] + parent["parents"]:
            self.n[aid] = self.n.get(aid, 0) + 1
        self.T += 1

    def flush(self):                                                       # :601-617, :585-599
        if self.topk > 0:
            by_parent, no_parent = {}, []
            for s in self.states:
                pid = s["parents"][0] if s["parents"] else None
                if pid:
                    by_parent.setdefault(pid, []).append(s)
                else:
                    no_parent.append(s)
            filtered = []
            for children in by_parent.values():
                children.sort(key=lambda x: x["value"], reverse=True)
                filtered.extend(children[:self.topk])
            self.states = no_parent + filtered
        if len(self.states) > self.max:
            by_actual = list(np.argsort([s["value"] for s in self.states], kind="stable")[::-1])
            initial_ids = {s["id"] for s in self.initial}
            keep = {i for i, s in enumerate(self.states) if s["id"] in initial_ids}
            for i in by_actual:
                if len(keep) >= self.max:
                    break
                keep.add(i)
            self.states = [self.states[i] for i in sorted(keep)]


def _drive(seed, steps, groups, group_size, max_size, n_initial=1, quantum=None):
    """The same scripted children (value, text, or None for an invalid one) through both."""
    rng = random.Random(seed)
    ref = RefPUCT(n_initial=n_initial, max_buffer_size=max_size)
    ours = PUCTBuffer(max_size=max_size, n_initial=n_initial)
    name = {f"init{i}": i for i in range(n_initial)}       # reference id -> ttx id
    for step in range(steps):
        ref_picked = ref.sample_states(groups)
        picked = ours.select(groups)
        assert [name[s["id"]] for s in ref_picked] == [s.id for s in picked], f"step {step}"
        for rp, p in zip(ref_picked, picked):
            for _ in range(group_size):
                if rng.random() < 0.2:
                    ref.record_failed_rollout(rp)
                    ours.failed(p)
                    continue
                value = rng.random()
                if quantum:
                    value = round(value / quantum) * quantum
                text = f"e{rng.randint(0, 40)}"           # some repeat: deduplicated
                child = {"id": f"s{step}-{len(ref.states)}-{text}", "code": text, "value": value,
                         "parents": []}
                new = ours.add(p, text, value, step)
                ref.update_states(child, rp)
                if new is not None:
                    name[child["id"]] = new.id
        ref.flush()
        ours.flush()
        assert [name[s["id"]] for s in ref.states] == [s.id for s in ours.states]
        assert [s["value"] for s in ref.states] == [s.value for s in ours.states]
        assert {name[k]: v for k, v in ref.n.items()} == ours.n and ref.T == ours.T
        assert {name[k]: v for k, v in ref.m.items()} == ours.m


@pytest.mark.parametrize("seed", range(4))
def test_puct_selection_matches_reference_one_group(seed):
    _drive(seed, steps=12, groups=1, group_size=4, max_size=1000)


@pytest.mark.parametrize("seed", range(4))
def test_puct_selection_matches_reference_with_lineage_and_truncation(seed):
    # several groups per step (lineage blocking), a small buffer (truncation), values with ties
    _drive(seed, steps=10, groups=3, group_size=3, max_size=8, n_initial=2, quantum=0.25)


def test_puct_score_by_hand():
    b = PUCTBuffer()
    root = b.states[0]
    a = b.add(root, "a", 0.5, 0)
    c = b.add(root, "c", 0.9, 0)
    b.failed(root)
    assert b.add(root, "a", 0.7, 0) is None         # duplicate text: visit counted, not archived
    b.flush()
    # values root 0, a 0.5, c 0.9; scale 0.4 (non-initial); P = (1, 2, 3)/6; T = 4; n(root) = 4
    scores = {b.states[i].text: s for s, _, i in b.scores()}
    assert scores["c"] == pytest.approx(0.9 + 0.4 * 3 / 6 * math.sqrt(5))
    assert scores["a"] == pytest.approx(0.5 + 0.4 * 2 / 6 * math.sqrt(5))
    assert scores[""] == pytest.approx(0.9 + 0.4 * 1 / 6 * math.sqrt(5) / 5)    # Q = m(root)
    assert [s.text for s in b.select(1)] == ["c"] and c.parents == [root.id] and a.parent_values == [0.0]


def test_buffer_round_trips():
    b = PUCTBuffer(max_size=5)
    rng = random.Random(1)
    for step in range(4):
        [p] = b.select(1)
        for _ in range(3):
            b.add(p, f"x{rng.random()}", rng.random(), step)
        b.failed(p)
        b.flush()
    c = PUCTBuffer.from_dict(b.to_dict())
    assert c.to_dict() == b.to_dict() and c.scores() == b.scores()
