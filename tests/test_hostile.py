"""Hostile input, tried as a hostile user would (issue 16): every case fails cleanly, with one
line and exit 2, and loses nothing already written."""

from __future__ import annotations

import json
import os
import shutil
import stat

import pytest

from tests.conftest import run_cli


def _problems(tmp_path, n=2):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"id": i, "question": f"What is {i} + 1?",
                                        "answer": str(i + 1)}) + "\n" for i in range(n)))
    return path


def _one_line(result):
    lines = [line for line in result.output.splitlines() if line.startswith("ttx: error:")]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    return lines[0]


def _copy_model(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_a_model_that_wants_remote_code_is_refused(tmp_path, tiny_model_dir):
    evil = _copy_model(tiny_model_dir, tmp_path / "evil")
    marker = tmp_path / "ran"
    (evil / "modeling_evil.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    config = json.loads((evil / "config.json").read_text())
    config.update(model_type="evil", auto_map={"AutoModelForCausalLM": "modeling_evil.Evil"})
    (evil / "config.json").write_text(json.dumps(config))
    result = run_cli(["tts-run", "--model", evil, "-i", _problems(tmp_path), "-o",
                      tmp_path / "o.jsonl", "--strategy", "greedy"], input="y\ny\n")
    assert "never runs" in _one_line(result)
    assert not marker.exists()
    config["model_type"] = "llama"                 # auto_map on a known type is refused too
    (evil / "config.json").write_text(json.dumps(config))
    result = run_cli(["tts-run", "--model", evil, "-i", _problems(tmp_path), "-o",
                      tmp_path / "o.jsonl", "--strategy", "greedy"])
    assert "auto_map" in _one_line(result) and not marker.exists()


@pytest.mark.parametrize("make,message", [
    (lambda d: (d / "model.safetensors").rename(d / "pytorch_model.bin"), "pickles"),
    (lambda d: (d / "model.safetensors").unlink(), "no weights"),
    (lambda d: (d / "config.json").write_text("{not json"), "not valid JSON"),
])
def test_bad_model_folders_get_one_line(tmp_path, tiny_model_dir, make, message):
    folder = _copy_model(tiny_model_dir, tmp_path / "m")
    make(folder)
    result = run_cli(["tts-run", "--model", folder, "-i", _problems(tmp_path), "-o",
                      tmp_path / "o.jsonl"])
    assert message in _one_line(result)


def test_a_fake_gguf_and_a_bad_adapter_get_one_line(tmp_path, tiny_model_dir, ttx_home):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"GGUF" + os.urandom(64))
    result = run_cli(["tts-run", "--model", fake, "-i", _problems(tmp_path), "-o",
                      tmp_path / "o.jsonl"])
    assert "GGUF" in _one_line(result)
    bad = tmp_path / "adapter"
    bad.mkdir()
    (bad / "notes.txt").write_text("not an adapter")
    result = run_cli(["tts-run", "--model", tiny_model_dir, "--adapter", bad, "-i",
                      _problems(tmp_path), "-o", tmp_path / "o.jsonl"])
    assert "adapter_config.json" in _one_line(result)


def test_an_adapter_of_another_base_is_refused(tmp_path, tiny_model_dir, default_model_dir):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from ttx.models import write_base

    other = _copy_model(tiny_model_dir, tmp_path / "other")
    model = AutoModelForCausalLM.from_pretrained(other)
    with torch.no_grad():                                   # same shapes, other weights
        for p in model.parameters():
            p.add_(0.01)
    model.save_pretrained(other, safe_serialization=True)
    peft = get_peft_model(AutoModelForCausalLM.from_pretrained(other),
                          LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    peft.save_pretrained(tmp_path / "adapter")
    write_base(tmp_path / "adapter", str(other), other)
    result = run_cli(["tts-run", "--model", tiny_model_dir, "--adapter", tmp_path / "adapter",
                      "-i", _problems(tmp_path), "-o", tmp_path / "o.jsonl", "--strategy",
                      "greedy"])
    assert "another base model" in _one_line(result)
    ok = run_cli(["tts-run", "--model", other, "--adapter", tmp_path / "adapter", "-i",
                  _problems(tmp_path), "-o", tmp_path / "o.jsonl", "--strategy", "greedy",
                  "--max-new-tokens", "3", "--no-progress"])
    assert ok.exit_code == 0, ok.output


def test_non_utf8_input_is_named(tmp_path, tiny_model_dir):
    path = tmp_path / "p.jsonl"
    path.write_bytes(b'{"question": "ok"}\n{"question": "caf\xe9"}\n')
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", path, "-o", tmp_path / "o.jsonl"])
    assert f"{path}:2:" in _one_line(result) and "UTF-8" in result.output


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_unwritable_output_is_one_line(tmp_path, tiny_model_dir):
    folder = tmp_path / "ro"
    folder.mkdir()
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", _problems(tmp_path), "-o",
                      folder / "o.jsonl"])
    assert "cannot write" in _one_line(result)


def test_output_that_is_a_folder_or_a_device(tmp_path, tiny_model_dir):
    result = run_cli(["tts-run", "--model", tiny_model_dir, "-i", _problems(tmp_path), "-o",
                      tmp_path])
    assert "not a regular file" in _one_line(result)
    from ttx.io import write_json

    fifo_target = tmp_path / "link.json"
    real = tmp_path / "real.json"
    real.write_text("{}")
    os.symlink(real, fifo_target)
    write_json(fifo_target, {"a": 1})               # written through the link
    assert fifo_target.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    if os.path.exists("/dev/null"):
        write_json("/dev/null", {"a": 1})            # a device stays a device
        assert stat.S_ISCHR(os.stat("/dev/null").st_mode)
    write_json(tmp_path / "new.json", {})
    mask = os.umask(0)
    os.umask(mask)
    assert stat.S_IMODE(os.stat(tmp_path / "new.json").st_mode) == 0o666 & ~mask


def test_prompt_longer_than_the_model_is_refused_with_its_id(tmp_path, tiny_model_dir):
    small = _copy_model(tiny_model_dir, tmp_path / "small")
    config = json.loads((small / "config.json").read_text())
    config["max_position_embeddings"] = 64
    (small / "config.json").write_text(json.dumps(config))
    path = tmp_path / "long.jsonl"
    path.write_text(json.dumps({"id": "short", "question": "1+1?"}) + "\n"
                    + json.dumps({"id": "huge", "question": "word " * 200}) + "\n")
    result = run_cli(["tts-run", "--model", small, "-i", path, "-o", tmp_path / "o.jsonl",
                      "--max-new-tokens", "8"])
    assert "'huge'" in _one_line(result) and "64 positions" in result.output
    assert not (tmp_path / "o.jsonl").exists() or (tmp_path / "o.jsonl").read_text() == ""


def test_existing_output_folders_need_overwrite(tmp_path, tiny_model_dir):
    out = tmp_path / "adapter"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    result = run_cli(["tlm-adapt", "--model", tiny_model_dir, "-i", _problems(tmp_path), "-o",
                      out, "--no-progress"])
    assert "--overwrite" in _one_line(result)
    assert (out / "precious.txt").read_text() == "keep me"
    result = run_cli(["distill-to-mamba", "--model", tiny_model_dir, "-o", out, "--steps", "0",
                      "--align-steps", "0"])
    assert "--overwrite" in _one_line(result) and (out / "precious.txt").exists()


def test_tlm_resume_with_other_options_is_refused(tmp_path, tiny_model_dir):
    out = tmp_path / "a"
    args = ["tlm-adapt", "--model", tiny_model_dir, "-i", _problems(tmp_path, 6), "-o", out,
            "--no-progress", "--batch-size", "1", "--stop-after", "2", "--save-every", "1"]
    first = run_cli(args)
    assert first.exit_code == 0, first.output
    for change, option in ((["--lora-r", "4"], "--lora-r"), (["--lr", "0.01"], "--lr")):
        result = run_cli([*args, "--resume", *change])
        assert f"--resume with a different {option}" in _one_line(result)


def test_memory_extract_reads_stdin_once_and_refuses_an_empty_input(tmp_path, tiny_model_dir):
    records = [{"id": i, "question": f"What is {i} + 1?", "answer": str(i + 1), "pred": str(i),
                "correct": False, "traces": [{"text": f"It is {i}.", "pred": str(i)}]}
               for i in range(2)]
    text = "".join(json.dumps(r) + "\n" for r in records)
    bank = tmp_path / "bank.jsonl"
    result = run_cli(["memory-extract", "--model", tiny_model_dir, "-i", "-", "-o", bank,
                      "--max-new-tokens", "16", "--no-progress"], input=text)
    assert result.exit_code == 0, result.output
    assert "2 problems" in result.output                  # not 0: stdin was read once
    result = run_cli(["memory-extract", "--model", tiny_model_dir, "-i", "-", "-o",
                      tmp_path / "b2.jsonl"], input="")
    assert "no records" in _one_line(result)
