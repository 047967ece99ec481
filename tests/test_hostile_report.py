"""Hostile input to `ttx report`, `ttx score` and the shared JSONL reader (issue 33): each case
fails with one line naming file, line and field (exit 2) and loses nothing, or the page copes."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from tests.conftest import run_cli


def _record(pid="a", **extra) -> dict:
    traces = [{"text": f"so the answer is {p}", "pred": p, "completion_tokens": 5,
               "finish_reason": "stop", "score": None} for p in ("7", "5")]
    return {"id": pid, "question": "What is 3 + 4?", "answer": "#### 7", "strategy": "majority",
            "n": 2, "traces": traces, "pred": "7", "completion_tokens": 10,
            "sequential_tokens": 5, "prompt_tokens": 3, "wall_s": 0.1, "model": "tiny", **extra}


def _write(path, records=(), raw: str = ""):
    path.write_text(raw + "".join(json.dumps(r) + "\n" for r in records), encoding="utf-8")
    return path


def _one_line(result) -> str:
    lines = [line for line in result.output.splitlines() if line.startswith("ttx: error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


# ---------- the shared reader: what valid JSON can hold that no stage can use ----------

@pytest.mark.parametrize("line,field,words", [
    ('{"id": "a\\ud800", "answer": "7", "pred": "7"}', "id", "lone surrogate (\\ud800)"),
    ('{"id": "a", "answer": "7", "pred": "7", "traces": [{"text": "ok"}, {"text": "x\\udfff"}]}',
     "traces[1].text", "lone surrogate"),
    ('{"id": "a", "answer": "7", "pred": "7", "x": {"\\udc80": 1}}', "x.\\udc80", "in the key"),
    ('{"id": "a", "answer": "7", "pred": "7", "completion_tokens": ' + "9" * 400 + "}",
     "completion_tokens", "400 digits"),
    ('{"id": "a", "answer": "7", "pred": "7", "traces": [{"score": -2' + "0" * 308 + "}]}",
     "traces[0].score", "309 digits"),
])
@pytest.mark.parametrize("command", [["score"], ["score", "--per-record", "{out}"],
                                     ["report", "-o", "{out}"]])
def test_unusable_values_are_refused_at_read_time(tmp_path, line, field, words, command):
    bad = _write(tmp_path / "bad.jsonl", [_record("z")], raw=line + "\n")
    out = tmp_path / "out"
    result = run_cli([c.replace("{out}", str(out)) for c in command] + ["-i", bad])
    message = _one_line(result)
    assert f"bad.jsonl:1: field '{field}'" in message and words in message, message
    assert not out.exists()


def test_a_valid_surrogate_pair_and_a_long_number_that_fits_are_kept(tmp_path):
    path = _write(tmp_path / "ok.jsonl", raw='{"id": "a \\ud83d\\ude00", "answer": "7", '
                                             '"pred": "7", "x": 1' + "0" * 308 + "}\n")
    result = run_cli(["score", "-i", path, "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("raw,words", [
    ('{"a": ' + "1" * 5000 + "}", "4,300 digits"),
    ('{"a": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply"),
])
def test_json_python_cannot_hold_is_one_line(tmp_path, raw, words):
    path = _write(tmp_path / "r.jsonl", raw=raw + "\n")
    assert words in _one_line(run_cli(["score", "-i", path]))


def test_tts_run_refuses_a_surrogate_before_any_model_loads(tmp_path):
    path = _write(tmp_path / "p.jsonl", raw='{"id": "a", "question": "What is \\ud800?"}\n')
    out = tmp_path / "o.jsonl"
    result = run_cli(["tts-run", "--model", tmp_path / "no-model", "-i", path, "-o", out])
    assert "p.jsonl:1: field 'question': a lone surrogate" in _one_line(result)
    assert not out.exists()


# ---------- score: what would silently skew a score ----------

@pytest.mark.parametrize("change,field,words", [
    ({"pred": ["7"]}, "pred", "got list"),
    ({"pred": {"a": 7}}, "pred", "got dict"),
    ({"traces": ["7", "7"]}, "traces[0]", "expected a trace"),
    ({"traces": [{"text": "so 7", "pred": ["7"]}]}, "traces[0].pred", "got list"),
    ({"traces": [{"text": 7}]}, "traces[0].text", "got int"),
    ({"traces": [{"text": "x", "completion_tokens": "5"}]}, "traces[0].completion_tokens",
     "expected a number"),
    ({"traces": [{"text": "x", "completion_tokens": -1}]}, "traces[0].completion_tokens", ">= 0"),
    ({"traces": [{"text": "x", "score": "high"}]}, "traces[0].score", "expected a number"),
])
def test_score_refuses_mistyped_answers_and_traces(tmp_path, change, field, words):
    path = _write(tmp_path / "r.jsonl", [_record("a"), _record("b", **change)])
    message = _one_line(run_cli(["score", "-i", path]))
    assert f"r.jsonl:2: field '{field}'" in message and words in message, message


def test_a_number_as_pred_is_still_an_answer(tmp_path):
    path = _write(tmp_path / "r.jsonl", [_record("a", pred=7, answer=7)])
    result = run_cli(["score", "-i", path, "--json"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["runs"][0]["summary"]["accuracy"] == 1.0


# ---------- an output that is an input, an input's manifest or another output ----------

def _run_with_manifest(tmp_path):
    run = _write(tmp_path / "runs.jsonl", [_record("a"), _record("b", pred="5")])
    manifest = tmp_path / "runs.jsonl.manifest.json"
    manifest.write_text(json.dumps({"stage": "tts-run", "status": "finished",
                                    "fingerprint": {"strategy": "majority"}}))
    return run, manifest


@pytest.mark.parametrize("args,words", [
    (["report", "-i", "{run}", "-o", "{run}"], "also an input"),
    (["report", "--compare", "x={run}", "-o", "{run}"], "also an input"),
    (["report", "-i", "{run}", "-o", "{link}"], "also an input"),
    (["report", "-i", "{run}", "-o", "{manifest}"], "manifest of an input"),
    (["report", "-i", "{run}", "--memory", "{bank}", "-o", "{bank}"], "also an input"),
    (["score", "-i", "{run}", "--plot", "{run}"], "also an input"),
    (["score", "-i", "{run}", "--per-record", "{run}"], "also an input"),
    (["score", "-i", "{run}", "--per-record", "{hard}"], "also an input"),
    (["score", "-i", "{run}", "--per-record", "{manifest}"], "manifest of an input"),
    (["score", "-i", "{run}", "--per-record", "{dir}/x", "--plot", "{dir}/x"], "over each other"),
    (["score", "-i", "{run}", "--per-record", "{dir}/x", "--plot", "{dir}/x.manifest.json"],
     "over each other"),
    (["score", "-i", "{manifest_input}", "--plot", "{dir}/m.png"], "would replace"),
])
def test_an_output_over_an_input_is_refused_and_nothing_changes(tmp_path, args, words):
    run, manifest = _run_with_manifest(tmp_path)
    bank = tmp_path / "bank.jsonl"
    bank.write_text(json.dumps({"id": "m1", "text": "a tip"}) + "\n")
    (tmp_path / "link.jsonl").symlink_to(run)
    (tmp_path / "hard.jsonl").hardlink_to(run)
    # an input whose name is the manifest a --plot m.png would write beside it
    shown = _write(tmp_path / "m.png.manifest.json", [_record("c")])
    names = {"run": run, "manifest": manifest, "bank": bank, "link": tmp_path / "link.jsonl",
             "hard": tmp_path / "hard.jsonl", "dir": tmp_path, "manifest_input": shown}
    before = {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    result = run_cli([a.format(**{k: str(v) for k, v in names.items()}) for a in args])
    assert words in _one_line(result)
    assert {p: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_report_output_over_the_bank_a_manifest_names_is_refused(tmp_path):
    run, manifest = _run_with_manifest(tmp_path)
    bank = tmp_path / "bank.jsonl"
    bank.write_text(json.dumps({"id": "m1", "text": "a tip"}) + "\n")
    manifest.write_text(json.dumps({"stage": "tts-run", "status": "finished",
                                    "options": {"run": {"memory": str(bank)}}}))
    before = bank.read_bytes()
    assert "also an input" in _one_line(run_cli(["report", "-i", run, "-o", bank]))
    assert bank.read_bytes() == before


# ---------- a killed or unfinished run is not shown as complete ----------

def test_an_unfinished_run_is_said_in_score_and_in_the_page(tmp_path):
    run, manifest = _run_with_manifest(tmp_path)
    done = run_cli(["score", "-i", run])
    assert done.exit_code == 0 and "UNFINISHED" not in done.output
    assert "is unfinished" not in done.output
    manifest.write_text(json.dumps({"stage": "tts-run", "status": "running"}))   # kill -9 leaves this
    result = run_cli(["score", "-i", run])
    assert result.exit_code == 0, result.output
    warnings = [x for x in result.stderr.splitlines() if "is unfinished" in x]
    assert len(warnings) == 1 and "runs.jsonl" in warnings[0] and "running" in warnings[0]
    assert result.stdout.splitlines()[1].startswith("UNFINISHED: the manifest of")
    data = json.loads(run_cli(["score", "-i", run, "--json"]).stdout)
    assert data["runs"][0]["unfinished"] == [str(run)]
    ranked = run_cli(["score", "--compare", f"a={run}", "--compare",
                      f"b={_write(tmp_path / 'b.jsonl', [_record('a')])}"]).stdout
    assert "a (UNFINISHED)" in ranked and "b (UNFINISHED)" not in ranked
    page = tmp_path / "r.html"
    assert run_cli(["report", "-i", run, "-o", page]).exit_code == 0
    html = page.read_text(encoding="utf-8")
    banner = html[html.index("</header>"):html.index("<main>")]
    assert 'class="banner unfinished"' in banner and "Unfinished run runs" in banner



# ---------- the search tree: no more nodes than the record can justify ----------

def _beam(rollouts, step_scores=(0.5, 0.6), tokens=50) -> dict:
    traces = [{"text": "so the answer is 7", "pred": "7", "completion_tokens": 5,
               "finish_reason": "stop", "score": step_scores[-1],
               "step_scores": list(step_scores)}]
    iterations = [{"step": d + 1, "candidates": sum(rollouts[d - 1]) if d else 1,
                   "survivors": len(r), "rollouts": list(r)} for d, r in enumerate(rollouts)]
    return _record("beam", strategy="beam", traces=traces, completion_tokens=tokens,
                   beam={"style": "ttx", "agg": "last", "iterations": iterations})


@pytest.mark.parametrize("rollouts,scores,tokens,words", [
    ([[10**9], [1]], (0.5, 0.6), 50, "the log lists 1000000001 steps"),
    ([[200_000], [1]], (0.5, 0.6), 10**7, "more than the page draws"),
    ([[30], [1]], (0.5, 0.6), 20, "more than the record's 20 completion tokens"),
    ([[1]] * 500, (0.5,) * 500, 10**4, "up to 500 deep"),
])
def test_search_tree_is_bounded(rollouts, scores, tokens, words):
    import time

    from ttx.report.tree import MAX_NODES, search_tree

    rec = _beam(rollouts, scores, tokens)
    start = time.perf_counter()
    tree = search_tree(rec["beam"]["iterations"], rec["traces"], "last", tokens=tokens)
    assert time.perf_counter() - start < 1.0
    assert tree["limited"] and not tree["consistent"] and words in tree["note"], tree["note"]
    assert len(tree["nodes"]) <= min(MAX_NODES, 1 + len(scores))          # the recorded path
    assert all(n["status"] != "pruned" for n in tree["nodes"])


def test_the_token_bound_keeps_every_real_tree():
    from ttx.report.tree import search_tree

    data = Path(__file__).resolve().parent / "data" / "report"
    for kind in ("beam", "dora"):
        for line in (data / f"{kind}.jsonl").read_text().splitlines():
            r = json.loads(line)
            tree = search_tree(r[kind]["iterations"], r["traces"], r[kind]["agg"],
                               tokens=r["completion_tokens"])
            assert tree["consistent"] and not tree["limited"], tree["note"]
    rec = _beam([[2], [1]], (0.5, 0.6), tokens=3)          # 3 steps, 3 tokens: drawn whole
    tree = search_tree(rec["beam"]["iterations"], rec["traces"], "last", tokens=3)
    assert tree["consistent"] and len(tree["nodes"]) == 4


def test_report_of_an_amplifying_beam_record_stays_small(tmp_path):
    path = _write(tmp_path / "beam.jsonl", [_beam([[200_000], [1]]), _beam([[10**9], [1]]) | {
        "id": "beam2"}])
    page = tmp_path / "r.html"
    assert run_cli(["report", "-i", path, "-o", page]).exit_code == 0
    assert page.stat().st_size < 200_000
    html = page.read_text(encoding="utf-8")
    detail = json.loads(re.search('<script type="application/json" id="ttx-detail">(.*?)</script>',
                                  html, re.S).group(1))
    for problem in detail["problems"]:
        search = problem["runs"][0]["recs"][0]["search"][0]
        assert len(search["tree"]) == 3 and "not drawn whole" in search["warn"]
    assert "if (s.warn) h += '<p class=\"warn\">' + esc(s.warn)" in html


# ---------- the page: bidirectional controls and a malformed fragment ----------

RLO = "\u202e"


def _outside_scripts(html: str) -> str:
    return re.sub(r"<script\b.*?</script>", "", html, flags=re.S)


def test_bidi_controls_are_shown_never_applied_in_the_page(tmp_path):
    from ttx.report.safe import BIDI

    run = _write(tmp_path / f"runs{RLO}lnosj.jsonl", [_record(f"invoice{RLO}gnp.exe"),
                                                      _record("b", pred="5")])
    other = _write(tmp_path / "other.jsonl", [_record("b")])
    page = tmp_path / "r.html"
    result = run_cli(["report", "-i", run, "--compare", f"x{RLO}y={other}", "-o", page,
                      "--title", f"title {RLO}txet"])
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    shown = _outside_scripts(html)
    assert not BIDI.search(shown)
    for text in ("x&lt;U+202E&gt;y", "runs&lt;U+202E&gt;lnosj", "title &lt;U+202E&gt;txet"):
        assert text in shown
    assert f"invoice{RLO}gnp.exe" in html               # the data keep the id as it is
    for name in ("\u061c", "\u200e", "\u200f", "\u202a", "\u2066", "\u2069"):
        assert BIDI.search(name)


def _node(snippet: str):
    import shutil
    import subprocess

    if shutil.which("node") is None:
        pytest.skip("node is not installed")
    from importlib import resources

    js = resources.files("ttx.report").joinpath("report.js").read_text(encoding="utf-8")
    helpers = js[js.index("  var ESC = "):js.index("  function own(")]
    out = subprocess.run(["node", "-e", helpers + f"\nconsole.log(JSON.stringify({snippet}));"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_page_script_escapes_bidi_and_tolerates_a_malformed_fragment():
    assert _node('esc("invoice\\u202egnp.exe <b>")') == "invoice&lt;U+202E&gt;gnp.exe &lt;b&gt;"
    assert _node('esc("\\u2066\\u200f")') == "&lt;U+2066&gt;&lt;U+200F&gt;"
    assert _node('[decodeHash("problem/%E0%A4%A"), decodeHash("problem/a%20b")]') == [
        "problem/%E0%A4%A", "problem/a b"]
    assert _node('[encodeHash("\\ud800"), encodeHash("a b")]') == ["", "a%20b"]


def test_page_script_routes_through_the_tolerant_helpers():
    from importlib import resources

    js = resources.files("ttx.report").joinpath("report.js").read_text(encoding="utf-8")
    body = js[js.index("  function own("):]
    assert "decodeURIComponent" not in body and "encodeURIComponent" not in body
    assert "decodeHash(location.hash" in body and "Object.create(null)" in body


def test_names_that_are_not_utf8_are_written_as_escapes(tmp_path):
    """A file name or --title with a byte that is not UTF-8 reaches Python as a lone surrogate
    (surrogateescape): the page and the manifests write it as an escape, not a traceback."""
    run = _write(tmp_path / "r\udcfe.jsonl", [_record("a")])       # the byte 0xfe on disk
    page = tmp_path / "r.html"
    result = run_cli(["report", "-i", run, "-o", page, "--title", "a\udcffb"])
    assert result.exit_code == 0, result.output
    html = page.read_text(encoding="utf-8")
    assert "<title>a\\udcffb</title>" in html and "r\\udcfe" in html
    per = tmp_path / "per.jsonl"
    assert run_cli(["score", "-i", run, "--per-record", per]).exit_code == 0
    manifest = json.loads((tmp_path / "per.jsonl.manifest.json").read_text(encoding="utf-8"))
    assert manifest["inputs"][0]["path"] == str(run)                 # reads back the same
