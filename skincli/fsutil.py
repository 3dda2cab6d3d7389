"""Atomic file and folder writes (a crash never leaves a half-written artifact), file hashes,
the JSON encoder for numpy values, and the user cache folder."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from skincli.errors import SkinError


def _umask() -> int:
    """The process umask (reading it means setting it, so set it straight back)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _cannot_write(target: Path, exc: OSError) -> SkinError:
    """The one-line error for a target whose folder cannot be created or written."""
    return SkinError(f"Could not write {target}: {exc.strerror or exc}",
                     hint="Check the folder is writable and the disk has room")


def check_writable(target: str | os.PathLike[str], option: str = "--out") -> Path:
    """Fail before any long work if `target` (a file or folder to be written) cannot be.

    Creates the parent folder and a throw-away file in it: the same steps the atomic writes
    take at the end, so a read-only place is reported in the first second, not the last.
    """
    target = Path(target)
    for folder in target.parents:  # the nearest existing folder must be one, not a file
        if folder.exists():
            if not folder.is_dir():
                raise SkinError(f"Cannot write {option} {target}: {folder} is a file, not a "
                                "folder", hint=f"Choose another {option}")
            break
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".probe",
                                     dir=target.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise SkinError(f"Cannot write {option} {target}: {exc.strerror or exc}",
                        hint=f"Choose a writable {option}") from exc
    return target


@contextmanager
def atomic_path(target: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside `target`; rename it onto `target` only on success."""
    target = Path(target)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:  # e.g. a read-only place, or a file where a folder should be
        raise _cannot_write(target, exc) from exc
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600 files; give the artifact the permissions a normal write would.
        os.chmod(tmp_path, 0o666 & ~_umask())
        os.replace(tmp_path, target)
    except OSError as exc:
        tmp_path.unlink(missing_ok=True)
        raise _cannot_write(target, exc) from exc
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def write_text(target: str | os.PathLike[str], text: str) -> Path:
    """Write text atomically and return the path."""
    with atomic_path(target) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(target)


def write_json(target: str | os.PathLike[str], data: Any) -> Path:
    """Write JSON atomically (numpy scalars become plain numbers)."""
    return write_text(target, json.dumps(data, indent=2, default=json_default) + "\n")


def json_default(obj: Any) -> Any:
    """`json.dumps(..., default=json_default)`: numpy scalars and arrays become numbers and
    lists; anything else (paths, dates) its text, so a record is never lost to one odd value."""
    if hasattr(obj, "item") and getattr(obj, "ndim", 0) == 0:
        return obj.item()
    if hasattr(obj, "tolist"):
        return obj.tolist()
    return str(obj)


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file, read in 1 MB blocks (a large file never sits in memory whole)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def cache_dir() -> Path:
    """The user cache folder: $SKIN_CACHE_DIR, else $XDG_CACHE_HOME/skincli, else
    ~/.cache/skincli. Manifests, converted weights and TFLite models live below it."""
    env = os.environ.get("SKIN_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "skincli"


@contextmanager
def atomic_dir(target: str | os.PathLike[str], *, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder beside `target`; swap it into place only on success."""
    target = Path(target)
    if target.exists() and not overwrite:
        raise SkinError(f"{target} already exists", hint="Choose another name or remove it")
    if target.exists() and not target.is_dir():
        raise SkinError(f"{target} is a file, not a folder", hint="Choose another path")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    except OSError as exc:
        raise _cannot_write(target, exc) from exc
    try:
        yield tmp
        try:
            _swap_in(tmp, target)
        except OSError as exc:
            raise _cannot_write(target, exc) from exc
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _swap_in(tmp: Path, target: Path) -> None:
    """Move the finished folder onto `target`; an old `target` comes back if that fails."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except OSError:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)
