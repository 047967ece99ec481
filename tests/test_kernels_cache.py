"""The native library cache (ttx.engines.cpu.native, issue 33): nothing is loaded from a folder or file
another user could write, what is loaded is what its build hashed, and a missing-symbol, corrupt
or half-built library, a hanging compiler or a killed build costs one rebuild or one warning line,
never a crash or a hang. The hostile inputs are built here: libraries with a constructor that
writes a marker, folders of mode 777 or of another uid, fake compilers that hang or fail."""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ttx.engines.cpu import kernels, native

REPO = Path(__file__).resolve().parents[1]
CC = shutil.which("cc") or shutil.which("gcc")
FLAGS = ("-shared", "-fPIC")
pytestmark = pytest.mark.skipif(CC is None, reason="no C compiler")
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
NOBODY = 65534


@pytest.fixture()
def src(tmp_path):
    """The tiny library the cache builds: ttx_probe() returns 42."""
    path = tmp_path / "probe.c"
    path.write_text("int ttx_probe(void) { return 42; }\n")
    return path


@pytest.fixture()
def cc(tmp_path, monkeypatch):
    """$CC: the real compiler, counting its builds in `cc.builds`."""
    count = tmp_path / "builds"
    script = _script(tmp_path / "countcc", f'echo x >> "{count}"\nexec "{CC}" "$@"')
    monkeypatch.setenv("CC", str(script))
    return SimpleNamespace(path=script, builds=lambda: len(count.read_text().splitlines())
                           if count.exists() else 0)


def _script(path, body, version="echo 'fake cc 1.0'"):
    path.write_text(f'#!/bin/sh\nif [ "$1" = "--version" ]; then {version}; exit 0; fi\n{body}\n')
    path.chmod(0o755)
    return path


def _planted(path, marker, probe=666, symbol=True):
    """A library whose constructor writes `marker` when anything dlopens it."""
    c = path.with_suffix(".c")
    c.write_text('#include <stdio.h>\n__attribute__((constructor)) static void planted(void) {\n'
                 f'  FILE *f = fopen("{marker}", "w"); if (f) {{ fputs("ran", f); fclose(f); }}\n}}\n'
                 + (f"int ttx_probe(void) {{ return {probe}; }}\n" if symbol else ""))
    subprocess.run([CC, *FLAGS, str(c), "-o", str(path)], check=True)
    c.unlink()
    _record(path)
    return path


def _record(path):
    """The sidecar a build writes (a planter can write it too)."""
    Path(str(path) + ".sha256").write_text(hashlib.sha256(path.read_bytes()).hexdigest() + "\n")


def _load(folder, src):
    return native.load("kernels", src, FLAGS, ("ttx_probe",), folder)


def _name(src):
    return native.library_name("kernels", native.compiler(), src, FLAGS)


def _gone(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return True
    return state == "Z"                                # killed, waiting for its reaper


def test_first_use_builds_a_private_folder_with_a_recorded_hash_then_loads_from_it(tmp_path, src,
                                                                                   cc):
    folder = tmp_path / "home" / "native"
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42
    assert folder.stat().st_mode & 0o777 == 0o700
    so = folder / _name(src)
    assert Path(str(so) + ".sha256").read_text().strip() == hashlib.sha256(so.read_bytes()).hexdigest()
    assert so.stat().st_mode & 0o077 == 0
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42 and cc.builds() == 1


@pytest.mark.parametrize("case", ["mode 777", "mode 775", "other uid"])
def test_a_folder_others_can_write_is_refused_and_its_planted_library_never_runs(tmp_path, src, cc,
                                                                                 case):
    if case == "other uid" and os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    folder = tmp_path / "shared" / "native"
    folder.mkdir(parents=True)
    marker = tmp_path / "ran"
    planted = _planted(folder / _name(src), marker)     # under the right name, with its hash
    if case == "other uid":
        for path in (folder, planted, Path(str(planted) + ".sha256")):
            os.chown(path, NOBODY, NOBODY)
        folder.chmod(0o755)
    else:
        folder.chmod(int(case.split()[1], 8))
    before = planted.read_bytes()
    library, warning = _load(folder, src)
    assert not marker.exists()
    assert library.ttx_probe() == 42 and cc.builds() == 1         # a private build serves
    why = f"owned by uid {NOBODY}" if case == "other uid" else "writable by group or others"
    assert str(folder) in warning and why in warning and "built privately" in warning
    assert "\n" not in warning
    assert planted.read_bytes() == before                          # their folder is left alone
    assert sorted(p.name for p in folder.iterdir()) == [planted.name, planted.name + ".sha256"]


@pytest.mark.parametrize("case", ["other uid", "group-writable", "symlink", "no hash"])
def test_a_foreign_loose_or_unrecorded_file_in_our_folder_is_rebuilt_not_loaded(tmp_path, src, cc,
                                                                                case):
    if case == "other uid" and os.geteuid() != 0:
        pytest.skip("chown to another uid needs root")
    folder = tmp_path / "native"
    folder.mkdir(mode=0o700)
    marker = tmp_path / "ran"
    so = folder / _name(src)
    if case == "symlink":
        os.symlink(_planted(tmp_path / "evil.so", marker), so)
        _record(tmp_path / "evil.so")
        os.replace(tmp_path / "evil.so.sha256", Path(str(so) + ".sha256"))
    else:
        _planted(so, marker)
    if case == "other uid":
        os.chown(so, NOBODY, NOBODY)
    elif case == "group-writable":
        so.chmod(0o775)
    elif case == "no hash":                 # a library ttx did not build (or an old ttx did)
        Path(str(so) + ".sha256").unlink()
    library, warning = _load(folder, src)
    assert not marker.exists()
    assert warning is None and library.ttx_probe() == 42 and cc.builds() == 1
    assert not so.is_symlink() and so.stat().st_uid == os.geteuid()


def test_a_library_without_the_symbols_is_rebuilt(tmp_path, src, cc):
    folder = tmp_path / "native"
    folder.mkdir(mode=0o700)
    marker = tmp_path / "ran"
    _planted(folder / _name(src), marker, symbol=False)         # ours, hashed, but no ttx_probe
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42 and cc.builds() == 1
    assert _load(folder, src)[0].ttx_probe() == 42 and cc.builds() == 1


@pytest.mark.parametrize("case", ["hash mismatch", "recorded garbage", "truncated"])
def test_a_corrupt_library_is_rebuilt_once_then_served_from_the_cache(tmp_path, src, cc, case):
    folder = tmp_path / "native"
    _load(folder, src)
    so = folder / _name(src)
    # a new file under the name: writing into the one this process has mapped would crash it
    # (SIGBUS) as it would any process that loaded the library
    bad = so.with_name("corrupt")
    bad.write_bytes(so.read_bytes()[:1000] if case == "truncated"
                    else b"\x7fELF" + os.urandom(3000))
    bad.chmod(so.stat().st_mode)
    os.replace(bad, so)
    if case == "recorded garbage":          # the hash matches; dlopen refuses it
        _record(so)
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42 and cc.builds() == 2
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42 and cc.builds() == 2


@pytest.mark.parametrize("stage", ["--version", "compile"])
def test_a_hanging_compiler_is_killed_after_the_time_limit(tmp_path, src, monkeypatch, stage):
    pid = tmp_path / "pid"
    hang = f'sleep 60 & echo $! > "{pid}"; wait'      # a child of the driver hangs (as cc1 would)
    script = (_script(tmp_path / "cc", "exit 1", version=hang) if stage == "--version"
              else _script(tmp_path / "cc", hang))
    monkeypatch.setenv("CC", str(script))
    monkeypatch.setenv("TTX_NATIVE_TIMEOUT", "0.5")
    start = time.monotonic()
    library, warning = _load(tmp_path / "native", src)
    assert time.monotonic() - start < 10
    assert library is None and "ran longer than 0.5 s (TTX_NATIVE_TIMEOUT)" in warning
    assert "torch's ops serve instead" in warning and "\n" not in warning
    deadline = time.monotonic() + 5
    while not _gone(int(pid.read_text())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert _gone(int(pid.read_text()))
    if stage == "compile":
        assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [".lock"]


def test_a_failing_compiler_is_one_warning_line_and_leaves_nothing(tmp_path, src, monkeypatch):
    script = _script(tmp_path / "cc", 'echo "cc: error: boom" >&2\necho more >&2\nexit 1')
    monkeypatch.setenv("CC", str(script))
    library, warning = _load(tmp_path / "native", src)
    assert library is None and warning == ("ttx's CPU kernels did not build (cc: error: boom); "
                                           "torch's ops serve instead")
    assert sorted(p.name for p in (tmp_path / "native").iterdir()) == [".lock"]
    monkeypatch.setenv("TTX_NATIVE_TIMEOUT", "soon")
    assert "TTX_NATIVE_TIMEOUT='soon' is not a positive number" in _load(tmp_path / "n2", src)[1]


def test_a_build_killed_with_sigkill_leaves_temporaries_the_next_build_removes(tmp_path, src, cc,
                                                                                monkeypatch):
    folder = tmp_path / "native"
    pid = tmp_path / "pid"
    # writes its -o output, then hangs: the ttx process is killed in the middle of its build
    slow = _script(tmp_path / "slowcc", f'echo $$ > "{pid}"\n'
                   'while [ "$1" != "-o" ]; do shift; done\necho half > "$2"\nexec sleep 60')
    code = ("import sys; from pathlib import Path; from ttx.engines.cpu import native; "
            f"native.load('kernels', Path({str(src)!r}), {FLAGS!r}, ('ttx_probe',), Path({str(folder)!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], env={**os.environ, "CC": str(slow),
                                                               "PYTHONPATH": str(REPO)})
    deadline = time.monotonic() + 20
    while not list(folder.glob(".build-*.so")) and time.monotonic() < deadline:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    os.killpg(int(pid.read_text()), signal.SIGKILL)   # the orphaned compiler (its own group)
    left = [p.name for p in folder.glob(".build-*")]
    assert left and all(f".build-{proc.pid}-" in name for name in left)
    old = folder / "tmpab12cd34.so"                  # ttx before issue 33 named them so
    old.write_bytes(b"half")
    os.utime(old, (time.time() - 7200,) * 2)
    keep = folder / "notes.txt"
    keep.write_text("mine")
    library, warning = _load(folder, src)
    assert warning is None and library.ttx_probe() == 42
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        [".lock", "notes.txt", _name(src), _name(src) + ".sha256"])


def test_concurrent_first_builds_compile_once(tmp_path, src, cc, monkeypatch):
    slow = _script(tmp_path / "slowcc", f'sleep 0.5\nexec "{cc.path}" "$@"')
    folder = tmp_path / "native"
    code = ("from pathlib import Path; from ttx.engines.cpu import native; "
            f"lib, w = native.load('kernels', Path({str(src)!r}), {FLAGS!r}, ('ttx_probe',), "
            f"Path({str(folder)!r})); print(lib.ttx_probe(), w)")
    env = {**os.environ, "CC": str(slow), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              text=True) for _ in range(2)]
    assert [p.communicate(timeout=60)[0] for p in procs] == ["42 None\n"] * 2
    assert cc.builds() == 1


def test_older_builds_of_the_same_kind_are_pruned(tmp_path, src, cc):
    folder = tmp_path / "native"
    folder.mkdir(mode=0o700)
    for i in range(6):
        old = folder / f"kernels-{i:016x}.so"
        old.write_bytes(b"old")
        _record(old)
        os.utime(old, (time.time() - 1000 + i,) * 2)
    (folder / "other-1.so").write_bytes(b"another kind")
    _load(folder, src)
    kept = sorted(p.name for p in folder.glob("kernels-*.so"))
    assert kept == sorted([_name(src)] + [f"kernels-{i:016x}.so" for i in (3, 4, 5)])
    assert sorted(p.name for p in folder.glob("*.sha256")) == sorted(k + ".sha256" for k in kept)
    assert (folder / "other-1.so").exists()


# The real kernels (ttx/engines/cpu/kernels.c) through kernels._library, as the hf engine loads them.

@pytest.fixture()
def fresh_kernels(monkeypatch, tmp_path):
    if torch.backends.cpu.get_cpu_capability() not in ("AVX2", "AVX512"):
        pytest.skip("a CPU without AVX2")
    monkeypatch.delenv("CC", raising=False)
    monkeypatch.delenv("TTX_NATIVE", raising=False)
    monkeypatch.setenv("TTX_HOME", str(tmp_path / "home"))
    kernels._library.cache_clear()
    yield tmp_path / "home" / "native"
    kernels._library.cache_clear()                   # later tests load their own


def _kernels_name():
    return native.library_name("kernels", native.compiler(), kernels.SOURCE, kernels.FLAGS)


def test_the_kernels_refuse_a_planted_library_in_a_world_writable_home(fresh_kernels, tmp_path,
                                                                       caplog):
    fresh_kernels.mkdir(parents=True)
    marker = tmp_path / "ran"
    _planted(fresh_kernels / _kernels_name(), marker)
    fresh_kernels.chmod(0o777)
    with caplog.at_level(logging.WARNING, logger="ttx.engines.cpu.kernels"):
        assert kernels.available()
    assert not marker.exists()
    [record] = [r for r in caplog.records if r.name == "ttx.engines.cpu.kernels"]
    assert "writable by group or others (mode 777)" in record.getMessage()
    gate_up = torch.randn(3, 8)
    torch.testing.assert_close(kernels.silu_mul(gate_up),
                               torch.nn.functional.silu(gate_up[:, :4]) * gate_up[:, 4:])


def test_the_kernels_rebuild_a_library_without_their_symbols(fresh_kernels, tmp_path, caplog):
    fresh_kernels.mkdir(parents=True, mode=0o700)
    _planted(fresh_kernels / _kernels_name(), tmp_path / "ran", symbol=False)
    with caplog.at_level(logging.WARNING, logger="ttx.engines.cpu.kernels"):
        assert kernels.available()                   # no AttributeError
    assert not [r for r in caplog.records if r.name == "ttx.engines.cpu.kernels"]
    gate_up = torch.randn(3, 8)
    torch.testing.assert_close(kernels.silu_mul(gate_up),
                               torch.nn.functional.silu(gate_up[:, :4]) * gate_up[:, 4:])


def test_ttx_native_0_turns_the_kernels_off_and_builds_nothing(fresh_kernels, monkeypatch):
    monkeypatch.setenv("TTX_NATIVE", "0")
    assert not kernels.available()
    assert not fresh_kernels.exists()
