"""`skin train --use-metadata`: the age/sex/site term of the logits (skincli.metahead)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from helpers_run import write_split_lines
from imagegen import make_image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.errors import SkinError
from skincli.metahead import MetadataEncoder, MetadataHead, parse_inputs, records_from_frame
from skincli.runs import load_run_info

runner = CliRunner()
FAST: dict[str, Any] = {"arch": "tiny", "epochs": 2, "fine_tune_epochs": 2, "batch_size": 8,
                        "lr": 0.03, "fine_tune_lr": 0.01, "input_size": 32, "augment": 0.0}


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


# --- the encoder --------------------------------------------------------------------------------

def _records(n: int = 40) -> list[dict[str, str]]:
    rng = np.random.default_rng(0)
    sites = ["back"] * 15 + ["face"] * 12 + ["hand"] * 3 + [""] * 10
    return [{"sex": ["male", "female", ""][int(rng.integers(3))],
             "age_band": ["<30", "45-59", "75+", ""][int(rng.integers(4))],
             "site": sites[i % len(sites)]} for i in range(n)]


def test_encoding_is_centred_and_missing_is_zero() -> None:
    records = _records()
    enc = MetadataEncoder.fit(records)
    # Sites count as general sites (back -> torso, face -> head/neck); one with fewer than
    # MIN_SITE_IMAGES training images (hand -> upper extremity, 3) shares the "other" column.
    assert enc.sites == ["head/neck", "torso"] and enc.values["site"][-1] == "other"
    x = enc.encode(records)
    assert x.shape == (len(records), enc.dim)
    hot, present = enc.onehot(records)
    # Over the training rows that have a field, its columns average to zero: W @ x cannot
    # turn "this field is present" into a shift of the logits.
    for col in range(enc.dim):
        rows = present[:, col]
        assert abs(float(x[rows, col].mean())) < 1e-6
    assert not x[~present].any()  # a missing field is exactly zero
    assert not enc.encode([{}]).any()
    same = MetadataEncoder.from_dict(json.loads(json.dumps(enc.to_dict())))
    assert np.array_equal(same.encode(records), x)
    assert enc.coverage(records)["site"] == 30
    np.testing.assert_array_equal(enc.blocks()[:2], [0, 0])


def test_site_vocabularies_of_different_sources_encode_alike() -> None:
    """The archive's and HAM10000's names for a site are one value: the vocabulary must not
    tell the model which collection an image came from."""
    enc = MetadataEncoder.fit([{"site": "back"}] * 10 + [{"site": "head/neck"}] * 10)
    pairs = [("back", "posterior torso"), ("chest", "anterior torso"), ("trunk", "torso"),
             ("face", "head/neck"), ("scalp", "neck"), ("hand", "upper extremity")]
    for a, b in pairs:
        assert np.array_equal(enc.encode([{"site": a}]), enc.encode([{"site": b}])), (a, b)
    assert np.array_equal(enc.encode([{"site": "elbow"}]), enc.encode([{"site": "hand"}]))


def test_head_offsets_are_zero_without_metadata() -> None:
    enc = MetadataEncoder.fit(_records())
    head = MetadataHead(enc, np.arange(enc.dim * 3, dtype=np.float32).reshape(enc.dim, 3))
    assert not head.offsets(None, 4).any()
    assert not head.offsets(enc.encode([{}, {}]), 2).any()
    back = head.offsets(enc.encode([{"site": "back"}]), 1)
    assert back.any()
    again = MetadataHead.from_dict(json.loads(json.dumps(head.to_dict(["a", "b", "c"]))))
    assert again is not None and np.allclose(again.offsets(enc.encode([{"site": "back"}]), 1),
                                             back)
    assert MetadataHead.from_dict({"version": 99}) is None


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"age": "old"}, "age 'old' is not an age in years"),
    ({"age": 150}, "is not an age in years"),
    ({"sex": "x"}, "sex 'x' is not one of male, female"),
])
def test_bad_user_metadata_is_one_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(SkinError, match=message):
        parse_inputs(**kwargs)


def test_user_metadata_is_normalised() -> None:
    assert parse_inputs(age=52, sex="F", site=" Back ") == {
        "sex": "female", "age_band": "45-59", "site": "back"}
    assert parse_inputs() == {"sex": "", "age_band": "", "site": ""}


# --- training and using a run with metadata ------------------------------------------------------

def _split_with_metadata(root: Path, n: int = 20) -> Path:
    """Two classes whose images look alike; the site tells them apart (back vs face).

    Every fourth image has no metadata at all, like the archive's missing rows.
    """
    rows = []
    for c, (label, site) in enumerate((("melanoma", "back"), ("nevus", "face"))):
        for i in range(n):
            path = make_image(root / "data" / label / f"ISIC_{c}{i:03d}.jpg",
                              (160, 110, 100), size=(32, 32), seed=1000 + 37 * i + c)
            part = "val" if i < 5 else "train"
            missing = i % 4 == 3
            rows.append((path, label, part, "" if missing else "60",
                         "" if missing else ("male" if i % 2 else "female"),
                         "" if missing else site))
    lines = ["path,label,split,sha256,group,age,sex,site"]
    for path, label, part, age, sex, site in rows:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.relative_to(root / 'data').as_posix()},{label},{part},{digest},"
                     f"{digest[:12]},{age},{sex},{site}")
    return write_split_lines(root / "splits" / "split.csv", root / "data", lines)


@pytest.fixture(scope="module")
def meta_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from skincli.train import train

    root = tmp_path_factory.mktemp("metahead")
    split = _split_with_metadata(root)
    return train({**FAST, "split": str(split), "runs_dir": str(root / "runs"),
                  "use_metadata": True})


def test_training_learns_the_metadata_term(meta_run: Path) -> None:
    from skincli.predictor import Predictor

    info = load_run_info(meta_run)
    head = info.extra["metadata_head"]
    assert head["values"]["site"] == ["head/neck", "torso", "other"]
    assert head["coverage"]["train"]["site"] == 22 and head["coverage"]["n_train"] == 30
    predictor = Predictor.from_run(meta_run)
    assert predictor.uses_metadata
    image = meta_run.parent.parent / "data" / "melanoma" / "ISIC_0000.jpg"
    back, face, none = (predictor.predict([image], metadata=[rec])[0].probabilities
                        for rec in ({"site": "back"}, {"site": "face"}, {}))
    # The site carries the class here: the term moves the answer the right way.
    assert back["melanoma"] > none["melanoma"] > face["melanoma"]
    assert back["melanoma"] - face["melanoma"] > 0.2
    # No metadata = the image model alone, exactly (what model.tflite and exports compute).
    batch = predictor.preprocess(image)[None]
    plain = predictor.engine.logits(batch)
    np.testing.assert_allclose(predictor.logits(batch), plain, rtol=0, atol=0)
    np.testing.assert_allclose(predictor.logits(batch, meta=predictor.encode_metadata([{}])),
                               plain, atol=1e-6)


def test_evaluate_uses_the_splits_metadata(meta_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "ev"
    result = runner.invoke(app, ["evaluate", str(meta_run), "--subset", "val", "--out",
                                 str(out), "--bootstrap", "50"])
    assert result.exit_code == 0, result.output
    with_meta = json.loads((out / "metrics.json").read_text())["metrics"]["macro_f1"]
    # The same images without their metadata: the image model alone (the images look alike).
    from sklearn.metrics import f1_score

    from skincli.data.splitfile import load_split
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(meta_run)
    val = load_split(meta_run / "split.csv").query("split == 'val'")
    batch = np.stack([predictor.preprocess(p) for p in val["filepath"]])
    pred = [predictor.classes[i] for i in predictor.probabilities(batch).argmax(axis=1)]
    image_only = f1_score(val["label"], pred, average="macro")
    assert with_meta > image_only + 0.15, (with_meta, image_only)


def test_predict_cli_takes_age_sex_site(meta_run: Path, tmp_path: Path) -> None:
    image = meta_run.parent.parent / "data" / "nevus" / "ISIC_1001.jpg"
    runs = str(meta_run.parent)
    outs = {}
    for site in ("back", "face"):
        res = runner.invoke(app, ["predict", str(image), "--runs-dir", runs, "--run",
                                  meta_run.name, "--site", site, "--age", "60", "--sex", "male",
                                  "--json", "--no-log"])
        assert res.exit_code == 0, res.output
        doc = json.loads(res.stdout)
        assert doc["metadata"] == {"sex": "male", "age_band": "60-74", "site": site}
        outs[site] = doc["predictions"][0]["probabilities"]["nevus"]
    assert outs["face"] > outs["back"]
    res = runner.invoke(app, ["predict", str(image), "--runs-dir", runs, "--run",
                              meta_run.name, "--age", "150", "--no-log"])
    assert res.exit_code != 0
    assert "age 150.0 is not an age in years" in res.output and "Traceback" not in res.output
    res = runner.invoke(app, ["predict", str(image), "--runs-dir", runs, "--run",
                              meta_run.name, "--site", "elbow", "--json", "--no-log"])
    assert res.exit_code == 0, res.output
    assert "site 'elbow' is not one the model was trained with" in res.stdout


def test_api_takes_age_sex_site(meta_run: Path) -> None:
    from fastapi.testclient import TestClient

    from skincli.serve.app import create_app
    from skincli.serve.settings import Settings

    image = (meta_run.parent.parent / "data" / "melanoma" / "ISIC_0002.jpg").read_bytes()
    settings = Settings(run=meta_run.name, runs_dir=str(meta_run.parent), no_log=True)
    with TestClient(create_app(settings)) as client:
        got = {}
        for site in ("back", "face"):
            r = client.post(f"/v1/predict?site={site}&age=61&sex=female",
                            files={"file": ("a.jpg", image, "image/jpeg")})
            assert r.status_code == 200, r.text
            got[site] = r.json()["prediction"]["probabilities"]["melanoma"]
        assert got["back"] > got["face"]
        r = client.post("/v1/predict?age=-4", files={"file": ("a.jpg", image, "image/jpeg")})
        assert r.status_code == 422 and r.json()["error"] == "invalid_request"
        assert r.json()["message"].startswith("age:")  # the schema's range, 0 to 120
        r = client.post("/v1/predict?sex=x", files={"file": ("a.jpg", image, "image/jpeg")})
        assert r.status_code == 422 and "'male' or 'female'" in r.json()["message"]
        r = client.post("/v1/predict/batch?site=back&age=61&sex=female",
                        files=[("files", ("a.jpg", image, "image/jpeg")),
                               ("files", ("b.jpg", image, "image/jpeg"))])
        assert r.status_code == 200, r.text
        probs = [x["prediction"]["probabilities"]["melanoma"] for x in r.json()["results"]]
        assert probs == pytest.approx([got["back"]] * 2, abs=1e-5)


def test_ctrl_c_and_resume_keep_the_metadata_term(tmp_path: Path) -> None:
    from skincli.train import resume, train

    split = _split_with_metadata(tmp_path, n=8)

    def stop(event: str, info: dict[str, Any]) -> None:
        if event == "epoch" and info["epoch"] == 2:
            raise KeyboardInterrupt

    run = train({**FAST, "split": str(split), "runs_dir": str(tmp_path / "runs"),
                 "use_metadata": True}, progress=stop)
    assert load_run_info(run).extra["interrupted"] is True
    assert "metadata_head" in load_run_info(run).extra
    done = resume(run.name, runs_dir=run.parent)
    info = load_run_info(done)
    assert info.extra["interrupted"] is False and "metadata_head" in info.extra


def test_use_metadata_needs_a_split_with_metadata(tmp_path: Path) -> None:
    from skincli.train import train

    split = _split_with_metadata(tmp_path, n=6)
    text = split.read_text().splitlines()
    bare = tmp_path / "bare.csv"
    body = "\n".join(",".join(line.split(",")[:5]) for line in text) + "\n"
    bare.write_text(body)
    side = json.loads(split.with_suffix(".json").read_text())
    side["csv_sha256"] = hashlib.sha256(body.encode("utf-8")).hexdigest()
    bare.with_suffix(".json").write_text(json.dumps(side))
    with pytest.raises(SkinError, match="--use-metadata needs age, sex or site"):
        train({**FAST, "split": str(bare), "runs_dir": str(tmp_path / "runs"),
               "use_metadata": True})
    with pytest.raises(SkinError, match="does not combine with --mixup"):
        train({**FAST, "split": str(split), "runs_dir": str(tmp_path / "runs"),
               "use_metadata": True, "mixup": 0.2})
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_records_from_frame_reads_split_columns() -> None:
    import pandas as pd

    frame = pd.DataFrame({"sex": ["male", None], "age": [33, float("nan")],
                          "site": ["Back", "unknown"]})
    assert records_from_frame(frame) == [{"sex": "male", "age_band": "30-44", "site": "back"},
                                         {"sex": "", "age_band": "", "site": ""}]
    assert records_from_frame(pd.DataFrame({"x": [1]})) is None


def test_tflite_export_carries_the_metadata_term(meta_run: Path, tmp_path: Path) -> None:
    """An app that follows the export JSON's rule gets the Predictor's answer."""
    from ai_edge_litert.interpreter import Interpreter

    from skincli.export import export_tflite
    from skincli.predictor import Predictor

    meta = export_tflite(meta_run.name, tmp_path / "out", meta_run.parent, fmt="tflite")
    doc = json.loads(Path(meta["path"]).with_suffix(".json").read_text())
    term = doc["metadata_term"]
    record = {"sex": "female", "age_band": "60-74", "site": "back"}
    given = {**record, "site": term["site_groups"].get(record["site"], "other")}
    assert given["site"] == "torso"
    x = np.concatenate([
        (np.array([v == given[f] for v in term["values"][f]], float) - term["means"][f])
        for f in term["fields"]])
    predictor = Predictor.from_run(meta_run)
    image = predictor.preprocess(meta_run.parent.parent / "data" / "nevus" / "ISIC_1002.jpg")
    (probs,) = Interpreter(model_path=meta["path"]).get_signature_runner()(
        image=image[None]).values()
    q = probs[0] * np.exp(x @ np.asarray(term["weights"]) / doc["temperature"])
    calibrated = predictor.predict([image], metadata=[record])[0].calibrated or {}
    plain = predictor.predict([image])[0].calibrated or {}
    want = [calibrated[c] for c in doc["classes"]]
    assert np.abs(np.asarray(want) - [plain[c] for c in doc["classes"]]).max() > 0.01
    np.testing.assert_allclose(q / q.sum(), want, atol=1e-4)


def test_model_card_names_the_metadata_inputs(meta_run: Path) -> None:
    from skincli.clinical.card import build, markdown

    text = markdown(build(meta_run))
    assert "- Inputs: the dermoscopic image, plus the patient's sex, age band and anatomical " \
           "site when given" in text and "sites: head/neck, torso" in text


@pytest.mark.parametrize("header", ["isic_id,age_approx,sex,anatom_site_general",
                                    "image,age_approx,sex,anatom_site_general,lesion_id"])
def test_predict_folder_with_a_metadata_file(meta_run: Path, tmp_path: Path,
                                             header: str) -> None:
    """Per-image metadata joined by file name, from a file without diagnoses."""
    data = meta_run.parent.parent / "data"
    images = [data / "melanoma" / "ISIC_0003.jpg", data / "nevus" / "ISIC_1003.jpg"]
    extra = ",IL_1" if header.endswith("lesion_id") else ""
    csv = tmp_path / "meta.csv"
    # Both images get the site of the *other* class, and one has no row at all.
    csv.write_text(f"{header}\nISIC_0003,55,male,face{extra}\n", encoding="utf-8")
    res = runner.invoke(app, ["predict", *map(str, images), "--runs-dir", str(meta_run.parent),
                              "--run", meta_run.name, "--metadata", str(csv), "--json",
                              "--no-log"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    by_file = {Path(p["file"]).name: p for p in doc["predictions"]}
    assert by_file["ISIC_0003.jpg"]["metadata"] == {"sex": "male", "age_band": "45-59",
                                                    "site": "face"}
    assert by_file["ISIC_1003.jpg"]["metadata"] == {}
    assert "1 of 2 images have no row in meta.csv" in res.output
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(meta_run)
    face = predictor.predict([images[0]], metadata=[{"sex": "male", "age_band": "45-59",
                                                     "site": "face"}])[0]
    assert by_file["ISIC_0003.jpg"]["probabilities"]["nevus"] == pytest.approx(
        face.probabilities["nevus"], abs=1e-5)
    res = runner.invoke(app, ["predict", str(images[0]), "--runs-dir", str(meta_run.parent),
                              "--run", meta_run.name, "--metadata", str(csv), "--age", "40",
                              "--no-log"])
    assert res.exit_code == 1 and "does not combine with --age" in res.output
