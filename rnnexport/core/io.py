"""Writing files the safe way: the one atomic writer every command uses.

A file is written to a unique temporary file beside its target, flushed and
fsynced, given the permissions a plain ``open()`` would give it under the
process umask, and renamed over the target. An interrupted write leaves the
target as it was (and at worst a ``.NAME.*.tmp`` file, which
:func:`remove_stale` clears). A folder is built beside its target and swapped in
whole (:func:`temp_folder`, :func:`swap_in`). Work folders that belong to no output (an
engine's copy of a graph, a browser profile) are made in the system's temporary folder by
:func:`scratch_folder`, named after the process, so that a later run removes those of a
process that was killed.

The output-path policy lives here too, for every command that writes: no output is one of
the command's inputs, holds one or lies inside one, no two outputs of a call are the same
path (:func:`refuse_overwrite`), and ``--force`` replaces only what the command itself
makes (:func:`check_replaceable`). Torch-free (standard library only).
"""

from __future__ import annotations

import contextlib
import os
import re
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO

from rnnexport.core.errors import OutputError, RnnexportError

__all__ = ["atomic_write", "check_replaceable", "check_writable", "file_mode", "folder_mode", "refuse_overwrite",
           "remove_stale", "remove_stale_scratch", "scratch_folder", "swap_in", "temp_folder"]

Writer = Callable[[IO[bytes]], None]
_TEMP = re.compile(r"^\..+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(tmp|probe|tmpdir)$")
#: Work folders in the system's temporary folder: only rnnexport's own names are ever removed there.
_SCRATCH = re.compile(r"^\.rnnexport-[a-z]+\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.tmpdir$")


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)  # no /proc: read it by setting it, and put it back at once
    os.umask(mask)
    return mask


def file_mode() -> int:
    """What ``open(path, "w")`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def folder_mode() -> int:
    """What ``mkdir`` would give a new folder under the current umask."""
    return 0o777 & ~_umask()


def _prefix(path: Path) -> str:
    return f".{path.name}.{os.getpid()}."


def check_writable(path: str | os.PathLike[str], what: str = "output",
                   error: type[RnnexportError] = OutputError) -> Path:
    """``path`` as a Path, after checking early (before slow work) that it can be written.

    Raises:
        ``error``: ``path`` is a folder or another non-regular file, its folder is
            missing, or the folder is not writable. The message says what to do.
    """
    path = Path(path)
    if path.is_dir():
        raise error(f"{what} path {path} is a directory; give a file name such as {path / 'out'}")
    if path.exists() and not path.is_file():
        raise error(f"{what} path {path} exists and is not a regular file; choose another path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise error(f"cannot write {what} {path}: folder {folder} does not exist; create it first")
    try:
        fd, probe = tempfile.mkstemp(prefix=_prefix(path), suffix=".probe", dir=folder)
    except OSError as e:
        raise error(f"cannot write {what} {path}: {e.strerror}; choose a writable output path") from e
    os.close(fd)
    os.unlink(probe)
    return path


def refuse_overwrite(outputs: Iterable[tuple[str, str | os.PathLike[str]]],
                     inputs: Iterable[tuple[str, str | os.PathLike[str]]],
                     error: type[RnnexportError] = OutputError,
                     allowed: tuple[str, str | os.PathLike[str]] | None = None) -> None:
    """Refuse outputs that would write over the command's own inputs or over each other.

    Args:
        outputs: ``(what, path)`` for every path the call writes (``what`` names it in messages:
            ``"output path"``, ``"--json"``, ...).
        inputs: ``(what, path)`` for every file or folder the call reads that exists.
        allowed: ``(what, path)``: the output ``what`` may replace the input file ``path`` (a state
            file updated in place: read first, then written atomically).

    Raises:
        ``error``: an output is an input, holds one (a folder), or lies inside an input folder;
            or two outputs are the same path.
    """
    seen: dict[Path, str] = {}
    given = [(what, Path(path), Path(path).resolve()) for what, path in inputs if Path(path).exists()]
    for what, path in outputs:
        target = Path(path).resolve()
        if target in seen:
            raise error(f"{what} {path} is also {seen[target]}: each output needs its own path")
        seen[target] = f"{what} {path}"
        for source_what, source, resolved in given:
            if allowed is not None and allowed[0] == what and Path(allowed[1]).resolve() == target == resolved:
                continue
            if target == resolved or resolved in target.parents or target in resolved.parents:
                raise error(f"{what} {path} would overwrite {source}, {source_what} of this command; "
                            "choose another path")


def check_replaceable(path: Path, force: bool, is_ours: Callable[[Path], bool], kind: str,
                      error: type[RnnexportError] = OutputError) -> None:
    """Allow writing ``path`` when it is new, or with ``force`` when it holds ``kind`` (what the command makes).

    What a killed earlier run left beside ``path`` is removed first (:func:`remove_stale`); when
    that was part of this output (a bundle whose ``.zip`` was being written), the refusal says so.

    Raises:
        ``error``: ``path`` exists without ``force``, or is a link or something other than ``kind``.
    """
    folder = path.parent if str(path.parent) else Path(".")
    unfinished = [p.name for p in remove_stale(folder) if p.name.startswith(f".{path.name}.")]
    if not path.exists() and not path.is_symlink():
        return
    if not force:
        if unfinished:
            raise error(f"{path} already exists, from an earlier run that was interrupted before it finished "
                        f"(its unfinished {unfinished[0]} was removed); pass --force to replace it, or remove it")
        raise error(f"{path} already exists; remove it or pass --force to replace it")
    if path.is_symlink() or not is_ours(path):
        raise error(f"{path} exists and is not {kind}: --force replaces only {kind}; remove it yourself or "
                    "choose another path")


def swap_in(built: Path, target: Path) -> None:
    """Move the finished folder ``built`` to ``target``, replacing an old one there in one rename."""
    if not target.exists():
        os.replace(built, target)
        return
    import shutil

    old = temp_folder(target)
    os.replace(target, old / target.name)
    os.replace(built, target)
    shutil.rmtree(old, ignore_errors=True)


def atomic_write(path: str | os.PathLike[str], data: bytes | Writer, what: str = "output",
                 error: type[RnnexportError] = OutputError) -> int:
    """Write ``data`` (bytes, or a function that writes to a binary file) to ``path`` atomically.

    Returns:
        The number of bytes written.

    Raises:
        ``error``: the path cannot be written (see :func:`check_writable`).
    """
    path = check_writable(path, what, error)
    folder = path.parent if str(path.parent) else Path(".")
    remove_stale(folder)
    try:
        fd, tmp = tempfile.mkstemp(prefix=_prefix(path), suffix=".tmp", dir=folder)
    except OSError as e:
        raise error(f"cannot write {what} {path}: {e.strerror}; choose a writable output path") from e
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, (bytes, bytearray, memoryview)):
                f.write(data)
            else:
                data(f)
            f.flush()
            os.fsync(f.fileno())
            size = f.tell()
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        if isinstance(e, OSError):
            raise error(f"cannot write {what} {path}: {e.strerror}; choose a writable output path") from e
        raise
    _fsync_folder(folder)
    return size


def _fsync_folder(folder: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temp_folder(target: Path, error: type[RnnexportError] = OutputError) -> Path:
    """A new, uniquely named folder beside ``target`` to build it in (made with the umask's mode).

    Raises:
        ``error``: the folder cannot be made there (missing or read-only parent).
    """
    folder = target.parent if str(target.parent) else Path(".")
    remove_stale(folder)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmpdir", dir=folder))
    except OSError as e:
        raise error(f"cannot create {target}: {e.strerror}; choose a writable folder") from e
    os.chmod(tmp, folder_mode())
    return tmp


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files and folders this module left in ``folder`` from processes now dead.

    Returns:
        What was removed.
    """
    return _remove_dead(folder, _TEMP)


def _remove_dead(folder: str | os.PathLike[str], pattern: re.Pattern[str]) -> list[Path]:
    """Delete the entries of ``folder`` whose name matches ``pattern`` and names a dead process (``pid``)."""
    import shutil

    removed: list[Path] = []
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return removed
    for entry in entries:
        match = pattern.match(entry.name)
        if match is None or _alive(int(match["pid"])):
            continue
        path = Path(entry.path)
        with contextlib.suppress(OSError):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
            removed.append(path)
    return removed


def scratch_folder(kind: str) -> Path:
    """A new private work folder in the system's temporary folder, ``.rnnexport-KIND.PID.*.tmpdir``.

    The caller removes it when done; those of processes that ended without removing theirs
    (killed) are removed here first.

    Raises:
        OutputError: the temporary folder cannot be written.
    """
    if not re.fullmatch(r"[a-z]+", kind):
        raise ValueError(f"scratch folder kind must be lowercase letters, got {kind!r}")
    root = tempfile.gettempdir()
    remove_stale_scratch(root)
    try:
        return Path(tempfile.mkdtemp(prefix=f".rnnexport-{kind}.{os.getpid()}.", suffix=".tmpdir", dir=root))
    except OSError as e:
        raise OutputError(f"cannot create a work folder in {root}: {e.strerror}; set TMPDIR to a writable "
                          "folder") from e


def remove_stale_scratch(root: str | os.PathLike[str] | None = None) -> list[Path]:
    """Delete the :func:`scratch_folder` folders of processes now dead (in ``root``, default the temporary folder)."""
    return _remove_dead(root or tempfile.gettempdir(), _SCRATCH)
