"""The record layer: every stage reads its JSONL input and writes its resumable output here.

`read_records` validates a whole input before any model loads: each bad line, missing or
mistyped field, duplicate id or undecodable byte is one TtxError naming file, line and field.

`Output` is an appendable JSONL output that is safe to share a folder with other runs:
  - it refuses to be one of the run's inputs (`-i f -o f` would destroy f);
  - it holds an exclusive lock while open: a second writer is refused with the holder's pid
    (`folder_lock` does the same for a stage's output folder);
  - `resume=True` repairs a torn last line (a killed writer), collects the keys of the records
    already written, and compares the run's fingerprint (the options that decide the records,
    and the inputs' hashes) with the manifest the first session wrote when it started: any
    difference is refused, naming the option (`force=True` continues anyway), and
    `check_existing` may refuse records made from input that has changed since;
  - a write that fails (a full disk) is one TtxError and leaves only whole records behind;
  - the manifest (`<output>.manifest.json`) is written when the run starts and again when it
    ends, with every session's start, end and summary.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ttx.errors import TtxError
from ttx.io import (
    STDIO,
    append_record,
    iter_jsonl,
    manifest_path,
    now_iso,
    repair_torn_tail,
    sha256_file,
)
from ttx.redact import redact_secrets


@dataclass
class Row:
    line: int            # 1-based line of the input file
    id: str              # the record's id field, else its line number
    data: dict


def read_records(path: str | os.PathLike, *, required: Sequence[str] = (),
                 strings: Sequence[str] = (), id_field: str = "id", limit: int | None = None,
                 unique: bool = True, numbers_as_text: bool = False,
                 allow_empty: bool = False) -> list[Row]:
    """The validated records of a JSONL input (path or "-"), in file order.

    `required` fields must be present and not null; `strings` must be non-empty strings
    (`numbers_as_text`: a number is taken as its text); ids must differ (`unique`)."""
    rows: list[Row] = []
    seen: dict[str, int] = {}
    name = "<stdin>" if str(path) == STDIO else str(path)
    for line, record in iter_jsonl(path, required=required):
        for f in strings:
            value = record.get(f)
            if numbers_as_text and isinstance(value, (int, float)) and not isinstance(value, bool):
                record[f] = value = str(value)
            if value is None and f not in required:
                continue
            if not isinstance(value, str) or not value.strip():
                raise TtxError("expected a non-empty string", path=name, line=line, field=f)
        rid = record.get(id_field)
        rid = str(line) if rid is None else str(rid)
        if unique:
            if rid in seen:
                raise TtxError(f"duplicate id {rid!r} (first on line {seen[rid]})", path=name,
                               line=line, field=id_field)
            seen[rid] = line
        rows.append(Row(line, rid, record))
        if limit is not None and len(rows) >= limit:
            break
    if not rows and not allow_empty:
        raise TtxError("no records (the input is empty)", path=name)
    return rows


def read_problems(path: str | os.PathLike, *, question_field: str = "question",
                  id_field: str = "id", answer_field: str | None = None,
                  limit: int | None = None) -> list[dict]:
    """Problems as every stage that answers them reads them (tts-run, tlm-adapt): the question a
    non-empty string, the answer present where asked, `id` defaulting to the line number."""
    required = [question_field] + ([answer_field] if answer_field else [])
    rows = read_records(path, required=required, strings=[question_field], id_field=id_field,
                        limit=limit)
    return [{**row.data, "id": row.data.get(id_field, row.line)} for row in rows]


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name one file (hard links and symlinks included)."""
    if STDIO in (str(a), str(b)):
        return False
    pa, pb = Path(a), Path(b)
    try:
        if pa.exists() and pb.exists():
            return os.path.samefile(pa, pb)
    except OSError:
        pass
    return pa.resolve() == pb.resolve()


def refuse_overlap(output: str | os.PathLike, inputs: Iterable[str | os.PathLike],
                   option: str = "-o") -> None:
    """An output that is also an input would destroy it: refused before anything is read."""
    for item in inputs:
        if item is not None and same_file(output, item):
            raise TtxError(f"the output is also an input ({item}): writing it would destroy "
                           "the input; choose another output", path=str(output), field=option)


def refuse_outputs_overlap(outputs: dict[str, str | os.PathLike | None],
                           inputs: Iterable[str | os.PathLike | None]) -> None:
    """For stages that write whole files (score's --per-record and --plot, report's page): no
    output, nor the manifest written beside it, may be an input, an input's manifest (tts-run's
    resume state) or another output. Checked before anything is read or written."""
    ins = [str(i) for i in inputs if i is not None and str(i) != STDIO]
    theirs = [str(m) for m in map(manifest_path, ins) if m is not None]
    given = [(opt, str(p)) for opt, p in outputs.items() if p is not None and str(p) != STDIO]
    for k, (opt, out) in enumerate(given):
        mine = manifest_path(out)
        refuse_overlap(out, ins, opt)
        for other in theirs:
            if same_file(out, other):
                raise TtxError(f"the output is the manifest of an input ({other}): writing it "
                               "would lose that run's record of itself; choose another output",
                               path=out, field=opt)
        for item in [*ins, *theirs]:
            if same_file(mine, item):
                raise TtxError(f"the manifest written beside this output ({mine}) would replace "
                               f"{item}; choose another output", path=out, field=opt)
        for opt2, out2 in given[k + 1:]:
            if same_file(out, out2) or same_file(mine, out2) or same_file(out, manifest_path(out2)):
                raise TtxError(f"{opt} and {opt2} would write over each other", path=out,
                               field=opt)


def stage_fingerprint(options: dict, inputs: Iterable[str | os.PathLike] = (),
                      volatile: Iterable[str] = ()) -> dict:
    """What decides a stage's artefact: its options (less the volatile ones, which a resume may
    change) and its inputs' hashes (`input:<path>`), JSON-clean."""
    skip = set(volatile)
    out = {k: (list(v) if isinstance(v, tuple) else v) for k, v in options.items()
           if k not in skip and isinstance(v, (str, int, float, bool, list, tuple, type(None)))}
    out.update({f"input:{p}": h for p, h in fingerprint_inputs(inputs).items()})
    return out


def fingerprint_inputs(inputs: Iterable[str | os.PathLike]) -> dict[str, str | None]:
    return {str(p): (sha256_file(p) if p and Path(p).is_file() else None)
            for p in inputs if p is not None and str(p) != STDIO}


def content_digest(obj) -> str:
    """A short hash of JSON-like content (the records a run reads), whatever file held them."""
    text = json.dumps(obj, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def resumed_manifest(output: str, fp: dict, *, resume: bool, made: str, hint: str,
                     required: bool = True) -> dict | None:
    """The manifest of the run in an output folder that --resume continues (None: not resuming,
    or nothing to resume); a fingerprint differing from the one that run started with is refused,
    naming the option (a manifest without one is refused too unless `required=False`)."""
    if not resume:
        return None
    path = Path(output) / "ttx_manifest.json"
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        raise TtxError("cannot read the manifest of the run to resume", path=str(path)) from None
    if required or "fingerprint" in manifest:
        check_fingerprint(manifest.get("fingerprint") or {}, fp, path=output, made=made, hint=hint)
    return manifest


def check_fingerprint(before: dict, now: dict, *, path: str, made: str, hint: str) -> None:
    """Refuse a resume whose fingerprint differs from the one its output was made with, naming
    the first option that differs (one line)."""
    for name in sorted(set(before) | set(now)):
        if before.get(name) != now.get(name):
            raise TtxError(f"--resume with a different {_option(name)}: {made} with "
                           f"{before.get(name)!r}, this run has {now.get(name)!r} ({hint})",
                           path=path)


class Output:
    """An appendable, locked, resumable JSONL output (module docstring)."""

    def __init__(self, path: str | os.PathLike, *, stage: str, fingerprint: dict,
                 inputs: Sequence[str | os.PathLike] = (), resume: bool = False,
                 force: bool = False, key: Callable[[dict], object] | None = None,
                 check_existing: Callable[[list[dict]], None] | None = None):
        self.path = str(path)
        self.stage = stage
        self.fingerprint = fingerprint
        self.inputs = [str(i) for i in inputs if i is not None]
        self.key = key
        self.keys: set = set()
        self.existing: list[dict] = []
        self.started = now_iso()
        self._check_existing = check_existing
        self._fd: int | None = None
        self._open_ = False
        refuse_overlap(self.path, self.inputs)
        if self.path == STDIO:
            self._open_ = True
            return
        self._open(resume, force)

    # ------------------------------------------------------------------ opening
    def _open(self, resume: bool, force: bool) -> None:
        import fcntl

        p = Path(self.path)
        if p.exists() and not p.is_file():
            raise TtxError("the output exists and is not a regular file", path=self.path)
        try:
            p.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o666)
        except OSError as exc:
            raise TtxError(f"cannot write the output ({exc.strerror})", path=self.path) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            holder = _lock_holder(p)
            raise TtxError(f"another process{f' (pid {holder})' if holder else ''} is writing "
                           "this output; wait for it or choose another output",
                           path=self.path) from None
        self._fd, self._open_ = fd, True
        _write_holder(p)
        try:
            previous = _read_manifest(p)
            if resume and p.stat().st_size > 0:
                if not force:
                    self._check_resume(previous)
                repair_torn_tail(p)
                self.existing = _read_existing(p)
                if self._check_existing is not None and not force:
                    self._check_existing(self.existing)
                if self.key is not None:
                    self.keys = {self.key(r) for r in self.existing}
                self.sessions = (previous or {}).get("sessions", [])
            else:
                os.ftruncate(fd, 0)
                self.sessions = []
            self._manifest(status="running")
        except BaseException:
            self.close()                  # a refused resume leaves the output as it was
            raise

    def _check_resume(self, previous: dict | None) -> None:
        if previous is None:
            raise TtxError("--resume needs the manifest this output's first run wrote "
                           f"({manifest_path(self.path).name}); it is missing, so the options "
                           "of the records here are unknown (--force-resume continues anyway)",
                           path=self.path)
        # the manifest holds the fingerprint with URLs' credentials redacted: compare it so
        check_fingerprint(redact_secrets(previous.get("fingerprint") or {}),
                          redact_secrets(self.fingerprint), path=self.path,
                          made="the records here were made", hint="--force-resume mixes them")
        hashes = previous.get("input_hashes") or {}
        for path, digest in fingerprint_inputs(self.inputs).items():
            if path in hashes and digest is not None and hashes[path] != digest:
                raise TtxError(f"--resume: the input {path} changed since the records here were "
                               "made (--force-resume keeps the stale records)", path=self.path)

    # ------------------------------------------------------------------ writing
    def has(self, key) -> bool:
        return key in self.keys

    def write(self, record: dict) -> None:
        """Append one record, synced; a failed write (a full disk) is one TtxError and leaves
        the records before it whole (ttx.io.append_line)."""
        append_record(self._fd, record, self.path)
        if self.key is not None:
            self.keys.add(self.key(record))

    def close(self, summary: dict | None = None, options: dict | None = None) -> None:
        """Release the lock; with a summary, the run finished: the manifest says so."""
        if not self._open_:
            return
        self._open_ = False
        if self._fd is None:
            return
        try:
            if summary is not None:
                self._manifest(status="finished", summary=summary, options=options)
        finally:
            _clear_holder(Path(self.path))
            os.close(self._fd)            # closing the descriptor releases the flock
            self._fd = None

    def _manifest(self, status: str, summary: dict | None = None,
                  options: dict | None = None) -> None:
        from ttx.io import write_manifest

        session = {"started": self.started, "status": status,
                   **({"finished": now_iso(), "summary": summary} if summary is not None else {})}
        sessions = [*self.sessions, session]
        write_manifest(self.path, stage=self.stage, options=options or self.fingerprint,
                       inputs=self.inputs, started=self.sessions[0]["started"]
                       if self.sessions else self.started, summary=summary or {},
                       extra={"fingerprint": self.fingerprint, "status": status,
                              "input_hashes": fingerprint_inputs(self.inputs),
                              "sessions": sessions})

    def __enter__(self) -> "Output":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _option(name: str) -> str:
    return name if name.startswith(("-", "input", "model")) else "--" + name.replace("_", "-")


def _holder_path(p: Path) -> Path:
    return p.with_name(f".{p.name}.writer")


def _write_holder(p: Path) -> None:
    try:
        _holder_path(p).write_text(str(os.getpid()))
    except OSError:
        pass


def _clear_holder(p: Path) -> None:
    try:
        _holder_path(p).unlink()
    except OSError:
        pass


def _lock_holder(p: Path) -> str | None:
    try:
        return _holder_path(p).read_text().strip() or None
    except OSError:
        return None


@contextmanager
def folder_lock(folder: str | os.PathLike) -> Iterator[None]:
    """Hold an exclusive lock on an output folder while a stage writes it: `.<name>.lock` beside
    the folder (so --overwrite may empty or replace the folder), fcntl.flock, released when the
    holder exits or dies. A second writer is refused in one line with the holder's pid."""
    import fcntl

    target = Path(os.path.abspath(folder))
    lock = target.parent / f".{target.name}.lock"
    while True:
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as exc:
            raise TtxError(f"cannot lock the output folder ({exc.strerror})",
                           path=str(folder)) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.read(fd, 32).decode("ascii", "replace").strip()
            os.close(fd)
            raise TtxError(f"another process{f' (pid {holder})' if holder else ''} is writing "
                           "this output folder; wait for it or choose another output",
                           path=str(folder)) from None
        try:                              # the file may have been removed by the holder we
            current = os.stat(lock).st_ino    # waited behind: lock the one on disk now
        except OSError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, str(os.getpid()).encode())
    except OSError:
        pass
    try:
        yield
    finally:
        try:
            os.unlink(lock)               # while still held: a waiter sees another file, retries
        except OSError:
            pass
        os.close(fd)


def _read_manifest(p: Path) -> dict | None:
    target = manifest_path(p)
    if target is None or not target.is_file():
        return None
    try:
        return json.loads(target.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None


def _read_existing(p: Path) -> list[dict]:
    return [r for _, r in iter_jsonl(p)]
