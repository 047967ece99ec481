"""`ttx score` end to end through click's CliRunner on the real command group."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from ttx.cli import cli
from ttx.scoring.answers import answers_equal, extract_answer
from ttx.scoring.arise import arise_score
from ttx.scoring.metrics import pass_at_k

ROOT = Path(__file__).resolve().parents[1]


def _record(pid, gold, preds, *, level=None, n_tokens=100, pred=None, **extra):
    traces = [{"text": f"... so the answer is {p}.", "pred": p, "completion_tokens": n_tokens,
               "finish_reason": "stop", "score": None} for p in preds]
    rec = {"id": pid, "question": f"question {pid}?", "answer": gold, "strategy": "majority",
           "n": len(preds), "traces": traces, "pred": preds[0] if pred is None else pred,
           "completion_tokens": n_tokens * len(preds), "sequential_tokens": n_tokens,
           "prompt_tokens": 30, "wall_s": 0.25, "model": "tiny", "repeat": 0, **extra}
    if level is not None:
        rec["level"] = level
    return rec


def _write(path, records):
    path.write_text("".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return str(path)


def _run(args, input=None):
    result = CliRunner().invoke(cli, args, input=input)
    return result, result.stdout, result.stderr


RECORDS = [
    _record("a", "Janet sells 9 eggs.\n#### 18", ["18", "18.0", "7", "18"]),
    _record("b", "#### 1,000", ["999", "1000", "1,000", "5"], pred="1,000"),
    _record("c", "\\frac{1}{2}", ["0.5", "2", "2", "2"], pred="2"),
    _record("d", "#### 4", ["3", "3", "3", "3"], correct=True),  # a stale `correct` is ignored
]


def test_json_agrees_with_a_recomputation(tmp_path):
    path = _write(tmp_path / "run.jsonl", RECORDS)
    result, out, err = _run(["score", "-i", path, "--json"])
    assert result.exit_code == 0, err
    data = json.loads(out)
    run = data["runs"][0]
    s = run["summary"]
    golds = [extract_answer(r["answer"]) for r in RECORDS]
    correct = [answers_equal(r["pred"], g) for r, g in zip(RECORDS, golds)]
    assert correct == [True, True, False, False]
    assert s["n_records"] == 4
    assert s["accuracy"] == pytest.approx(sum(correct) / 4)
    for k in (1, 2, 4):
        want = sum(pass_at_k(4, sum(answers_equal(p["pred"], g) for p in r["traces"]), k)
                   for r, g in zip(RECORDS, golds)) / 4
        assert s[f"pass@{k}"] == pytest.approx(want)
    assert s["maj@4"] == pytest.approx(2 / 4)  # a: 18, b: 1000 (2 votes), c: 2, d: 3
    assert s["mean_completion_tokens"] == pytest.approx(400.0)
    assert s["accuracy_per_1k_tokens"] == pytest.approx(0.5 / 400 * 1000)
    assert run["levels"][0]["level"] == 1 and run["level_key"] == "n"
    assert run["arise"]["arise"] == 0.0 and run["arise"]["n_levels"] == 1


def test_table_by_default(tmp_path):
    path = _write(tmp_path / "run.jsonl", RECORDS)
    result, out, err = _run(["score", "-i", path, "--k", "3"])
    assert result.exit_code == 0, err
    header = next(line for line in out.splitlines() if line.startswith("level"))
    for col in ("accuracy", "pass@1", "pass@3", "maj@4", "compl_tok", "acc/1k_tok"):
        assert col in header
    assert "ARISE" in out


def test_per_record_writes_correct_and_a_manifest(tmp_path):
    path = _write(tmp_path / "run.jsonl", RECORDS)
    out_path = tmp_path / "scored.jsonl"
    result, _, err = _run(["score", "-i", path, "--per-record", str(out_path)])
    assert result.exit_code == 0, err
    rows = [json.loads(line) for line in out_path.read_text().splitlines()]
    assert [r["correct"] for r in rows] == [True, True, False, False]
    assert rows[0]["traces"] == RECORDS[0]["traces"]  # the input record is kept whole
    manifest = json.loads((tmp_path / "scored.jsonl.manifest.json").read_text())
    assert manifest["stage"] == "score" and manifest["inputs"][0]["sha256"]
    assert manifest["summary"]["run"]["accuracy"] == 0.5


def test_broken_json_line_names_file_and_line(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(RECORDS[0]) + "\n" + json.dumps(RECORDS[1]) + "\n{not json\n")
    result, _, err = _run(["score", "-i", str(path)])
    assert result.exit_code == 2
    assert f"{path}:3" in err and "JSON" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("drop,field", [("answer", "answer"), ("pred", "pred")])
def test_record_without_answer_or_pred(tmp_path, drop, field):
    broken = dict(RECORDS[1])
    del broken[drop]
    path = _write(tmp_path / "run.jsonl", [RECORDS[0], broken])
    result, _, err = _run(["score", "-i", path])
    assert result.exit_code == 2
    assert f"{path}:2: field '{field}'" in err


def test_missing_file_and_no_input(tmp_path):
    result, _, err = _run(["score", "-i", str(tmp_path / "nope.jsonl")])
    assert result.exit_code == 2 and "nope.jsonl" in err and "no such file" in err
    result, _, err = _run(["score"])
    assert result.exit_code == 2 and "nothing to score" in err


def test_answer_field_option(tmp_path):
    recs = [{**r, "gold": r["answer"]} for r in RECORDS]
    for r in recs:
        del r["answer"]
    path = _write(tmp_path / "run.jsonl", recs)
    result, out, err = _run(["score", "-i", path, "--answer-field", "gold", "--json"])
    assert result.exit_code == 0, err
    assert json.loads(out)["runs"][0]["summary"]["accuracy"] == 0.5


def test_stdin_input():
    text = "".join(json.dumps(r) + "\n" for r in RECORDS)
    result, out, err = _run(["score", "-i", "-", "--json"], input=text)
    assert result.exit_code == 0, err
    assert json.loads(out)["runs"][0]["summary"]["accuracy"] == 0.5


def _levels(tmp_path, name, accs_tokens):
    """One file per level: problem p's correctness and tokens per level."""
    files = []
    for j, level in enumerate(accs_tokens, start=1):
        recs = [_record(pid, "#### 5", ["5" if ok else "6"] * (2 ** (j - 1)),
                        n_tokens=tok // 2 ** (j - 1)) for pid, (ok, tok) in level.items()]
        files.append(_write(tmp_path / f"{name}_L{j}.jsonl", recs))
    return files


def test_multiple_inputs_are_levels(tmp_path):
    # p: wrong (100 tok) -> right (200) -> right (400); q: right (100) -> wrong (300) -> right (400)
    files = _levels(tmp_path, "run", [{"p": (0, 100), "q": (1, 100)},
                                      {"p": (1, 200), "q": (0, 300)},
                                      {"p": (1, 400), "q": (1, 400)}])
    args = [arg for f in files for arg in ("-i", f)]
    result, out, err = _run(["score", *args, "--json", "--arise-tokens", "completion"])
    assert result.exit_code == 0, err
    run = json.loads(out)["runs"][0]
    assert [row["level"] for row in run["levels"]] == [1, 2, 3]
    assert [row["value"] for row in run["levels"]] == [1, 2, 4]
    want = (arise_score([0, 1, 1], [100, 200, 400]) + arise_score([1, 0, 1], [100, 300, 400])) / 2
    # by hand: p = 1 (100/200) = 0.5; q = -1 (300/100) + 1 (300/400) = -2.25
    assert want == pytest.approx((0.5 - 2.25) / 2)
    assert run["arise"]["arise"] == pytest.approx(want, abs=1e-9)
    assert run["arise"]["per_problem"] == pytest.approx({"p": 0.5, "q": -2.25})
    assert run["arise"]["n_severe"] == 1 and run["arise"]["severe_degradations"][0]["id"] == "q"
    assert run["ttspm"] is not None  # the level axis is n
    # the default is ARISE's reference: prompt (30 per record) + completion tokens
    _, out, _ = _run(["score", *args, "--json"])
    run = json.loads(out)["runs"][0]
    want = (arise_score([0, 1, 1], [130, 230, 430]) + arise_score([1, 0, 1], [130, 330, 430])) / 2
    assert run["arise"]["arise"] == pytest.approx(want, abs=1e-9)
    assert json.loads(out)["definitions"]["arise_tokens"] == "total"


def test_level_field_in_one_file(tmp_path):
    recs = [_record("p", "#### 5", ["6"], level=1, n_tokens=100),
            _record("p", "#### 5", ["5", "5"], level=2, n_tokens=100)]
    path = _write(tmp_path / "run.jsonl", recs)
    _, out, _ = _run(["score", "-i", path, "--json", "--arise-tokens", "completion"])
    assert json.loads(out)["runs"][0]["arise"]["arise"] == pytest.approx(1 * 100 / 200)


def test_compare_ranks_runs_and_plot(tmp_path):
    good = _levels(tmp_path, "good", [{"p": (0, 100), "q": (0, 100)},
                                      {"p": (1, 200), "q": (0, 200)},
                                      {"p": (1, 400), "q": (1, 400)}])
    bad = _levels(tmp_path, "bad", [{"p": (1, 100), "q": (1, 100)},
                                    {"p": (0, 400), "q": (1, 200)},
                                    {"p": (1, 800), "q": (0, 400)}])
    png = tmp_path / "cmp.png"
    result, out, err = _run(["score", "--compare", f"bad={','.join(bad)}",
                             "--compare", f"good={','.join(good)}", "--plot", str(png)])
    assert result.exit_code == 0, err
    lines = out.splitlines()
    assert lines[0].startswith("runs ranked by ARISE")
    ranked = [line.split()[1] for line in lines[3:5]]
    assert ranked == ["good", "bad"]
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
    assert (tmp_path / "cmp.png.manifest.json").is_file()
    result, out, _ = _run(["score", "--compare", f"bad={','.join(bad)}",
                           "--compare", f"good={','.join(good)}", "--json"])
    runs = json.loads(out)["runs"]
    assert [(r["rank"], r["name"]) for r in runs] == [(1, "good"), (2, "bad")]
    assert runs[0]["arise"]["arise"] > runs[1]["arise"]["arise"]


def test_bad_compare_spec(tmp_path):
    result, _, err = _run(["score", "--compare", "nofile"])
    assert result.exit_code == 2 and "NAME=FILE" in err


def test_recipe_loads_and_command_line_wins(tmp_path):
    path = _write(tmp_path / "run.jsonl", RECORDS)
    png = tmp_path / "r.png"
    result, out, err = _run(["score", "--config", str(ROOT / "recipes" / "score.yaml"),
                             "-i", path, "--plot", str(png), "--json"])
    assert result.exit_code == 0, err
    s = json.loads(out)["runs"][0]["summary"]
    assert "pass@3" in s  # k: [3] from the recipe
    assert png.is_file()
    first_line = (ROOT / "recipes" / "score.yaml").read_text().splitlines()[:3]
    assert any("ttx score --config recipes/score.yaml" in line for line in first_line)


def test_help_is_light():
    code = ("import sys\nfrom click.testing import CliRunner\nfrom ttx.cli import cli\n"
            "r = CliRunner().invoke(cli, ['score', '--help'])\nassert r.exit_code == 0, r.output\n"
            "heavy = [m for m in ('torch', 'numpy', 'matplotlib', 'math_verify', 'sympy')"
            " if m in sys.modules]\nassert not heavy, heavy\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, timeout=60)


def test_intervals_and_paired_difference(tmp_path):
    good = [_record(f"p{i}", "#### 5", ["5", "5"] if i % 4 else ["6", "6"]) for i in range(40)]
    bad = [_record(f"p{i}", "#### 5", ["5", "5"] if i % 2 else ["6", "6"]) for i in range(40)]
    a, b = _write(tmp_path / "a.jsonl", bad), _write(tmp_path / "b.jsonl", good)
    result, out, err = _run(["score", "--compare", f"bad={a}", "--compare", f"good={b}", "--json"])
    assert result.exit_code == 0, err
    data = json.loads(out)
    runs = {r["name"]: r for r in data["runs"]}
    s = runs["good"]["summary"]
    lo, hi = s["accuracy_ci"]
    assert s["accuracy"] == pytest.approx(0.75)
    assert lo < 0.75 < hi and hi - lo < 0.4
    assert s["maj@2_ci"][0] <= s["maj@2"] <= s["maj@2_ci"][1]
    diff = runs["good"]["vs_first"]["levels"]["1"]["accuracy"]
    assert runs["good"]["vs_first"]["run"] == "bad"
    assert diff["difference"] == pytest.approx(0.25) and diff["n_problems"] == 40
    assert diff["ci"][0] <= 0.25 <= diff["ci"][1]
    assert "paired over shared problems" in _run(["score", "--compare", f"bad={a}", "--compare",
                                                  f"good={b}"])[1]
    again = json.loads(_run(["score", "--compare", f"bad={a}", "--compare", f"good={b}",
                             "--json"])[1])
    assert again["runs"] == data["runs"]                                # seeded
    _, out, _ = _run(["score", "-i", b, "--json", "--ci-samples", "0"])
    assert json.loads(out)["runs"][0]["summary"]["accuracy_ci"] is None


def test_invalid_votes_definitions(tmp_path):
    recs = [_record("a", "#### 3", [None, None, "3"])]
    path = _write(tmp_path / "r.jsonl", recs)
    _, out, _ = _run(["score", "-i", path, "--json", "--k", "3"])
    data = json.loads(out)
    assert data["runs"][0]["summary"]["maj@3"] == 0.0                   # "[invalid]" wins
    assert data["definitions"]["invalid_votes"] == "lm-eval"
    _, out, _ = _run(["score", "-i", path, "--json", "--invalid-votes", "skip", "--k", "3"])
    assert json.loads(out)["runs"][0]["summary"]["maj@3"] == 1.0


def test_regrade_reextracts_and_revotes(tmp_path):
    old = [{"text": "so $x = \\frac{1}{3}$", "pred": "3"}, {"text": "It is 1/3.", "pred": "3"},
           {"text": "maybe 2", "pred": "2"}]
    rec = {**_record("a", "\\frac{1}{3}", ["3", "3", "2"], pred="3"), "traces": [
        {**t, "completion_tokens": 10, "finish_reason": "stop", "score": None} for t in old]}
    path = _write(tmp_path / "r.jsonl", [rec, _record("b", "#### 4", ["4"])])
    _, out, _ = _run(["score", "-i", path, "--json"])
    assert json.loads(out)["runs"][0]["summary"]["accuracy"] == 0.5    # the stored answers
    scored = tmp_path / "s.jsonl"
    result, out, err = _run(["score", "-i", path, "--json", "--regrade", "--per-record",
                             str(scored)])
    assert result.exit_code == 0, err
    assert json.loads(out)["runs"][0]["summary"]["accuracy"] == 1.0
    rows = [json.loads(line) for line in scored.read_text().splitlines()]
    assert rows[0]["old_pred"] == "3" and rows[0]["old_correct"] is False and rows[0]["correct"]
    assert "old_pred" not in rows[1]                                    # unchanged: not shown
    bare = {k: v for k, v in _record("c", "#### 1", ["1"]).items() if k != "traces"}
    path = _write(tmp_path / "bare.jsonl", [bare])
    result, _, err = _run(["score", "-i", path, "--regrade"])
    assert result.exit_code == 2 and f"{path}:1: field 'traces'" in err


def test_cost_flops_and_kinetics_by_hand(tmp_path, tiny_model_dir):
    from ttx.models import model_shape

    shape = model_shape(tiny_model_dir)
    rec = _record("a", "#### 5", ["5", "6"], n_tokens=10)              # 2 traces x 10 tokens
    path = _write(tmp_path / "r.jsonl", [rec])
    p, layers = shape["params"], shape["layers"]
    nq, nkv, d = shape["heads"], shape["kv_heads"], shape["head_dim"]
    D, r, L_in = 2 * nkv * d * layers, nq / nkv, 30                    # prompt_tokens 30
    flops = 2 * p * L_in + r * D * L_in ** 2 / 2 + 2 * (2 * p * 10 + 2 * r * D * (L_in * 10 + 45))
    comp = 2 * (2 * p * 10 + 2 * r * L_in * D * 10 + r * D * 100)
    mem = 2 * L_in * D * 10 + 2 * D * 100
    for kind, want in (("flops", flops), ("kinetics", comp + 562.5 * mem)):
        result, out, err = _run(["score", "-i", path, "--json", "--cost", kind, "--cost-model",
                                 str(tiny_model_dir)])
        assert result.exit_code == 0, err
        run = json.loads(out)["runs"][0]
        assert run["summary"]["mean_cost"] == pytest.approx(want * 1e-9, rel=1e-9)
        assert run["cost"]["kind"] == kind
    # the Kinetics code's dense_cost (Infini-AI-Lab/Kinetics cost_model/utils.py:45-56) for
    # 2 trials of 10 tokens: compute and memory (x E_flops), in units of 1e12
    kin_compute = (2 * p * 10 + 2 * (2 * L_in + 10) * 10 * nq * d * layers) * 2 * 1e-12
    kin_memory = 2 * (2 * L_in + 10 * 2) * 10 * nkv * d * layers * 562.5 * 1e-12
    assert (comp + 562.5 * mem) * 1e-12 == pytest.approx(kin_compute + kin_memory, rel=1e-9)
    result, _, err = _run(["score", "-i", path, "--cost", "flops"])    # model "tiny": unknown
    assert result.exit_code == 2 and "--cost-model" in err


def test_gold_without_answer_is_set_aside_or_refused(tmp_path):
    recs = [RECORDS[0], {**RECORDS[1], "answer": "no answer here at all"}]
    path = _write(tmp_path / "r.jsonl", recs)
    result, out, err = _run(["score", "-i", path, "--json"])
    assert result.exit_code == 0
    data = json.loads(out)["runs"][0]
    assert data["summary"]["n_records"] == 1
    assert data["set_aside"]["no_gold_answer"] == [{"path": path, "line": 2, "id": "b"}]
    assert f"{path}:2 (id b)" in err and len(err.strip().splitlines()) == 1
    result, _, err = _run(["score", "-i", path, "--strict-gold"])
    assert result.exit_code == 2 and f"{path}:2: field 'answer'" in err


@pytest.mark.parametrize("mutate,message", [
    (lambda r: r.update(completion_tokens=float("nan")), "finite"),
    (lambda r: r.update(prompt_tokens=-3), ">= 0"),
])
def test_bad_token_counts_are_refused(tmp_path, mutate, message):
    rec = dict(RECORDS[0])
    mutate(rec)
    path = _write(tmp_path / "r.jsonl", [rec])
    result, _, err = _run(["score", "-i", path])
    assert result.exit_code == 2 and message in err and "Traceback" not in err


def test_duplicates_and_repeated_files_are_refused(tmp_path):
    path = _write(tmp_path / "r.jsonl", [RECORDS[0], RECORDS[0]])
    result, _, err = _run(["score", "-i", path])
    assert result.exit_code == 2 and "count twice" in err and f"{path}:2" in err
    one = _write(tmp_path / "one.jsonl", [RECORDS[0]])
    result, _, err = _run(["score", "--compare", f"a={one}", "--compare", f"b={one}"])
    assert result.exit_code == 2 and "given twice" in err
