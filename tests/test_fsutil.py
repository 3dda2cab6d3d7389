"""Atomic writes: a place that cannot be written is one SkinError, never a raw OSError."""

from __future__ import annotations

from pathlib import Path

import pytest

from skincli.errors import SkinError
from skincli.fsutil import atomic_dir, check_writable, write_json


@pytest.fixture()
def blocker(tmp_path: Path) -> Path:
    """A file where a folder would have to be (fails for root too, unlike chmod)."""
    path = tmp_path / "afile"
    path.write_text("x")
    return path


def test_write_under_a_file_is_a_skin_error(blocker: Path) -> None:
    with pytest.raises(SkinError, match="Could not write"):
        write_json(blocker / "sub" / "x.json", {"a": 1})


def test_atomic_dir_under_a_file_is_a_skin_error(blocker: Path) -> None:
    with pytest.raises(SkinError, match="Could not write"), atomic_dir(blocker / "report"):
        pass


def test_atomic_dir_onto_a_file_is_refused_and_the_file_kept(blocker: Path) -> None:
    with pytest.raises(SkinError, match="is a file, not a folder"), atomic_dir(blocker):
        pass
    assert blocker.read_text() == "x"


def test_failed_swap_puts_the_old_folder_back(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    import os

    target = tmp_path / "report"
    target.mkdir()
    (target / "old.txt").write_text("old")
    real_replace = os.replace

    def replace(src: object, dst: object) -> None:
        if Path(str(dst)) == target and ".tmp" in Path(str(src)).name:
            raise OSError(28, "No space left on device")
        real_replace(src, dst)  # type: ignore[arg-type]

    monkeypatch.setattr("skincli.fsutil.os.replace", replace)
    with pytest.raises(SkinError, match="No space left"), atomic_dir(target) as tmp:
        (tmp / "new.txt").write_text("new")
    assert (target / "old.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report"]


def test_check_writable_names_the_option_and_the_file_in_the_way(blocker: Path) -> None:
    with pytest.raises(SkinError, match=r"--csv .*afile is a file, not a folder"):
        check_writable(blocker / "out" / "p.csv", "--csv")
    ok = check_writable(blocker.parent / "new" / "report")
    assert ok.parent.is_dir() and list(ok.parent.iterdir()) == []  # no probe left behind


def test_sha256_file_and_json_default(tmp_path: Path) -> None:
    import hashlib
    import json

    import numpy as np

    from skincli.fsutil import json_default, sha256_file

    data = bytes(range(256)) * 5000  # more than one 1 MB block
    (tmp_path / "f.bin").write_bytes(data)
    assert sha256_file(tmp_path / "f.bin") == hashlib.sha256(data).hexdigest()
    doc = {"n": np.int64(3), "x": np.float32(0.5), "a": np.arange(3), "p": tmp_path}
    assert json.loads(json.dumps(doc, default=json_default)) == {
        "n": 3, "x": 0.5, "a": [0, 1, 2], "p": str(tmp_path)}
