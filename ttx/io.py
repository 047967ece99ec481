"""JSONL in and out (path or "-"), atomic writes, resumable appends and manifests."""

from __future__ import annotations

import datetime as _dt
import errno
import hashlib
import json
import os
import platform
import re
import sys
import tempfile
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from ttx.errors import TtxError

STDIO = "-"


def _display(path: str | os.PathLike) -> str:
    return "<stdin>" if str(path) == STDIO else str(path)


def iter_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> Iterator[tuple[int, dict]]:
    """Yield (line_number, record) for each non-blank line; bad lines raise TtxError.

    A truncated last line (an interrupted writer) is an error too: ttx never writes one.
    """
    name = _display(path)
    if str(path) == STDIO:
        handle = sys.stdin.buffer if hasattr(sys.stdin, "buffer") else sys.stdin
    else:
        p = Path(path)
        if not p.is_file():
            raise TtxError("no such file" if not p.exists() else "not a file", path=name)
        try:
            handle = open(p, "rb")
        except OSError as exc:
            raise TtxError(f"cannot read ({exc.strerror})", path=name) from None
    try:
        for lineno, raw in enumerate(handle, start=1):
            try:
                text = raw.decode("utf-8") if isinstance(raw, bytes) else raw
            except UnicodeDecodeError as exc:
                raise TtxError(f"not UTF-8 text (byte {exc.start + 1} of the line)", path=name,
                               line=lineno) from None
            if not text.strip():
                continue
            try:
                try:
                    record = json.loads(text, parse_int=_parse_int)
                    suspect = _SURROGATE_ESCAPE.search(text) is not None
                except _LongInteger:
                    record, suspect = json.loads(text), True
            except json.JSONDecodeError as exc:
                raise TtxError(f"not valid JSON ({exc.msg} at column {exc.colno})",
                               path=name, line=lineno) from None
            except ValueError:                 # Python's limit on an integer's digits
                raise TtxError("not usable JSON (an integer of more than 4,300 digits)",
                               path=name, line=lineno) from None
            except RecursionError:
                raise TtxError("not usable JSON (nested too deeply)", path=name,
                               line=lineno) from None
            if not isinstance(record, dict):
                raise TtxError("expected a JSON object", path=name, line=lineno)
            if suspect:
                bad = unusable_value(record)
                if bad is not None:
                    raise TtxError(bad[1], path=name, line=lineno, field=bad[0])
            for field in required:
                if record.get(field) is None:
                    raise TtxError("missing", path=name, line=lineno, field=field)
            yield lineno, record
    finally:
        if str(path) != STDIO:
            handle.close()


# What valid JSON can hold that no stage can use: a \uD800-\uDFFF escape that is not half of a
# pair decodes to a lone surrogate (no character: every write of it fails), and an integer of
# 309 digits or more may overflow a float. Only lines with one of those are walked.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")
_SURROGATE = re.compile("[\ud800-\udfff]")


class _LongInteger(Exception):
    pass


def _parse_int(text: str) -> int:
    if len(text) >= 309:               # 309 digits (a sign and 308) or more: may overflow
        raise _LongInteger
    return int(text)


def unusable_value(obj: Any) -> tuple[str, str] | None:
    """(field, problem) of the first lone surrogate or float-overflowing integer in a parsed JSON
    value, the field written as `traces[0].text`; None if there is none."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        where, value = stack.pop()
        if isinstance(value, str):
            found = _SURROGATE.search(value)
            if found:
                return where or "(value)", (f"a lone surrogate ({ascii(found.group())[1:-1]}) "
                                            "in the text: not a character, so never writable")
        elif isinstance(value, int) and not isinstance(value, bool):
            try:
                float(value)
            except OverflowError:
                return where or "(value)", (f"a number of {len(str(abs(value)))} digits, "
                                            "too large for any count or score")
        elif isinstance(value, dict):
            for k in reversed(list(value)):
                key = safe_text(str(k))
                if key != k:
                    return (f"{where}.{key}" if where else key), ("a lone surrogate in the key: "
                                                                  "not a character")
                stack.append((f"{where}.{k}" if where else k, value[k]))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", v) for i, v in reversed(list(enumerate(value))))
    return None


def safe_text(text: str) -> str:
    """The text with each lone surrogate written as its escape (\\ud800): printable."""
    return _SURROGATE.sub(lambda m: ascii(m.group())[1:-1], text)


def read_jsonl(path: str | os.PathLike, required: Sequence[str] = ()) -> list[dict]:
    return [record for _, record in iter_jsonl(path, required)]


def repair_torn_tail(path: Path) -> None:
    """Cut a last line without its newline (left by a killed writer on a non-atomic filesystem)."""
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        os.truncate(path, data.rfind(b"\n") + 1)   # in place: complete lines are never rewritten


def resume_log(path: str | os.PathLike, keep: Callable[[dict], bool] | None = None) -> list[dict]:
    """The rows of a log that a resumed run continues (one helper for every stage's logs): a
    torn last line is cut, a malformed whole line is refused (naming file and line), and with
    `keep` the rows it rejects (past the checkpoint resumed from) are dropped from the file."""
    path = Path(path)
    if not path.exists():
        return []
    repair_torn_tail(path)
    rows = read_jsonl(path)
    if keep is not None:
        kept = [r for r in rows if keep(r)]
        if len(kept) != len(rows):
            write_jsonl(path, kept)
        rows = kept
    return rows


def append_line(fd: int, line: str, path: str | os.PathLike, sync: bool = True) -> None:
    """Append one whole line to an O_APPEND descriptor and (`sync`) fsync it. A write that fails part way
    (a full disk, a file-size limit) is cut off again, so the file keeps only whole lines, and
    the failure is one TtxError naming the file: what was written before stays, resumable."""
    data = line.encode("utf-8")
    start = os.lseek(fd, 0, os.SEEK_END)
    done = 0
    try:
        while done < len(data):
            n = os.write(fd, data[done:])
            if n <= 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            done += n
        if sync:
            os.fsync(fd)
    except OSError as exc:
        try:
            os.ftruncate(fd, start)           # no torn last line
        except OSError:
            pass
        raise TtxError(f"cannot write ({exc.strerror or exc}): the records written before are "
                       "intact; free some space, then rerun with --resume", path=str(path)) from None


def append_record(fd: int | None, record: dict, path: str | os.PathLike) -> None:
    """One JSONL record: to stdout when `fd` is None, else whole and synced (append_line)."""
    line = json.dumps(record, ensure_ascii=False) + "\n"
    if fd is None:
        sys.stdout.write(line)
        sys.stdout.flush()
    else:
        append_line(fd, line, path)


class JsonlAppender:
    """Append records one by one, each synced whole, so an interrupted run can resume."""

    def __init__(self, path: str | os.PathLike, *, resume: bool = False):
        self.path = str(path)
        self._fd: int | None = None
        if self.path != STDIO:
            p = Path(path)
            try:
                p.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND
                                   | (0 if resume else os.O_TRUNC), 0o666)
            except OSError as exc:
                raise TtxError(f"cannot write ({exc.strerror})", path=self.path) from None

    def write(self, record: dict) -> None:
        append_record(self._fd, record, self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "JsonlAppender":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    Only a regular file is replaced: a symlink is written through (its target is replaced), and
    a device or FIFO is written directly (a temporary file is filled, then copied into it). The
    new file gets the mode a plain open() would give (an existing file keeps its mode)."""
    target = Path(os.path.realpath(path))
    if target.exists() and not target.is_file():
        with _direct(target) as tmp:
            yield tmp
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise TtxError(f"cannot write ({exc.strerror})", path=str(path)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        mode = (target.stat().st_mode & 0o7777) if target.exists() else (0o666 & ~_umask())
        os.chmod(tmp, mode)
        os.replace(tmp, target)
    except OSError as exc:
        raise TtxError(f"cannot write ({exc.strerror})", path=str(path)) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


@contextmanager
def _direct(target: Path) -> Iterator[Path]:
    """A temporary file whose bytes go into a device or FIFO once the block succeeds."""
    import shutil

    fd, tmp = tempfile.mkstemp(prefix="ttx-", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        try:
            with open(tmp, "rb") as src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except OSError as exc:
            raise TtxError(f"cannot write ({exc.strerror})", path=str(target)) from None
    finally:
        os.unlink(tmp)


def plain_modes(folder: str | os.PathLike) -> None:
    """Give the safetensors files under a folder the mode a plain open() gives (0666 less the
    umask), as their JSON beside them has: safetensors writes them 0600."""
    mode = 0o666 & ~_umask()
    for path in Path(folder).rglob("*.safetensors"):
        try:
            if path.is_file() and not path.is_symlink():
                os.chmod(path, mode)
        except OSError:
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def output_dir(path: str | os.PathLike, *, resume: bool = False, overwrite: bool = False,
               own: Sequence[str] = (), stage: str = "this stage", empty: bool = True) -> Path:
    """The folder a stage writes its artefact into, by one rule for every stage: a file there is
    refused; a folder that holds something is refused unless --resume continues its run or
    --overwrite replaces it (emptied here, after the inputs were read, unless `empty=False`: the
    caller empties it later). With `own` (names the stage writes), a folder holding none of them
    is neither resumed nor deleted: --overwrite never removes what another tool wrote."""
    import shutil

    out = Path(path)
    if out.exists() and not out.is_dir():
        raise TtxError("exists and is not a folder", path=str(out))
    if not out.is_dir() or not any(out.iterdir()):
        return out
    ours = not own or any((out / name).exists() for name in own)
    if resume:
        if not ours:
            raise TtxError(f"holds nothing {stage} writes: there is no run here to resume; "
                           "choose another -o", path=str(out))
        return out
    if not overwrite:
        raise TtxError("exists and is not empty: --resume continues its run, --overwrite "
                       "replaces it, or choose another folder", path=str(out))
    if not ours:
        raise TtxError(f"holds nothing {stage} writes ({', '.join(own)}): not deleting it; "
                       "remove it yourself or choose another -o", path=str(out))
    if empty:
        try:
            shutil.rmtree(out)
        except OSError as exc:
            raise TtxError(f"cannot empty the output folder ({exc.strerror})", path=str(out)) from None
    return out


def write_json(path: str | os.PathLike, obj: Any) -> None:
    # a path or argument that is not UTF-8 holds lone surrogates (Python's surrogateescape):
    # written as JSON escapes, they read back as the same string
    text = safe_text(json.dumps(obj, indent=2, ensure_ascii=False)) + "\n"
    if str(path) == STDIO:
        sys.stdout.write(text)
        return
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_jsonl(path: str | os.PathLike, records: Sequence[dict]) -> None:
    if str(path) == STDIO:
        for r in records:
            sys.stdout.write(json.dumps(r, ensure_ascii=False) + "\n")
        return
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for r in records:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")


def json_safe(obj: Any) -> Any:
    """The object with every NaN or infinite float replaced by None (JSON has neither)."""
    import math

    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def sha256_file(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def manifest_path(output: str | os.PathLike) -> Path | None:
    """`<file>.manifest.json` beside a file, `ttx_manifest.json` inside a folder, None for stdout."""
    if str(output) == STDIO:
        return None
    p = Path(output)
    return p / "ttx_manifest.json" if p.is_dir() else p.with_name(p.name + ".manifest.json")


def write_manifest(output: str | os.PathLike, *, stage: str, options: dict, inputs: Sequence[str],
                   started: str, summary: dict | None = None,
                   extra: dict | None = None) -> Path | None:
    """Record what produced an artifact: version, stage, resolved options, input hashes, metrics.
    URLs in it lose their credentials (ttx.redact)."""
    from ttx import __version__
    from ttx.redact import redact_secrets

    target = manifest_path(output)
    if target is None:
        return None
    hashed = []
    for item in inputs:
        p = Path(item)
        hashed.append({"path": str(item),
                       "sha256": sha256_file(p) if p.is_file() else None})
    write_json(target, redact_secrets({       # no credential of a URL (--base-url) is stored
        "ttx_version": __version__,
        "stage": stage,
        "options": options,
        "inputs": hashed,
        "started": started,
        "finished": now_iso(),
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count()},
        "summary": summary or {},
        **(extra or {}),
    }))
    return target
