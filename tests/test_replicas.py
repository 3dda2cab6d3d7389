"""Two `skin serve` replicas behind nginx with one PostgreSQL store (benchmarks/replicas.py).

Marked slow: 16 clients for 30 s, a replica SIGTERMed and restarted, a rolling reload; about
60 s in all on 2 shared CPU cores.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))


def test_no_request_fails_and_every_answer_is_logged_once(tmp_path: Path) -> None:
    from pg import _skip_reason

    reason = _skip_reason()
    if reason:
        pytest.skip(reason)
    if not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()):
        pytest.skip("nginx not installed (the Debian `nginx` package; .ci/run installs it)")
    import replicas

    r = replicas.run(clients=16, seconds=30, workdir=tmp_path)
    assert r["requests"] > 1000, r
    assert r["failed"] == 0, r["statuses"]
    assert [e for _, e in r["events"]][-2:] == ["replica A reloaded to new (200)",
                                               "replica B reloaded to new (200)"]
    assert r["versions_after"] == [r["new_version"]] * 2
    # Requests sent after both reloads returned, through nginx and to each replica: the
    # fleet answers with the new run (nothing here depends on how busy the machine was).
    assert r["probes"] == 6
    assert r["models_after_reload"] == {r["new_version"]: r["probes"]}
    assert r["answered"] == r["requests"] == r["logged_once"], r
    assert r["missing"] == r["duplicated"] == r["extra_rows"] == 0
