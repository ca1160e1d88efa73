"""Deterministic bundle archives and safe extraction (standard library only).

The runtime imports this module too, so it must not import torch or onnx.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path, PurePosixPath

__all__ = ["MAX_TOTAL_BYTES", "UnsafeArchive", "safe_extract", "write_zip"]

#: Refuse archives that declare more than this many bytes once extracted.
MAX_TOTAL_BYTES = 4 * 1024**3
#: Refuse entries that expand more than this many times (a zip bomb's signature).
MAX_RATIO = 200
_EPOCH = (1980, 1, 1, 0, 0, 0)


class UnsafeArchive(Exception):
    """An archive that cannot be extracted safely; the message says why."""


def write_zip(folder: str | os.PathLike, archive: str | os.PathLike) -> None:
    """Zip every file under ``folder``: sorted names, fixed timestamps and modes.

    The same folder contents give the same bytes, whatever the file times or the
    order the file system lists them in. Writes through a temporary file.
    """
    folder, archive = Path(folder), Path(archive)
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    tmp = archive.with_name(f".{archive.name}.tmp")
    try:
        with zipfile.ZipFile(tmp, "w") as zf:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                zf.writestr(info, path.read_bytes(), compresslevel=9)
        os.replace(tmp, archive)
    finally:
        if tmp.exists():
            tmp.unlink()


def _check_entry(info: zipfile.ZipInfo) -> PurePosixPath:
    name = PurePosixPath(info.filename)
    if info.filename.startswith(("/", "\\")) or name.is_absolute() or ":" in name.parts[0]:
        raise UnsafeArchive(f"entry {info.filename!r} has an absolute path")
    if ".." in name.parts or "\\" in info.filename:
        raise UnsafeArchive(f"entry {info.filename!r} points outside the archive's folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise UnsafeArchive(f"entry {info.filename!r} is a symbolic link")
    if info.compress_size and info.file_size / info.compress_size > MAX_RATIO and info.file_size > 2**20:
        raise UnsafeArchive(f"entry {info.filename!r} expands {info.file_size / info.compress_size:.0f} times "
                            "(a zip bomb?)")
    return name


def safe_extract(archive: str | os.PathLike, destination: str | os.PathLike,
                 max_total_bytes: int = MAX_TOTAL_BYTES) -> None:
    """Extract ``archive`` into ``destination`` after checking every entry.

    Raises:
        UnsafeArchive: absolute or ``..`` paths, links, declared sizes over
            ``max_total_bytes``, or a compression ratio typical of zip bombs.
            Nothing is extracted then.
    """
    destination = Path(destination)
    try:
        zf = zipfile.ZipFile(archive)
    except (zipfile.BadZipFile, OSError) as e:
        raise UnsafeArchive(f"{archive} is not a readable zip archive: {e}") from e
    with zf:
        infos = zf.infolist()
        names = [_check_entry(info) for info in infos]
        total = sum(info.file_size for info in infos)
        if total > max_total_bytes:
            raise UnsafeArchive(f"archive declares {total} bytes once extracted, over the limit of "
                                f"{max_total_bytes}")
        written = 0
        for info, name in zip(infos, names):
            target = destination.joinpath(*name.parts)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            with zf.open(info) as src, open(target, "wb") as dst:
                while chunk := src.read(1 << 20):
                    written += len(chunk)
                    if written > max_total_bytes or written > total:
                        raise UnsafeArchive("archive expands past its declared sizes")
                    dst.write(chunk)
