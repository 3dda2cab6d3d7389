"""The drift reference from a real (tiny) run: same numbers as the prediction path, cached."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from helpers_run import make_run
from imagegen import make_class_folders

from skincli.monitor.reference import get_reference, read_split, reference_path
from skincli.monitor.store import image_stats, summarize_embedding
from skincli.runs import update_run_info

CLASSES = ["melanoma", "nevus", "vascular lesion"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tmp = tmp_path_factory.mktemp("ref")
    made = make_class_folders(tmp / "data", {c: 6 for c in CLASSES}, size=(40, 36))
    split = {"train": {c: p[:3] for c, p in made.items()},
             "val": {c: p[3:5] for c, p in made.items()},
             "test": {c: p[5:] for c, p in made.items()}}
    return make_run(tmp, classes=CLASSES, input_size=32, split_files=split, temperature=1.5)


def test_reference_matches_the_prediction_path_and_is_cached(run_dir: Path) -> None:
    from skincli.predictor import Predictor

    ref = get_reference(run_dir)
    assert ref["n"] == 6 and ref["source"].startswith("val split")
    assert sum(ref["predicted_counts"].values()) == 6
    assert ref["label_counts"] == {c: 2 for c in CLASSES}
    # Same preprocessing, same calibrated probabilities, same statistics and embedding summary
    # as a prediction of the same file would log.
    pred = Predictor.from_run(run_dir)
    split = read_split(run_dir)
    val = split[split["split"] == "val"]["filepath"].tolist()
    assert len(val) == 6 and all(Path(p).is_file() for p in val)
    x = np.stack([pred.preprocess(p) for p in val])
    probs, emb = pred.probabilities_and_embeddings(x)
    assert sorted(ref["top_probability"]) == pytest.approx(sorted(probs.max(axis=1)), abs=1e-5)
    got = sorted(ref["image_stats"]["brightness"])
    assert got == pytest.approx(sorted(image_stats(a)["brightness"] for a in x), abs=1e-3)
    want = sorted(summarize_embedding(e)[0] for e in emb)
    assert sorted(e[0] for e in ref["embedding"]) == pytest.approx(want, abs=1e-4)

    # cached: the second call does not recompute
    path = reference_path(run_dir)
    stamp = path.stat().st_mtime_ns
    assert get_reference(run_dir) == json.loads(path.read_text())
    assert path.stat().st_mtime_ns == stamp
    # a changed model (new creation time = new version) makes it stale
    update_run_info(run_dir, created="2026-02-02T00:00:00")
    os.utime(path, ns=(stamp - 10**9, stamp - 10**9))
    ref2 = get_reference(run_dir)
    assert ref2["model_version"].endswith("2026-02-02T00:00:00")
    assert path.stat().st_mtime_ns != stamp - 10**9


def test_missing_split_is_a_clear_error(tmp_path: Path) -> None:
    from skincli.errors import SkinError

    bare = make_run(tmp_path, classes=CLASSES, input_size=32)
    with pytest.raises(SkinError, match="no split.csv"):
        get_reference(bare)
