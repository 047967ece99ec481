"""The record layer (ttx/records.py) and the option schemas (ttx/options.py) on their own: no
model, no stage; what every stage's reading, locking, resuming and option building rests on."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from ttx.errors import TtxError
from ttx.io import manifest_path, output_dir, resume_log
from ttx.options import CSV, build, cli_options, given, opt
from ttx.records import Output, read_records, refuse_overlap, stage_fingerprint


def _lines(path, *lines):
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------- reading

@pytest.mark.parametrize("lines,match", [
    (['{"id": 1, "question": "q"}', "{not json"], r"in\.jsonl:2"),
    (['{"id": 1}'], r"in\.jsonl:1: field 'question'"),
    (['{"id": 1, "question": "  "}'], r"in\.jsonl:1: field 'question': expected a non-empty"),
    (['{"id": 1, "question": "a"}', '{"id": 1, "question": "b"}'], r":2: field 'id': duplicate"),
    ([], r"no records"),
    (['[1, 2]'], r"in\.jsonl:1"),
])
def test_read_records_names_file_line_and_field(tmp_path, lines, match):
    path = _lines(tmp_path / "in.jsonl", *lines)
    with pytest.raises(TtxError, match=match):
        read_records(path, required=("question",), strings=("question",))


def test_read_records_numbers_as_text_and_limit(tmp_path):
    path = _lines(tmp_path / "in.jsonl", '{"id": 7, "answer": 42}', '{"answer": "x"}',
                  '{"answer": "y"}')
    rows = read_records(path, strings=("answer",), numbers_as_text=True, limit=2)
    assert [(r.line, r.id, r.data["answer"]) for r in rows] == [(1, "7", "42"), (2, "2", "x")]


def test_refuse_overlap_sees_links(tmp_path):
    src = _lines(tmp_path / "in.jsonl", '{"id": 1}')
    os.link(src, tmp_path / "hard.jsonl")
    (tmp_path / "soft.jsonl").symlink_to(src)
    for alias in ("in.jsonl", "hard.jsonl", "soft.jsonl"):
        with pytest.raises(TtxError, match="the output is also an input"):
            refuse_overlap(tmp_path / alias, [src])
    refuse_overlap(tmp_path / "other.jsonl", [src, None])


# ---------------------------------------------------------------- writing and resuming

def _output(path, resume=False, force=False, **fingerprint):
    return Output(path, stage="test", fingerprint={"n": 4, **fingerprint}, resume=resume,
                  force=force, key=lambda r: r["id"])


def test_a_second_writer_is_refused_with_the_holders_pid(tmp_path):
    out = tmp_path / "out.jsonl"
    with _output(out) as first:
        first.write({"id": 1})
        with pytest.raises(TtxError, match=rf"another process \(pid {os.getpid()}\) is writing"):
            _output(out, resume=True)
    with _output(out, resume=True) as again:            # the lock went with the first writer
        assert again.has(1)


def test_resume_repairs_a_torn_tail_and_keeps_whole_records(tmp_path):
    out = tmp_path / "out.jsonl"
    with _output(out) as o:
        o.write({"id": 1})
        o.write({"id": 2})
    with open(out, "a", encoding="utf-8") as f:
        f.write('{"id": 3, "te')                          # a writer killed mid-line
    with _output(out, resume=True) as o:
        assert o.keys == {1, 2}
        o.write({"id": 3})
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == [1, 2, 3]


def test_resume_with_another_option_is_refused_naming_it(tmp_path):
    out = tmp_path / "out.jsonl"
    with _output(out, max_new_tokens=64) as o:
        o.write({"id": 1})
    before = out.read_bytes()
    with pytest.raises(TtxError, match=r"--resume with a different --max-new-tokens: .* 64, "
                                       r"this run has 128"):
        _output(out, resume=True, max_new_tokens=128)
    assert out.read_bytes() == before                   # nothing written, nothing lost
    with _output(out, resume=True, force=True, max_new_tokens=128) as o:
        assert o.has(1)


def test_resume_refuses_a_changed_input_and_a_missing_manifest(tmp_path):
    src = _lines(tmp_path / "in.jsonl", '{"id": 1}')
    out = tmp_path / "out.jsonl"
    fp = stage_fingerprint({"n": 4}, [src])
    with Output(out, stage="test", fingerprint=fp, inputs=[src]) as o:
        o.write({"id": 1})
    _lines(src, '{"id": 1, "changed": true}')
    with pytest.raises(TtxError, match="input"):
        Output(out, stage="test", fingerprint=stage_fingerprint({"n": 4}, [src]), inputs=[src],
               resume=True)
    manifest_path(out).unlink()
    with pytest.raises(TtxError, match="needs the manifest"):
        _output(out, resume=True)


def test_output_dir_one_rule_for_every_stage(tmp_path):
    (tmp_path / "f").write_text("x")
    with pytest.raises(TtxError, match="is not a folder"):
        output_dir(tmp_path / "f")
    assert output_dir(tmp_path / "new") == tmp_path / "new"      # missing: fine, not created
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(TtxError, match="exists and is not empty"):
        output_dir(foreign, own=("checkpoints",))
    with pytest.raises(TtxError, match="not deleting it"):        # --overwrite spares it
        output_dir(foreign, overwrite=True, own=("checkpoints",), stage="ttrl")
    with pytest.raises(TtxError, match="no run here to resume"):
        output_dir(foreign, resume=True, own=("checkpoints",), stage="ttrl")
    assert os.listdir(foreign) == ["notes.txt"]
    ours = tmp_path / "ours"
    (ours / "checkpoints").mkdir(parents=True)
    assert output_dir(ours, resume=True, own=("checkpoints",)) == ours
    output_dir(ours, overwrite=True, own=("checkpoints",), empty=False)
    assert (ours / "checkpoints").is_dir()                          # the caller empties it later
    output_dir(ours, overwrite=True, own=("checkpoints",))
    assert not ours.exists()


def test_resume_log_cuts_a_torn_tail_and_rows_past_the_checkpoint(tmp_path):
    log = tmp_path / "train_log.jsonl"
    assert resume_log(log) == []
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"st')
    assert resume_log(log) == [{"step": 1}, {"step": 2}, {"step": 3}]
    assert resume_log(log, keep=lambda r: r["step"] <= 2) == [{"step": 1}, {"step": 2}]
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'
    log.write_text('{"step": 1}\nnot json\n{"step": 2}\n')
    with pytest.raises(TtxError, match=r"train_log.jsonl:2: not valid JSON"):   # named
        resume_log(log)


def test_manifest_says_running_until_a_summary_closes_it(tmp_path):
    out = tmp_path / "out.jsonl"
    o = _output(out)
    assert json.loads(manifest_path(out).read_text())["status"] == "running"
    o.close(summary={"records": 0})
    manifest = json.loads(manifest_path(out).read_text())
    assert manifest["status"] == "finished" and manifest["sessions"][-1]["summary"]


def test_without_resume_an_output_starts_empty(tmp_path):
    out = _lines(tmp_path / "out.jsonl", '{"id": 1}')
    with _output(out) as o:
        assert not o.has(1)
    assert out.read_text() == ""


def test_fingerprint_skips_volatile_and_non_json_options(tmp_path):
    fp = stage_fingerprint({"n": 4, "stop": ("a", "b"), "progress": True, "obj": object()},
                           volatile=["progress"])
    assert fp == {"n": 4, "stop": ["a", "b"]}


# ---------------------------------------------------------------- option schemas

@dataclass
class Schema:
    max_new_tokens: int = opt(256, "Tokens per trace.", type=click.IntRange(min=1))
    limit: int | None = opt(None, "At most this many records.", type=click.IntRange(min=1))
    knob: int = opt(3, "A knob a stage can tell was given.", type=int, unset=True)
    stop: tuple = opt((), "Stop strings.", multiple=True)
    modules: tuple = opt(("q_proj",), "Target modules.", type=CSV)
    fast: bool = opt(False, "A flag.", is_flag=True)
    hidden: str = opt("x", "Not on the command line.", cli=False)


def _parse(*args):
    seen = {}

    @click.command()
    @cli_options(Schema)
    def command(**params):
        seen["params"] = params
        seen["built"] = build(Schema, params)
        seen["given"] = given(Schema, params)

    result = CliRunner().invoke(command, list(args), catch_exceptions=False)
    return result, seen


def test_options_build_the_schema_with_defaults():
    result, seen = _parse()
    assert result.exit_code == 0, result.output
    assert seen["built"] == Schema()
    assert "hidden" not in seen["params"] and seen["given"] >= {"max_new_tokens"}
    assert "knob" not in seen["given"]                   # unset: None until given


def test_options_parse_types_none_and_multiples():
    result, seen = _parse("--max-new-tokens", "8", "--limit", "5", "--knob", "4", "--stop", "a",
                          "--stop", "none", "--stop", "b", "--modules", "q_proj, v_proj",
                          "--fast")
    assert result.exit_code == 0, result.output
    assert seen["built"] == Schema(max_new_tokens=8, limit=5, knob=4, stop=("b",),
                                   modules=("q_proj", "v_proj"), fast=True)
    assert "knob" in seen["given"]
    result, seen = _parse("--limit", "none")
    assert seen["built"].limit is None


def test_options_refuse_a_bad_value_naming_the_option():
    result, _ = _parse("--max-new-tokens", "0")
    assert result.exit_code == 2 and "--max-new-tokens" in result.output
