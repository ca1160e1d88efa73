"""Deterministic bundle archives: the same folder contents give the same zip bytes.

Sorted names, fixed timestamps and modes, written through the one atomic writer.
Torch-free (standard library only). Reading zips is :mod:`rnnexport.bundle.reader`'s job.
"""

from __future__ import annotations

import os
import stat
import zipfile
from pathlib import Path
from typing import IO

from rnnexport.core.errors import BundleError
from rnnexport.core.io import atomic_write

__all__ = ["write_zip"]

_EPOCH = (1980, 1, 1, 0, 0, 0)


def write_zip(folder: str | os.PathLike[str], archive: str | os.PathLike[str]) -> int:
    """Zip every file under ``folder`` into ``archive``, reproducibly and atomically.

    Returns:
        The archive's size in bytes.
    """
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file())

    def write(handle: IO[bytes]) -> None:
        with zipfile.ZipFile(handle, "w") as zf:
            for path in files:
                info = zipfile.ZipInfo(path.relative_to(folder).as_posix(), date_time=_EPOCH)
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.create_system = 3
                zf.writestr(info, path.read_bytes(), compresslevel=9)

    return atomic_write(archive, write, "bundle archive", BundleError)
