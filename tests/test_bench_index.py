"""bench/index.py: the committed bench/README.md index is current, and its pieces read what the
results files hold (hand-made files here; the benches themselves never run in tests)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from bench import index
from tests.conftest import REPO


def _full_history() -> bool:
    try:
        done = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO,
                              capture_output=True, text=True, check=False)
    except OSError:
        return False
    return done.returncode == 0 and done.stdout.strip() == "false"


@pytest.mark.skipif(not _full_history(), reason="the date column needs git and the full history")
def test_committed_index_is_current():
    done = subprocess.run([sys.executable, "bench/index.py", "--check"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def _engine_result(**machine) -> dict:
    return {"machine": {"cpu": "Test CPU", "cores": 4, "git_commit": "0000000", "gpu": None,
                        **machine},
            "throughput": {"settings": {"torch_threads": 4},
                           "mean_tokens_per_s": {"a_hf_engine_batched": 300.0,
                                                 "d_vllm_cpu_2_threads": 150.0,
                                                 "e_generate_batch_paged_sdpa": 50.0},
                           "ratios": {"a_hf_engine_batched_over_d_vllm_cpu_2_threads": 2.0,
                                      "a_hf_engine_batched_over_e_generate_batch_paged_sdpa": 6.0}}}


def test_extractors_read_hand_made_results():
    assert index.tts_vs_vllm(_engine_result()) == "300.0 tok/s, 2.00x vLLM-CPU (150.0) at 4 threads"
    table = [{"strategy": "greedy", "accuracy": 0.25, "mean_sequential_tokens": 70.0,
              "level_key": "n", "compared_level": 1},
             {"strategy": "ffs", "accuracy": 0.5, "mean_sequential_tokens": 40.0,
              "level_key": "n", "compared_level": 4},
             {"strategy": "beam", "accuracy": 0.5, "mean_sequential_tokens": 90.0,
              "level_key": "n", "compared_level": 4}]
    # the best accuracy; a tie goes to the fewer sequential tokens
    assert index.strategies_best({"problems": 8, "table": table}) == "ffs 4/8 at n=4 (greedy 2/8)"


def _grading(**machine) -> dict:
    return {"machine": {"cpu": "Test CPU", "cores": 4, "git_commit": "0000000", **machine},
            "suites": {s: {"ttx": {"agree": 9, "cases": 10}, "math-verify": {"agree": 8, "cases": 10}}
                       for s in ("conformance", "gsm8k_style")}}


def _readme(tmp_path, body="stale\n"):
    path = tmp_path / "README.md"
    path.write_text(f"# B\n\n## grading: answers\n\n{index.BEGIN}\n{body}{index.END}\nrest\n")
    return path


def test_rows_mark_what_a_result_does_not_record(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "grading.json").write_text(json.dumps(_grading(
        gpu="H100", argv=["/x/bench/grading.py", "--fast"], git_dirty=True)))
    (results / "zeta.json").write_text(json.dumps(_grading()))
    (results / "zeta.png.manifest.json").write_text("{}")       # not a result: no row
    rows = index.rows(results, _readme(tmp_path).read_text())
    assert [r[2] for r in rows] == ["[grading.json](results/grading.json)"] * 2 + \
        ["[zeta.json](results/zeta.json)"]
    first = rows[0]
    assert first[0].startswith("[grading](#grading-answers): agreement with the conformance")
    assert first[1] == "ttx 9/10 (90.0%), math-verify 8/10 (80.0%)"
    assert first[3] == "`python bench/grading.py --fast`"
    assert first[4] == "`0000000` + uncommitted changes (not in this clone)"
    assert first[5] == "not in git"
    assert first[6] == "Test CPU, 4 cores, H100"
    assert rows[-1][0].startswith("zeta: no headline registered")
    assert rows[-1][3] == "`python bench/zeta.py` (args not recorded)"
    assert rows[-1][6] == "Test CPU, 4 cores"
    # a hostile file: no git call is made with what it holds
    (results / "zeta.json").write_text(json.dumps(_grading(git_commit="--help", argv=[1, "a b"])))
    last = index.rows(results)[-1]
    assert last[4] == "not a commit hash: '--help'" and last[3] == "`python 1 'a b'`"


def test_check_fails_on_a_stale_block_and_passes_once_written(tmp_path):
    results = tmp_path / "results"
    results.mkdir()
    (results / "grading.json").write_text(json.dumps(_grading(git_commit=None)))
    readme = _readme(tmp_path)
    argv = ["--readme", str(readme), "--results", str(results)]
    assert index.main(["--check", *argv]) == 1
    assert "stale" in readme.read_text()                          # --check writes nothing
    assert index.main(argv) == 0
    text = readme.read_text()
    assert "| not recorded |" in text and "stale" not in text
    assert text.endswith(f"{index.END}\nrest\n")
    assert index.main(["--check", *argv]) == 0


def test_unreadable_results_give_one_line_naming_file_and_claim(tmp_path, capsys):
    results = tmp_path / "results"
    results.mkdir()
    readme = _readme(tmp_path)
    argv = ["--readme", str(readme), "--results", str(results)]
    (results / "grading.json").write_text(json.dumps({"machine": {}, "suites": {}}))
    assert index.main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "grading.json: claim " in err and "agreement with the conformance" in err
    assert "KeyError" in err
    (results / "grading.json").write_text('{"machine": ')
    assert index.main(argv) == 2
    assert "grading.json: not readable JSON" in capsys.readouterr().err
    readme.write_text("no markers\n")
    (results / "grading.json").unlink()
    assert index.main(argv) == 2
    assert "expected one block" in capsys.readouterr().err
    assert readme.read_text() == "no markers\n"


def _rl_result(sections=("hapo", "mrt", "discover", "label-free")) -> dict:
    def ci(mean, lo, hi):
        return {"mean": mean, "ci95": [lo, hi], "problems": 8, "values": 8}

    def ev(length, acc):
        return {"correct_length": ci(length, length - 10, length + 10), "mean@4": ci(acc, 0.0, 0.5)}

    def regret(v):
        return {"regret": ci(v, v - 0.1, min(1.0, v + 0.1))}

    def curve(best, samples):
        return {"best_so_far_curve": [{"step": 1, "samples": samples / 2, "best_so_far": 0.1},
                                      {"step": 2, "samples": samples, "best_so_far": best}]}

    def steps(acc, div):
        return {"per_step": [{"step": 1, "sample_accuracy": 0.0, "answer_diversity": 1.0},
                             {"step": 2, "sample_accuracy": acc, "answer_diversity": div}]}
    every = {"hapo": {"before": ev(80, 0.25), "gold": {"after": ev(78, 0.25)},
                      "hapo": {"after": ev(51.4, 0.3)}},
             "mrt": {"before": regret(0.9), "gold": {"after": regret(0.85)}, "mrt": {"after": regret(0.8)}},
             "discover": {"discover": curve(0.5, 32), "discover-grpo": curve(0.25, 32)},
             "label-free": {"majority": steps(0.25, 0.5), "self-certainty": steps(0.125, 0.25),
                            "entropy": steps(0.0, 0.125)}}
    return {"machine": {"cpu": "Test CPU", "cores": 2, "git_commit": "0000000"}, "size": {"eval_n": 4},
            "sections": {k: every[k] for k in sections}}


def test_rl_claims_read_each_section_the_run_holds():
    d = _rl_result()
    got = {c.text.split(":")[0]: c.number(d) for c in index.rl_claims(d)}
    assert got == {
        "HAPO vs gold-reward GRPO": "correct length 51 [41, 61] vs gold 78 [68, 88] (before 80 [70, 90]); "
                                    "mean@4 0.30 [0.00, 0.50] vs 0.25 [0.00, 0.50] (before 0.25 [0.00, 0.50])",
        "MRT vs outcome-only GRPO": "0.80 [0.70, 0.90] vs gold 0.85 [0.75, 0.95] (before 0.90 [0.80, 1.00])",
        "TTT-Discover (entropic) vs mean-baseline GRPO": "0.500 vs 0.250 after 32 / 32 samples",
        "label-free rewards vs TTRL's majority": "majority 0.25 / 0.50; self-certainty 0.12 / 0.25; "
                                                 "entropy 0.00 / 0.12"}
    # a run of some sections (--only) lists only theirs; no correct sample reads "none"
    d = _rl_result(("hapo",))
    d["sections"]["hapo"]["before"]["correct_length"] = {"mean": None, "ci95": None}
    (claim,) = index.rl_claims(d)
    assert "(before none)" in claim.number(d)
