"""The audit log rotates into signed segments and stays one chain; verify names what broke."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from skincli.cli import app
from skincli.clinical import audit, auditsign
from skincli.errors import SkinError

runner = CliRunner()


def _flat(text: str) -> str:
    return " ".join(text.split())


def _entry(i: int) -> dict:
    return audit.entry(request_id=f"r{i}", caller="cli", source="cli", model_version="m",
                       image_sha256="0" * 64,
                       prediction={"label": "nevus", "probability": 0.8, "uncertain": False,
                                   "triage": None})


@pytest.fixture()
def key(tmp_path: Path) -> Path:
    path = tmp_path / "keys" / "audit.pem"
    auditsign.keygen(path)
    return path


def _rotated(tmp_path: Path, key: Path, n: int = 14, per_segment: int = 4,
             name: str = "log", compress: bool = True) -> Path:
    """A log of `n` records, rotated every `per_segment` appends."""
    path = tmp_path / name / "audit.jsonl"
    log = audit.AuditLog(path, signing_key=key, compress=compress)
    for i in range(n):
        log.append([_entry(i)])
        if (i + 1) % per_segment == 0:
            log.rotate()
    return path


def _lines(path: Path) -> list[bytes]:
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    return raw.splitlines(keepends=True)


def _write(path: Path, lines: list[bytes]) -> None:
    data = b"".join(lines)
    path.write_bytes(gzip.compress(data) if path.suffix == ".gz" else data)


def test_rotation_keeps_one_chain_and_one_sequence(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    segs = auditsign.segments(path)
    assert sorted(segs) == [0, 1, 2] and all(p[0].suffix == ".gz" for p in segs.values())
    records = [json.loads(x) for n in sorted(segs) for x in _lines(segs[n][0])]
    records += [json.loads(x) for x in _lines(path)]
    assert [r["seq"] for r in records] == list(range(len(records)))  # never resets
    close, opening = records[4], records[5]
    assert close["type"] == "close" and close["last_seq"] == 3 and close["count"] == 5
    assert close["last_hash"] == records[3]["hash"]
    assert opening["type"] == "open" and opening["prev"] == close["hash"]
    closed = gzip.decompress(segs[0][0].read_bytes())
    import hashlib
    assert opening["prev_segment_sha256"] == hashlib.sha256(closed).hexdigest()
    digests = auditsign.read_digests(path)
    assert [d["segment"] for d in digests] == [0, 1, 2]
    assert digests[1]["prev_digest"] == auditsign.digest_hash(digests[0])
    assert digests[0]["next_open_hash"] == opening["hash"]
    res = audit.verify(path, key)
    assert res.ok and res.records == len(records) and res.segments == 3, res
    r = runner.invoke(app, ["audit", "verify", str(path), "--key", str(key) + ".pub"])
    assert r.exit_code == 0, r.output
    assert f"{len(records)} records in 4 segments, chain intact" in _flat(r.output)


def test_size_rotation_and_plain_segments(tmp_path: Path, key: Path) -> None:
    path = tmp_path / "log" / "audit.jsonl"
    log = audit.AuditLog(path, signing_key=key, max_bytes=1500, compress=False)
    for i in range(12):
        log.append([_entry(i)])
    segs = auditsign.segments(path)
    assert len(segs) >= 2 and all(p[0].suffix == ".jsonl" for p in segs.values())
    assert audit.verify(path, key).ok



def test_rotation_from_the_environment(tmp_path: Path, key: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """How the server and the CLI get rotation: SKIN_AUDIT_ROTATE_BYTES and SKIN_AUDIT_KEY."""
    monkeypatch.setenv("SKIN_AUDIT_ROTATE_BYTES", "1200")
    monkeypatch.setenv("SKIN_AUDIT_KEY", str(key))
    path = tmp_path / "log" / "audit.jsonl"
    log = audit.AuditLog(path)
    for i in range(10):
        log.append([_entry(i)])
    assert len(auditsign.segments(path)) >= 2
    assert audit.verify(path).ok  # the key from the environment too
    monkeypatch.setenv("SKIN_AUDIT_ROTATE_BYTES", "lots")
    with pytest.raises(SkinError, match="number of bytes"):
        audit.AuditLog(path)


def _bad(path: Path, key: Path) -> audit.Verification:
    res = audit.verify(path, key)
    assert not res.ok, res
    r = runner.invoke(app, ["audit", "verify", str(path), "--key", str(key)])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "is broken" in _flat(r.output)
    return res


def test_an_edited_line_in_a_compressed_segment_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    seg = auditsign.segments(path)[1][0]
    lines = _lines(seg)
    lines[2] = lines[2].replace(b'"nevus"', b'"melanoma"')
    _write(seg, lines)
    res = _bad(path, key)
    assert res.file == str(seg) and res.first_bad_line == 3 and res.first_bad_seq == 7
    assert "content does not match its hash" in res.reason


def test_a_damaged_compressed_segment_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    seg = auditsign.segments(path)[1][0]
    seg.write_bytes(seg.read_bytes()[:-12])  # the gzip trailer cut off
    res = _bad(path, key)
    assert res.file == str(seg) and "cannot be read" in res.reason


def test_a_deleted_middle_segment_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    auditsign.segments(path)[1][0].unlink()
    res = _bad(path, key)
    assert "segment 1 is missing" in res.reason and res.file.endswith("audit.000001.jsonl")
    assert res.records == 5  # segment 0 checked out


def test_truncation_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    seg = auditsign.segments(path)[0][0]
    _write(seg, _lines(seg)[:3])  # the last record and the closing record cut off
    res = _bad(path, key)
    assert res.file == str(seg) and res.first_bad_line == 4 and "truncated" in res.reason
    # A record cut in the middle of the active file.
    path2 = _rotated(tmp_path, key, name="log2")
    path2.write_bytes(path2.read_bytes()[:-20])
    res = _bad(path2, key)
    assert res.file == str(path2) and "cut off" in res.reason


def test_reordering_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    seg = auditsign.segments(path)[1][0]
    lines = _lines(seg)
    lines[1], lines[2] = lines[2], lines[1]
    _write(seg, lines)
    res = _bad(path, key)
    assert res.file == str(seg) and res.first_bad_line == 2 and "sequence" in res.reason
    # Two whole segments swapped by renaming their files.
    path2 = _rotated(tmp_path, key, name="log2")
    segs = auditsign.segments(path2)
    a, b = segs[1][0], segs[2][0]
    tmp = a.with_name("swap")
    a.rename(tmp)
    b.rename(a)
    tmp.rename(b)
    res = _bad(path2, key)
    assert res.file == str(a) and res.first_bad_line == 1


def test_a_replaced_last_segment_is_named(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    other = _rotated(tmp_path, key, n=15, name="other")  # same key, another history
    path.write_bytes(other.read_bytes())
    res = _bad(path, key)
    assert res.file == str(path) and res.first_bad_line == 1
    # The last closed segment rewritten with a recomputed chain from its second record on.
    path2 = _rotated(tmp_path, key, name="log2")
    seg = auditsign.segments(path2)[2][0]
    recs = [json.loads(x) for x in _lines(seg)]
    recs[1]["result"]["label"] = "melanoma"
    for i in range(1, len(recs)):
        recs[i]["prev"] = recs[i - 1]["hash"]
        if recs[i].get("type") == "close":
            recs[i]["last_hash"] = recs[i]["prev"]
        recs[i]["hash"] = audit.record_hash(recs[i])
    _write(seg, [auditsign.line(r) for r in recs])
    res = _bad(path2, key)
    assert res.file == str(seg) and "differs from its signed digest" in res.reason


def test_digests_need_the_right_key(tmp_path: Path, key: Path) -> None:
    path = _rotated(tmp_path, key)
    other = tmp_path / "keys" / "other.pem"
    auditsign.keygen(other)
    res = audit.verify(path, other)
    assert not res.ok and "signature does not verify" in res.reason
    # A digest removed from the middle of the digest chain.
    dpath = auditsign.digests_path(path)
    lines = dpath.read_bytes().splitlines(keepends=True)
    dpath.write_bytes(lines[0] + lines[2])
    res = audit.verify(path, key)
    assert not res.ok and "does not chain" in res.reason
    r = runner.invoke(app, ["audit", "verify", str(path)], env={"SKIN_AUDIT_KEY": ""})
    assert r.exit_code == 1 and "--key" in _flat(r.output) and "Traceback" not in r.output


def test_the_key_stays_outside_the_log_folder(tmp_path: Path) -> None:
    inside = tmp_path / "log" / "k.pem"
    auditsign.keygen(inside)
    with pytest.raises(SkinError, match="inside the audit log's folder"):
        audit.AuditLog(tmp_path / "log" / "audit.jsonl", signing_key=inside)
    with pytest.raises(SkinError, match="needs a signing key"):
        audit.AuditLog(tmp_path / "x" / "audit.jsonl", max_bytes=100, signing_key=None)
    pem = inside.read_text()
    assert "PRIVATE KEY" in pem and pem.split("\n")[1] not in (inside.parent / "k.pem.pub"
                                                              ).read_text()


def test_an_interrupted_rotation_is_finished_by_the_next_append(tmp_path: Path,
                                                                key: Path) -> None:
    path = _rotated(tmp_path, key, n=6)
    log = audit.AuditLog(path, signing_key=key)
    last = json.loads(_lines(path)[-1])
    close = {"seq": last["seq"] + 1, "type": "close", "segment": 1,
             "last_seq": last["seq"], "last_hash": last["hash"],
             "count": len(_lines(path)) + 1, "prev": last["hash"]}
    close["hash"] = audit.record_hash(close)
    with open(path, "ab") as f:  # the crash came right after the closing record
        f.write(auditsign.line(close))
    log.append([_entry(99)])
    assert sorted(auditsign.segments(path)) == [0, 1]
    res = audit.verify(path, key)
    assert res.ok, res


def test_cli_keygen_and_rotate(tmp_path: Path) -> None:
    key = tmp_path / "secrets" / "k.pem"
    r = runner.invoke(app, ["audit", "keygen", str(key)])
    assert r.exit_code == 0 and key.is_file() and (key.stat().st_mode & 0o077) == 0
    assert runner.invoke(app, ["audit", "keygen", str(key)]).exit_code == 1  # never overwrite
    path = tmp_path / "log" / "audit.jsonl"
    audit.AuditLog(path).append([_entry(0)])
    r = runner.invoke(app, ["audit", "rotate", str(path), "--key", str(key)])
    assert r.exit_code == 0 and "segment 0 closed" in _flat(r.output), r.output
    audit.AuditLog(path).append([_entry(1)])  # appending needs no key
    r = runner.invoke(app, ["audit", "verify", str(path), "--key", str(key)])
    assert r.exit_code == 0 and "4 records in 2 segments" in _flat(r.output), r.output
