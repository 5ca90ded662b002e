"""Writing so that readers see the old or the new version, never a half-written one: the one
mechanism every product, pointer and cache file goes through. A file or folder is written under a
hidden temporary sibling and moved into place in one step when complete; what a killed writer left
is recognised by the pid in its name and removed by the next writer."""

from __future__ import annotations

import contextlib
import ctypes
import os
import re
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path


def _tmp_name(final: Path, kind: str) -> Path:
    return final.with_name(f".{final.name}-{kind}-{os.getpid()}-{uuid.uuid4().hex[:8]}")


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of `path` to write (it keeps the suffix, for writers that add one); moved
    over `path` in one step when the block ends without an error, else removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}-tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


_AT_FDCWD, _RENAME_EXCHANGE = -100, 2


def _exchange(a: Path, b: Path) -> bool:
    """Swap two existing paths in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system or file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    return renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0


def is_published(folder: Path) -> bool:
    """A partition folder readers may use: not an in-progress or replaced one (hidden names)."""
    return folder.is_dir() and not folder.name.startswith(".")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _remove_leftovers(final: Path) -> None:
    """Folders that writers of `final` killed on this machine left behind (their pid is in the name)."""
    pattern = re.compile(rf"\.{re.escape(final.name)}-(?:tmp|old)-(\d+)-[0-9a-f]{{8}}")
    for folder in final.parent.glob(f".{final.name}-*"):
        match = pattern.fullmatch(folder.name)
        if match and not _alive(int(match.group(1))):
            shutil.rmtree(folder, ignore_errors=True)


@contextlib.contextmanager
def temporary_sibling(final: Path) -> Iterator[Path]:
    """A fresh hidden folder beside `final`, named by this process (so the next writer removes it
    if this one is killed), removed when the block ends."""
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(final)
    tmp = _tmp_name(final, "tmp")
    tmp.mkdir()
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@contextlib.contextmanager
def atomic_directory(final: Path) -> Iterator[Path]:
    """Yield a fresh temporary sibling of `final`; on success it replaces `final`, on error it vanishes
    (and what a killed writer left is removed by the next one)."""
    with temporary_sibling(final) as tmp:
        yield tmp
        if final.exists() and _exchange(tmp, final):
            return  # the old partition is now at `tmp`, removed on leaving
        old = _tmp_name(final, "old")
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
