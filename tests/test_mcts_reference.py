"""--strategy mcts against openr's vanila_mcts (openreasoner/openr@54ae004), written out below from
its code with file and line: reason/guided_search/tree.py ("T"), envs/base_env.py ("E"),
reason/reranking/vote_utils.py ("V"). Both sides are driven by the same scripted world (its
steps a fixed function of the text they continue, in the order they are asked for; its PRM
tests/search_script.step_scores); ttx must ask for the same expansions in the same order, walk
the same paths, keep the same visit counts and values and give the same answer."""

from __future__ import annotations

import math
from collections import Counter, defaultdict

import pytest

from tests.search_script import SEP, ScriptedPRM, step_scores, unit
from ttx.engines.base import Generation, SamplingParams, Trace
from ttx.scoring.answers import extract_answer
from ttx.tts.mcts import MCTS
from ttx.tts.search import SearchConfig
from ttx.tts.strategy import StrategyConfig


class World:
    """The j-th sample asked of a text is step f"s<depth>.<j // dup>" (dup > 1: repeats); it
    ends with EOS when unit(text + step) < eos_rate, else is cut off by the token cap (finish
    "length") when unit("cut" + text + step) < cut_rate, else stops at the blank line. Its
    mean token log-prob is -unit(text + step)."""

    name = model_name = "world"

    def __init__(self, eos_rate=0.0, cut_rate=0.0, dup=1, tokens=3):
        self.eos_rate, self.cut_rate, self.dup, self.tokens = eos_rate, cut_rate, dup, tokens
        self.asked: dict[str, int] = {}
        self.calls: list[list[str]] = []

    def sample(self, text):
        depth = text.count(SEP) + 1
        j = self.asked.get(text, 0)
        self.asked[text] = j + 1
        step = f"s{depth}.{j // self.dup}"
        u = unit(text + step)
        eos = u < self.eos_rate
        cut = not eos and unit("cut" + text + step) < self.cut_rate
        return step, eos, cut, -u

    def generate(self, prompts, n, params):
        counts = [n] * len(prompts) if isinstance(n, int) else list(n)
        per = list(params) if isinstance(params, (list, tuple)) else [params] * len(prompts)
        self.calls.append([p for p, k in zip(prompts, counts) for _ in range(k)])
        out = []
        for prompt, k, p in zip(prompts, counts, per):
            traces = []
            for _ in range(k):
                step, eos, cut, lp = self.sample(prompt)
                traces.append(Trace(text=step, completion_tokens=self.tokens,
                                    finish_reason="length" if cut else "stop",
                                    stop_string=None if eos or cut or SEP not in p.stop else SEP,
                                    logprobs=[lp] * self.tokens))
            out.append(Generation(traces=traces, prompt_tokens=len(prompt)))
        return out


# --- openr's vanila_mcts, written out ---------------------------------------------------------

class RNode:
    """T:22-203 (Node, LanguageNode)."""

    def __init__(self, parent=None, prior_p=1.0, initial_value=0.0, last_action=None):
        self.parent, self.children = parent, {}
        self.visit_count, self.value_sum = 0, 0.0
        self.prior_p, self.initial_value = prior_p, initial_value
        self.last_action, self.terminated = last_action, False

    @property
    def value(self):                                     # T:51-62
        return self.initial_value if self.visit_count == 0 else self.value_sum / self.visit_count

    def update_recursive(self, leaf_value):              # T:86-90, play_with_bot_mode (E:104)
        self.visit_count += 1
        self.value_sum += leaf_value
        if self.parent is not None:
            self.parent.update_recursive(leaf_value)


def openr_mcts(world, prefix, num_path, width, max_length, agg="last", pb_c_init=1.25,
               pb_c_base=19652):
    """T:330-409 with select_by_prior False and init_critic_value True (EV methods.py:137-199).
    Returns (trajectories [(text, value)], every node by its path text, the states asked)."""
    asked = []

    def update_legal_actions(state):                     # E:194-254
        asked.extend([state] * width)
        text_list, probs, term = [], [], {}
        for _ in range(width):
            step, eos, cut, lp = world.sample(state)
            text = step + ("" if eos or cut else SEP)    # include_stop_str_in_output
            terminated = not text.endswith(SEP)          # E:216
            processed = text if text.endswith(SEP) else text.strip() + SEP   # MATH post_process
            if len(processed) > 0 and processed not in [p for _, p in text_list] \
                    and not cut:                         # E:219-224: finish_reason "stop" only
                text_list.append((text, processed))
                probs.append(math.exp(lp))               # E:226, E:236
                term[text] = terminated
        if not probs:
            return None                                  # NoLegalActionException (E:231-234)
        total = sum(probs)
        return [(t, p / total) for (t, _), p in zip(text_list, probs)], term   # E:238-239

    def legal_with_retries(state):                       # E:141-151, E:162-177: three tries
        for _ in range(3):
            got = update_legal_actions(state)
            if got is not None:
                return got
        return None

    def expand(node, answer, legal):                     # T:649-757 (init_critic_value)
        actions, term = legal
        for action, prob in actions:
            rs = step_scores(answer + action)            # T:679-687: PRM of (q, answer + a)
            v = 0.0 if not rs else {"last": rs[-1], "min": min(rs)}[agg]   # T:712-716
            child = RNode(node, prob, v, action)
            child.terminated = term[action]              # T:741-742
            node.children[action] = child

    def ucb(parent, child):                              # T:759-778
        pb_c = math.log((parent.visit_count + pb_c_base + 1) / pb_c_base) + pb_c_init
        pb_c *= math.sqrt(parent.visit_count) / (child.visit_count + 1)
        return pb_c * child.prior_p + child.value

    def select_child(node):                              # T:609-637
        action, child, best = None, None, -9999999
        for a, c in node.children.items():
            s = ucb(node, c)
            if s > best:
                best, action, child = s, a, c
        return action, child

    root = RNode()
    legal = legal_with_retries(prefix)                   # reset (E:129-153), T:340-343
    if legal is None:
        return [], {}, asked                             # ResetException
    expand(root, "", legal)
    trajectories = []
    for _ in range(num_path):                            # T:351
        node, history, done = root, [], False
        while not done:                                  # T:355-385
            action, node = select_child(node)            # T:356-367 (both branches)
            history.append(action)                       # E:156
            answer = "".join(history)
            terminated = node.terminated or SEP not in action     # E:275-282
            truncated = len(history) >= max_length       # E:284
            done = terminated or truncated
            if not done and not node.children:           # E:161-177 then T:381-382
                legal = legal_with_retries(prefix + answer)
                if legal is None:
                    done = True                          # E:170-175
                else:
                    expand(node, answer, legal)
        leaf_value = node.value                          # T:386-393
        node.update_recursive(leaf_value)                # T:394
        trajectories.append(("".join(history), leaf_value))   # T:396-404: env.answer

    nodes = {}

    def collect(node, text):
        nodes[text] = node
        for a, c in node.children.items():
            collect(c, text + a)
    collect(root, "")
    return trajectories, nodes, asked


def openr_answer(texts, values, rule):
    """V:13-53 over the valid answers (EV evaluator.py:66-71)."""
    pairs = [(extract_answer(t), v) for t, v in zip(texts, values)]
    pairs = [(a, v) for a, v in pairs if a is not None]
    if not pairs:
        return None
    answers, vs = [a for a, _ in pairs], [v for _, v in pairs]
    if rule == "majority":                               # V:13-16
        counts = Counter(answers)
        return max(counts, key=counts.get)
    if rule == "max":                                    # V:34-43
        return answers[vs.index(max(vs))]
    totals = defaultdict(float)                          # V:19-26, V:46-53
    for a, v in zip(answers, vs):
        totals[a] += v
    return max(totals, key=totals.get)


def _cfg(n, **search):
    return StrategyConfig(strategy="mcts", n=n, invalid_votes="skip",
                          params=SamplingParams(max_new_tokens=64, temperature=1.0, seed=0),
                          search=SearchConfig(**search))


WORLDS = [
    # n, width, depth, world, agg, c_puct
    (8, 3, 4, dict(eos_rate=0.3), "last", 1.25),
    (12, 4, 6, dict(eos_rate=0.15, cut_rate=0.3, dup=2), "last", 1.25),
    (10, 2, 5, dict(eos_rate=0.2, cut_rate=0.5), "min", 1.25),
    (6, 3, 3, dict(eos_rate=0.25), "last", 0.0),
    (9, 5, 8, dict(eos_rate=0.1, dup=3), "last", 4.0),
    (10, 2, 6, dict(eos_rate=0.05, cut_rate=0.75), "last", 1.25),    # retries, paths cut short
]


@pytest.mark.parametrize("n,width,depth,world,agg,c_puct", WORLDS)
@pytest.mark.parametrize("rule", ["majority", "max", "vote"])
def test_mcts_walks_openr_vanila_mcts(n, width, depth, world, agg, c_puct, rule):
    prompts = ["A|", "B|"]
    cfg = _cfg(n, mcts_width=width, mcts_depth=depth, mcts_c_puct=c_puct, agg=agg,
               mcts_answer=rule)
    engine = World(**world)
    runner = MCTS(cfg)
    runner.scorer = ScriptedPRM()
    outs = runner.run(engine, prompts, cfg)
    for prompt, out in zip(prompts, outs):
        trajectories, nodes, asked = openr_mcts(World(**world), prompt, n, width, depth, agg,
                                                pb_c_init=c_puct)
        # the same expansions, in the same order (retries included)
        mine = [p for call in engine.calls for p in call if p.startswith(prompt)]
        assert mine == asked
        # the same paths (the selection sequence) and leaf values
        assert [(t["text"], t["value"]) for t in out.traces] == trajectories
        # the same tree: each node's visits and value
        tree = out.extra["mcts"]["nodes"]
        texts = {}
        for k, nd in enumerate(tree):
            texts[k] = "" if nd["parent"] is None else texts[nd["parent"]] + nd["step"]
        assert sorted(texts.values()) == sorted(nodes)
        for k, nd in enumerate(tree):
            ref = nodes[texts[k]]
            assert nd["visits"] == ref.visit_count, texts[k]
            assert nd["value"] == pytest.approx(ref.value, abs=1e-12), texts[k]
            assert nd["prior"] == pytest.approx(ref.prior_p, abs=1e-12)
            assert nd["terminal"] == ref.terminated
        # the same answer by openr's reranking rule
        want = openr_answer([t for t, _ in trajectories],
                            [t["score"] for t in out.traces], rule)
        assert out.pred == want
        assert MCTS.aggregate({"traces": out.traces, "mcts": out.extra["mcts"]},
                              [t["pred"] for t in out.traces], "skip") == want
        assert out.extra["mcts"]["paths"][-1]["nodes"][0] == 0


def test_mcts_accounts_every_generated_token():
    cfg = _cfg(5, mcts_width=3, mcts_depth=4)
    engine = World(eos_rate=0.3, cut_rate=0.2)
    runner = MCTS(cfg)
    runner.scorer = ScriptedPRM()
    [out] = runner.run(engine, ["A|"], cfg)
    asked = sum(len(c) for c in engine.calls)
    assert out.completion_tokens == 3 * asked                  # dropped steps included
    assert out.sequential_tokens == 3 * len(engine.calls)      # one step deep per call
    assert out.extra["rounds"] == len(engine.calls)
    assert all(t["completion_tokens"] == 3 * t["steps"] for t in out.traces)


def test_mcts_root_without_any_step_gives_no_paths():
    cfg = _cfg(4, mcts_width=2, mcts_depth=3)
    engine = World(cut_rate=1.0)                   # every step cut off: no legal action
    runner = MCTS(cfg)
    runner.scorer = ScriptedPRM()
    [out] = runner.run(engine, ["A|"], cfg)
    assert out.traces == [] and out.pred is None
    assert len(engine.calls) == 3                  # E:141-151: three tries
