"""--report-to: accelerate's trackers mirror train_log.jsonl (TRL's convention). TensorBoard's
event file is read back; wandb runs offline (WANDB_MODE=offline) and its summary is read back."""

from __future__ import annotations

import json

import pytest

from tests.conftest import run_cli


def _inputs(path, n=4):
    path.write_text("".join(json.dumps({"id": str(i), "question": f"What is {i} plus {i + 3}?"}) + "\n"
                            for i in range(n)))
    return path


def _rows(out):
    return [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]


def _adapt(tmp_path, tiny_model_dir, tracker):
    out = tmp_path / tracker
    r = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", _inputs(tmp_path / "in.jsonl"), "-o", out,
                 "--lr", "5e-3", "--lora-r", "4", "--no-progress", "--report-to", tracker])
    assert r.exit_code == 0, r.output
    return out


def test_tensorboard_event_file_mirrors_the_train_log(tmp_path, tiny_model_dir):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out = _adapt(tmp_path, tiny_model_dir, "tensorboard")
    rows = _rows(out)
    events = sorted((out / "runs").rglob("events.out.tfevents.*"))
    scalars = {}
    for path in events:
        acc = EventAccumulator(str(path))
        acc.Reload()
        for tag in acc.Tags()["scalars"]:
            scalars[tag] = [(e.step, e.value) for e in acc.Scalars(tag)]
    assert [s for s, _ in scalars["loss"]] == [r["step"] for r in rows] == [1, 2, 3, 4]
    assert [v for _, v in scalars["loss"]] == pytest.approx([r["loss"] for r in rows], rel=1e-6)
    assert [v for _, v in scalars["lr"]] == pytest.approx([r["lr"] for r in rows], rel=1e-6)
    assert [v for _, v in scalars["ce"]] == pytest.approx([r["ce"] for r in rows], rel=1e-6)


def _wandb_history(path) -> list[dict]:
    """The history rows of an offline .wandb file: LevelDB's log format (32 KiB blocks of records
    with a 7-byte header: crc32, length, type FULL=1 FIRST=2 MIDDLE=3 LAST=4) after W&B's 7-byte
    file header ":W&B" 0xBEE1 v0, each record a wandb_internal_pb2.Record."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    raw = path.read_bytes()
    assert raw[:4] == b":W&B"
    pos, records, part = 7, [], b""
    while pos + 7 <= len(raw):
        if 32768 - pos % 32768 < 7:                 # a block's tail too short for a header
            pos += 32768 - pos % 32768
            continue
        _, size, kind = struct.unpack("<IHB", raw[pos:pos + 7])
        if size == 0 and kind == 0:
            break
        part += raw[pos + 7:pos + 7 + size]
        pos += 7 + size
        if kind in (1, 4):
            records.append(part)
            part = b""
    rows = []
    for data in records:
        record = pb.Record()
        record.ParseFromString(data)
        if record.WhichOneof("record_type") == "history":
            rows.append({(i.key or "/".join(i.nested_key)): json.loads(i.value_json)
                         for i in record.history.item})
    return rows


def test_wandb_offline_run_mirrors_the_train_log(tmp_path, tiny_model_dir, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    out = _adapt(tmp_path, tiny_model_dir, "wandb")
    rows = _rows(out)
    runs = sorted(out.rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1
    history = _wandb_history(runs[0])
    assert [h["_step"] for h in history] == [r["step"] for r in rows] == [1, 2, 3, 4]
    for h, r in zip(history, rows):
        assert (h["loss"], h["lr"], h["ce"]) == pytest.approx((r["loss"], r["lr"], r["ce"]), rel=1e-9)


def test_an_unknown_or_missing_tracker_is_refused_before_a_model_loads(tmp_path):
    r = run_cli(["tlm-adapt", "--model", tmp_path / "no-model", "-i", _inputs(tmp_path / "in.jsonl"),
                 "-o", tmp_path / "o", "--report-to", "mlflow"])
    assert r.exit_code == 2 and "--report-to" in r.output and "mlflow" in r.output
