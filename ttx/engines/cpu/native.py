"""Build, cache and load a C library safely (ttx's CPU kernels, ttx.engines.cpu.kernels).

A cached library is native code that runs inside every ttx process, so nothing is loaded from a
folder someone else could write: the cache folder must be owned by the effective user and not
writable by group or others (ssh's StrictModes rule); ttx creates it with mode 0700. Each build
records its library's SHA-256 in a sidecar file (`<name>.sha256`), and a library is loaded only
from an open file descriptor whose bytes match it (`/proc/self/fd/N`: what was hashed is what
dlopen maps). A missing, corrupt, foreign or symbol-less library is rebuilt once, under a lock
(`.lock`, flock), after removing the temporaries (`.build-<pid>-<hex>.*`) a killed build left.
When the folder itself is refused, the library is built in a private temporary folder for this
process only. The compiler runs with a time limit (TTX_NATIVE_TIMEOUT seconds, default 120).
Standard library only, so a test can run it in a bare subprocess.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import hashlib
import logging
import os
import re
import secrets
import shutil
import signal
import stat
import subprocess
import tempfile
import time
from pathlib import Path

KEEP = 4                           # builds of one kind kept in the folder (newest first)
_TEMP = re.compile(r"\.build-\d+-[0-9a-f]+\.(so|sha256)\Z")
_LEGACY_TEMP = re.compile(r"tmp[a-z0-9_]{8}\.so\Z")   # mkstemp's names, ttx before issue 33
_HELD: list[int] = []              # fds of loaded libraries: kept open, so no later
                                   # /proc/self/fd/N name matches one glibc already loaded
log = logging.getLogger(__name__)


class BuildError(Exception):
    """The compiler failed, hung, or built a library that does not load."""


class Unsafe(Exception):
    """A folder or file that another user could have written."""


def time_limit() -> float:
    value = os.environ.get("TTX_NATIVE_TIMEOUT", "120")
    try:
        limit = float(value)
    except ValueError:
        limit = 0
    if not limit > 0:
        raise BuildError(f"TTX_NATIVE_TIMEOUT={value!r} is not a positive number of seconds")
    return limit


def compiler() -> str | None:
    return os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")


def _run(cmd: list[str], limit: float) -> str:
    """cmd's stdout; BuildError when it fails or runs past `limit` seconds (then its whole
    process group is killed: gcc's cc1, as and ld run under the driver)."""
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, errors="replace",
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=limit)
    except BaseException as exc:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        if isinstance(exc, subprocess.TimeoutExpired):
            raise BuildError(f"{cmd[0]} ran longer than {limit:g} s (TTX_NATIVE_TIMEOUT)") \
                from None
        raise
    if proc.returncode:
        lines = err.strip().splitlines()
        raise BuildError(lines[0] if lines else f"{cmd[0]} exited with {proc.returncode}")
    return out


def library_name(kind: str, cc: str, source: Path, flags: tuple[str, ...]) -> str:
    """`<kind>-<hash of the source, the flags and the compiler's version>.so`."""
    version = _run([cc, "--version"], time_limit())
    key = hashlib.sha256(source.read_bytes() + " ".join(flags).encode() + version.encode())
    return f"{kind}-{key.hexdigest()[:16]}.so"


def _check(st: os.stat_result, what: str) -> None:
    if st.st_uid != os.geteuid():
        raise Unsafe(f"{what} is owned by uid {st.st_uid}, not by this user ({os.geteuid()})")
    if st.st_mode & 0o022:
        raise Unsafe(f"{what} is writable by group or others (mode "
                     f"{stat.S_IMODE(st.st_mode):o})")


def _private_dir(path: Path) -> int:
    """An open fd on the folder `path` (created with mode 0700 when missing), checked."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        os.mkdir(path, 0o700)
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        _check(os.fstat(fd), str(path))
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open(dir_fd: int, name: str) -> int:
    """An fd on the regular file `name` in the folder, owned by us and by nobody else writable."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe(f"{name} is not a regular file")
        _check(st, name)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _read(fd: int) -> bytes:
    chunks, offset = [], 0
    while chunk := os.pread(fd, 1 << 20, offset):
        chunks.append(chunk)
        offset += len(chunk)
    return b"".join(chunks)


def _try_load(folder: Path, dir_fd: int, name: str,
              symbols) -> tuple[ctypes.CDLL | None, str | None]:
    """(the library, None), or (None, why not; None when there is none yet)."""
    try:
        side = _open(dir_fd, name + ".sha256")
    except FileNotFoundError:
        return None, (None if not _exists(dir_fd, name) else "has no recorded SHA-256")
    except (OSError, Unsafe) as exc:
        return None, f"has an unusable SHA-256 file ({exc})"
    try:
        recorded = _read(side).decode("ascii", "replace").strip()
    finally:
        os.close(side)
    try:
        fd = _open(dir_fd, name)
    except FileNotFoundError:
        return None, None
    except (OSError, Unsafe) as exc:
        return None, f"is not loadable ({exc})"
    if hashlib.sha256(_read(fd)).hexdigest() != recorded:
        os.close(fd)
        return None, "does not match its recorded SHA-256"
    # without /proc, by name in the folder checked above
    path = f"/proc/self/fd/{fd}" if os.path.isdir("/proc/self/fd") else str(folder / name)
    try:
        library = ctypes.CDLL(path)
    except OSError as exc:
        os.close(fd)
        return None, f"does not load ({str(exc).splitlines()[0]})"
    _HELD.append(fd)
    missing = [s for s in symbols if not hasattr(library, s)]
    if missing:
        return None, f"lacks {', '.join(missing)}"
    return library, None


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


@contextlib.contextmanager
def _lock(dir_fd: int, limit: float):
    fd = os.open(".lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                 dir_fd=dir_fd)
    try:
        deadline = time.monotonic() + limit
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise BuildError(f"another process held the build lock longer than "
                                     f"{limit:g} s (TTX_NATIVE_TIMEOUT)") from None
                time.sleep(0.05)
        yield
    finally:
        os.close(fd)                  # releases the lock


def _unlink(dir_fd: int, name: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(name, dir_fd=dir_fd)


def _clean(dir_fd: int) -> None:
    """Remove what killed builds left (run under the lock: no build is running now)."""
    for entry in os.listdir(dir_fd):
        if _TEMP.match(entry):
            _unlink(dir_fd, entry)
        elif _LEGACY_TEMP.match(entry):
            with contextlib.suppress(FileNotFoundError):
                if time.time() - os.stat(entry, dir_fd=dir_fd,
                                         follow_symlinks=False).st_mtime > 3600:
                    _unlink(dir_fd, entry)


def _prune(dir_fd: int, name: str) -> None:
    """Keep the KEEP newest builds of `name`'s kind (an old source's, another compiler's)."""
    kind = name.split("-")[0] + "-"
    builds = []
    for entry in os.listdir(dir_fd):
        if entry.startswith(kind) and entry.endswith(".so") and entry != name:
            with contextlib.suppress(FileNotFoundError):
                builds.append((os.stat(entry, dir_fd=dir_fd, follow_symlinks=False).st_mtime,
                               entry))
    for _, entry in sorted(builds, reverse=True)[KEEP - 1:]:
        _unlink(dir_fd, entry)
        _unlink(dir_fd, entry + ".sha256")


def _build(cc: str, source: Path, flags, folder: Path, dir_fd: int, name: str,
           limit: float) -> None:
    """Compile into a temporary, record its SHA-256, then rename both into place."""
    tag = f".build-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        # by path: the output is found again only through dir_fd (else the build fails)
        _run([cc, *flags, str(source), "-o", str(folder / (tag + ".so")), "-lm"], limit)
        fd = os.open(tag + ".so", os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
        try:
            os.fchmod(fd, 0o700)
            digest = hashlib.sha256(_read(fd)).hexdigest()
        finally:
            os.close(fd)
        fd = os.open(tag + ".sha256", os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                     | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
        try:
            os.write(fd, (digest + "\n").encode())
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tag + ".so", name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.replace(tag + ".sha256", name + ".sha256", src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        _unlink(dir_fd, tag + ".so")
        _unlink(dir_fd, tag + ".sha256")


def _load_in(folder: Path, dir_fd: int, cc: str, source: Path, flags, symbols,
             name: str) -> ctypes.CDLL:
    library, why = _try_load(folder, dir_fd, name, symbols)
    if library is not None:
        return library
    limit = time_limit()
    with _lock(dir_fd, limit):
        _clean(dir_fd)
        library, why = _try_load(folder, dir_fd, name, symbols)   # built meanwhile?
        if library is not None:
            return library
        if why is not None:
            log.debug("%s: %s %s; rebuilding it", folder, name, why)
        _unlink(dir_fd, name)
        _unlink(dir_fd, name + ".sha256")
        _build(cc, source, flags, folder, dir_fd, name, limit)
        library, why = _try_load(folder, dir_fd, name, symbols)
        if library is None:
            raise BuildError(f"the library just built {why}")
        _prune(dir_fd, name)
        return library


def load(kind: str, source: Path, flags: tuple[str, ...], symbols,
         folder: Path) -> tuple[ctypes.CDLL | None, str | None]:
    """(the library built from `source`, cached in `folder`, or None; a warning line or None).
    None without a warning when there is no compiler."""
    cc = compiler()
    if cc is None:
        return None, None
    try:
        name = library_name(kind, cc, source, flags)
    except (BuildError, OSError) as exc:
        return None, f"ttx's CPU kernels did not build ({exc}); torch's ops serve instead"
    try:
        dir_fd = _private_dir(folder)
    except (Unsafe, OSError) as exc:
        refused = str(exc) if isinstance(exc, Unsafe) else f"{folder}: {exc}"
    else:
        try:
            return _load_in(folder, dir_fd, cc, source, flags, symbols, name), None
        except (BuildError, Unsafe, OSError) as exc:
            return None, f"ttx's CPU kernels did not build ({exc}); torch's ops serve instead"
        finally:
            os.close(dir_fd)
    note = f"{refused}: ttx loads no native code from there"
    try:
        with tempfile.TemporaryDirectory(prefix="ttx-native-") as tmp:
            private = Path(tmp) / "native"
            dir_fd = _private_dir(private)
            try:
                library = _load_in(private, dir_fd, cc, source, flags, symbols, name)
            finally:
                os.close(dir_fd)
    except (BuildError, Unsafe, OSError) as exc:
        return None, f"{note}, and a private build failed ({exc}); torch's ops serve instead"
    return library, f"{note}; its CPU kernels were built privately for this process"
