"""--strategy mcts on a tiny model end to end (levels, resume, the record's tree) and its bad
input; the algorithm is pinned to openr's vanila_mcts in test_mcts_reference.py."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli
from ttx.data.arith import generate
from ttx.tts.mcts import MCTS


def _problems(tmp_path, n=2):
    path = tmp_path / "problems.jsonl"
    path.write_text("".join(json.dumps(p) + "\n" for p in generate(n, 3)))
    return path


def _records(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


ARGS = ("--strategy", "mcts", "--levels", "n=1,3", "--mcts-width", "3", "--mcts-depth", "3",
        "--max-new-tokens", "16", "--temperature", "1.0", "--batch-rows", "6", "--no-progress")


def test_mcts_levels_and_resume(tmp_path, eos_model_dir, one_torch_thread):
    problems = _problems(tmp_path)
    whole = tmp_path / "whole.jsonl"
    result = run_cli(["tts-run", "--model", eos_model_dir, "-i", problems, "-o", whole, *ARGS])
    assert result.exit_code == 0, result.output
    records = _records(whole)
    assert len(records) == 2 * 2
    for r in records:
        n = {1: 1, 2: 3}[r["level"]]
        info = r["mcts"]
        assert r["n"] == n and len(r["traces"]) == n == len(info["paths"])
        nodes = info["nodes"]
        assert nodes[0]["parent"] is None and nodes[0]["visits"] == n
        for k, nd in enumerate(nodes[1:], start=1):       # visits: the sum over the children
            kids = [c for c in nodes if c["parent"] == k]
            if kids and not nd["terminal"]:
                assert nd["visits"] >= sum(c["visits"] for c in kids)
            assert 0 <= nd["parent"] < k and isinstance(nd["step"], str)   # "": EOS at once
        for t, p in zip(r["traces"], info["paths"]):
            path = p["nodes"]
            assert path[0] == 0 and all(nodes[b]["parent"] == a for a, b in zip(path, path[1:]))
            assert t["text"] == "".join(nodes[k]["step"] for k in path[1:])
            assert t["ended"] in ("final", "depth", "no-step")
        assert r["completion_tokens"] >= max(t["completion_tokens"] for t in r["traces"])
        assert r["sequential_tokens"] <= r["completion_tokens"] and r["rounds"] >= 1
        assert r["pred"] == MCTS.aggregate(r, [t["pred"] for t in r["traces"]], "lm-eval")
    # an interruption after 1 record, with a torn last line, resumes to the same records
    part = tmp_path / "part.jsonl"
    lines = whole.read_text().splitlines(keepends=True)
    part.write_text(lines[0] + lines[1][:50])
    (tmp_path / "part.jsonl.manifest.json").write_text(
        (tmp_path / "whole.jsonl.manifest.json").read_text())
    result = run_cli(["tts-run", "--model", eos_model_dir, "-i", problems, "-o", part, *ARGS,
                      "--resume"])
    assert result.exit_code == 0, result.output
    strip = lambda rs: [{k: v for k, v in r.items() if k != "wall_s"} for r in rs]  # noqa: E731
    assert strip(_records(part)) == strip(_records(whole))
    regraded = run_cli(["score", "-i", whole, "--regrade", "--json"])
    assert regraded.exit_code == 0, regraded.output


@pytest.mark.parametrize("args, message", [
    (["--strategy", "beam", "--mcts-width", "3"], "--mcts-width does not apply to --strategy "
                                                  "beam (it applies to mcts)"),
    (["--strategy", "mcts", "--beam-width", "2"], "--beam-width does not apply to --strategy mcts"),
    (["--strategy", "mcts", "--max-steps", "3"], "--max-steps does not apply to --strategy mcts"),
    (["--strategy", "mcts", "--mcts-c-base", "0"], "--mcts-c-base"),
    (["--strategy", "mcts", "--mcts-c-puct", "-1"], "--mcts-c-puct"),
    (["--strategy", "mcts", "--mcts-width", "0"], "--mcts-width"),
    (["--strategy", "mcts", "--mcts-answer", "best"], "--mcts-answer"),
    (["--strategy", "mcts", "--prm-format", "tag"], "needs --reward-model"),
    (["--strategy", "mcts", "--engine", "openai", "--scorer", "self-certainty"],
     "self-certainty needs the full token distribution"),
])
def test_mcts_bad_input_fails_before_any_output(tmp_path, args, message):
    out = tmp_path / "o.jsonl"
    out.write_text('{"keep": 1}\n')
    result = run_cli(["tts-run", "--model", tmp_path / "no-model-needed", "-i",
                      _problems(tmp_path, 1), "-o", out, "--no-progress", *args])
    assert result.exit_code == 2 and message in result.output, result.output
    assert out.read_text() == '{"keep": 1}\n'


# ---------- the tree in `ttx report` ----------

def _scripted_record():
    from tests.search_script import ScriptedPRM
    from tests.test_mcts_reference import World, _cfg

    cfg = _cfg(6, mcts_width=3, mcts_depth=4)
    runner = MCTS(cfg)
    runner.scorer = ScriptedPRM()
    [out] = runner.run(World(eos_rate=0.3), ["A|"], cfg)
    return {"id": "q", "answer": "1", "strategy": "mcts", "n": 6, "traces": out.traces,
            "pred": out.pred, "completion_tokens": out.completion_tokens, **out.extra}


def test_kept_tree_draws_every_node_with_its_visits_and_value():
    from ttx.report.problems import STATUS, record_view
    from ttx.report.tree import kept_tree

    rec = _scripted_record()
    nodes = rec["mcts"]["nodes"]
    tree = kept_tree(nodes, rec["traces"])
    assert tree["consistent"] and len(tree["nodes"]) == len(nodes)
    for i, (n, kept) in enumerate(zip(tree["nodes"], nodes)):
        assert n["parent"] == kept["parent"] and n["visits"] == kept["visits"]
        assert n["score"] == kept["value0"] and n["path"] == kept["value"]
        depth, p = 0, kept["parent"]
        while p is not None:
            depth, p = depth + 1, nodes[p]["parent"]
        assert n["depth"] == depth
        has_kids = any(k["parent"] == i for k in nodes)
        ended = any(t["node"] == i for t in rec["traces"])
        assert n["status"] == ("root" if i == 0 else "expanded" if has_kids
                               else "complete" if kept["terminal"] or ended else "pruned")
    # every path's leaf carries its trace: the first path that ended there
    for t in rec["traces"]:
        first = next(j for j, u in enumerate(rec["traces"]) if u["node"] == t["node"])
        assert tree["nodes"][t["node"]]["trace"] == first
    view = record_view(rec, True, "r", 1, answer_field="answer", invalid="lm-eval",
                       level_key=None)
    [search] = view["search"]
    assert search["kind"] == "mcts" and search["iterations"] == []
    assert "nodes" not in search["params"] and search["params"]["width"] == 3
    assert [row[6] for row in search["tree"]] == [n["visits"] for n in nodes]
    assert [row[4] for row in search["tree"]] == [STATUS[n["status"]] for n in tree["nodes"]]
    assert "mcts" not in view["x"]


@pytest.mark.parametrize("nodes, words", [
    ([{"parent": None, "visits": 1}, {"parent": 1, "visits": 0}], "node 1"),
    ([{"parent": 0, "visits": 1}], "node 0"),
    ([{"parent": None, "visits": -1}], "node 0"),
    ([{"parent": None, "visits": 1}, "x"], "node 1"),
])
def test_kept_tree_refuses_a_tree_it_cannot_draw(nodes, words):
    from ttx.report.problems import record_view
    from ttx.report.tree import kept_tree

    tree = kept_tree(nodes, [])
    assert not tree["consistent"] and tree["nodes"] == [] and words in tree["note"]
    rec = {"id": "q", "answer": "1", "strategy": "mcts", "traces": [], "pred": None,
           "mcts": {"nodes": nodes}}
    view = record_view(rec, False, "r", 1, answer_field="answer", invalid="lm-eval",
                       level_key=None)
    assert "not drawn" in view["search"][0]["warn"] and "tree" not in view["search"][0]


def test_mcts_values_nodes_with_a_process_reward_model(tmp_path, eos_model_dir, one_torch_thread):
    """Each node's value when made is the PRM's last step score of the path through it
    (openr tree.py:679-714, prm-last), read back here from the same model."""
    from ttx.reward_inputs import steps_of
    from ttx.tts.reward import RewardModel
    from ttx.tts.search import SearchConfig

    problems = _problems(tmp_path, 1)
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", eos_model_dir, "-i", problems, "-o", out,
                      "--strategy", "mcts", "--n", "3", "--mcts-width", "3", "--mcts-depth", "2",
                      "--max-new-tokens", "16", "--temperature", "1.0", "--mcts-answer", "max",
                      "--reward-model", eos_model_dir, "--prm-good-token", "+", "--no-progress"])
    assert result.exit_code == 0, result.output
    [r] = _records(out)
    nodes = r["mcts"]["nodes"]
    texts = [""]
    for nd in nodes[1:]:
        texts.append(texts[nd["parent"]] + nd["step"])
    rm = RewardModel(str(eos_model_dir), SearchConfig(reward_model=str(eos_model_dir),
                                                      prm_good_token="+"))
    scores = rm.score_paths([(r["question"], steps_of(t, "model-card")) for t in texts[1:]])
    for nd, s in zip(nodes[1:], scores):
        assert nd["value0"] == pytest.approx(s[-1] if s else 0.0, abs=1e-5)
    for t in r["traces"]:
        assert t["score"] == pytest.approx(nodes[t["node"]]["value0"], abs=1e-12)
    answered = [t for t in r["traces"] if t["pred"] is not None]         # V:34-43 over valid ones
    assert r["pred"] == (max(answered, key=lambda t: t["score"])["pred"] if answered else None)
