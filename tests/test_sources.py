"""Several data sources pooled in `skin eda` and `skin split`: cross-source copies and lesions,
class-name mapping, --test-source, per-source results in `skin evaluate`, and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
from imagegen import PALETTE, make_class_folders, make_image
from PIL import Image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.data.manifest import build_manifest
from skincli.data.sources import SourceSpec, SourcesPlan, load_sources, plan_sources
from skincli.data.split import make_split, provenance
from skincli.data.splitfile import load_split
from skincli.errors import SkinError
from skincli.subgroups import groups_from_frame

runner = CliRunner()
SIZE = (64, 64)


@pytest.fixture(autouse=True)
def _cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SKIN_CACHE_DIR", str(tmp_path / "cache"))


def _flat(text: str) -> str:
    return " ".join(text.split())


def make_pool(root: Path) -> dict[str, Path]:
    """Three sources with planted overlaps; returns the planted files and the sources file.

    clinic/   class folders melanoma, nevus;
    ham/      HAM10000-style CSV (image_id, dx codes mel/nv, lesion_id) + images/;
    archive/  class folders under other names ("malignant melanoma", "benign nevus") mapped
              in the sources file, with an ISIC-archive metadata file giving lesion ids.
    Planted: an identical copy (clinic -> archive), a re-encoded copy (clinic -> ham), a
    resized copy (ham -> archive), a lesion id shared by ham and archive, and identical bytes
    filed as nevus in clinic and as melanoma in archive.
    """
    clinic = make_class_folders(root / "clinic", {"melanoma": 8, "nevus": 8}, size=SIZE, seed=1)
    images = root / "ham" / "images"
    rows = []
    for k, code in enumerate(("mel", "nv")):
        for i in range(8):
            p = make_image(images / f"HAM_{k}{i:02d}.jpg", PALETTE[k], size=SIZE,
                           seed=5000 + 50 * k + i)
            rows.append({"image_id": p.stem, "dx": code, "lesion_id": f"HAML_{k}{i}"})
    rows[0]["lesion_id"] = "SHARED_1"
    reencoded = images / "HAM_reenc.jpg"
    Image.open(clinic["nevus"][0]).save(reencoded, quality=60)
    rows.append({"image_id": "HAM_reenc", "dx": "nv", "lesion_id": "HAML_reenc"})
    pd.DataFrame(rows).to_csv(root / "ham" / "ham.csv", index=False)

    make_class_folders(root / "archive", {"malignant melanoma": 8, "benign nevus": 8},
                                 size=SIZE, seed=3)
    identical = root / "archive" / "malignant melanoma" / "ARCH_copy.jpg"
    shutil.copyfile(clinic["melanoma"][0], identical)
    conflict = root / "archive" / "malignant melanoma" / "ARCH_conflict.jpg"
    shutil.copyfile(clinic["nevus"][1], conflict)
    resized = root / "archive" / "benign nevus" / "ARCH_resized.jpg"
    Image.open(images / "HAM_100.jpg").resize((96, 96), Image.Resampling.BICUBIC).save(
        resized, quality=95)
    lesion = make_image(root / "archive" / "malignant melanoma" / "ARCH_lesion.jpg", PALETTE[0],
                        size=SIZE, seed=7777)
    pd.DataFrame([{"isic_id": lesion.stem, "diagnosis": "", "lesion_id": "SHARED_1"}]).to_csv(
        root / "archive_meta.csv", index=False)
    sources = root / "sources.yaml"
    sources.write_text(
        "sources:\n"
        "  - path: clinic\n"
        "  - path: ham/ham.csv\n"
        "    name: ham10000\n"
        "    layout: csv\n"
        "    images: ham/images\n"
        "  - path: archive\n"
        "    name: isic-archive\n"
        "    class_map: {malignant melanoma: melanoma, benign nevus: nevus}\n"
        "    metadata: archive_meta.csv\n")
    return {"sources": sources, "clinic_mel": clinic["melanoma"][0],
            "clinic_nevus": clinic["nevus"][0], "clinic_conflict": clinic["nevus"][1],
            "identical": identical, "conflict": conflict, "reencoded": reencoded,
            "resized": resized, "ham_resized": images / "HAM_100.jpg",
            "ham_lesion": images / "HAM_000.jpg", "arch_lesion": lesion}


def _rel(p: Path, root: Path) -> str:
    return p.relative_to(root).as_posix()


@pytest.fixture()
def pool(tmp_path: Path) -> dict[str, Path]:
    return make_pool(tmp_path / "data")


def test_eda_names_each_cross_source_copy_lesion_and_label(pool: dict[str, Path],
                                                           tmp_path: Path) -> None:
    out = tmp_path / "eda"
    result = runner.invoke(app, ["eda", "--sources", str(pool["sources"]), "--out", str(out),
                                 "--no-plots"])
    assert result.exit_code == 0, result.output
    text = _flat(result.output)
    assert "Shared between sources" in text
    assert "Labels that clinic and isic-archive disagree on" in text
    report = json.loads((out / "report.json").read_text())
    src = report["sources"]
    assert src["names"] == ["clinic", "ham10000", "isic-archive"]
    pairs = {tuple(p["sources"]): p for p in src["pairs"]}
    root = tmp_path / "data"

    def kinds(pair: tuple[str, str]) -> dict[str, set[str]]:
        return {i["kind"]: {f["path"] for f in i["files"]} for i in pairs[pair]["images"]}

    assert pairs[("clinic", "ham10000")]["shared_images"] == 1
    assert kinds(("clinic", "ham10000"))["re-encoded"] == {
        _rel(pool["clinic_nevus"], root), _rel(pool["reencoded"], root)}
    ca = pairs[("clinic", "isic-archive")]
    assert (ca["shared_images"], ca["identical"], ca["images_label_disagreements"]) == (2, 2, 1)
    bad = [i for i in ca["images"] if not i["labels_agree"]]
    assert {(f["source"], f["label"]) for f in bad[0]["files"]} == {
        ("clinic", "nevus"), ("isic-archive", "melanoma")}
    ha = pairs[("ham10000", "isic-archive")]
    assert kinds(("ham10000", "isic-archive"))["resized"] == {
        _rel(pool["ham_resized"], root), _rel(pool["resized"], root)}
    assert ha["shared_lesions"] == 1 and ha["lesions"][0]["id"] == "SHARED_1"
    assert ha["lesions"][0]["labels_agree"] and len(ha["lesions"][0]["files"]) == 2
    assert pairs[("clinic", "ham10000")]["shared_lesions"] == 0
    # Differing class names end as one set of classes; the mapping is reported per source.
    assert report["data"]["classes"] == ["melanoma", "nevus"]
    listing = {s["name"]: s for s in src["listing"]}
    assert listing["ham10000"]["class_mapping"] == {"mel": "melanoma", "nv": "nevus"}
    assert listing["isic-archive"]["class_mapping"]["benign nevus"] == "nevus"
    manifest = pd.read_csv(out / "manifest.csv", keep_default_na=False)
    assert set(manifest["source"]) == {"clinic", "ham10000", "isic-archive"}


def test_split_keeps_every_copy_and_lesion_in_one_split(pool: dict[str, Path],
                                                        tmp_path: Path) -> None:
    out = tmp_path / "splits" / "split.csv"
    result = runner.invoke(app, ["split", "--sources", str(pool["sources"]), "--out", str(out),
                                 "--conflicts", "keep-first", "--val", "0.2", "--test", "0.2"])
    assert result.exit_code == 0, result.output
    assert "Images per source" in result.output
    df = load_split(out)
    root = tmp_path / "data"
    where = dict(zip(df["path"], df["split"], strict=True))
    # Identical bytes: one file kept (the first source's); re-encoded / resized copies and the
    # shared lesion: every file kept, all in one split.
    assert _rel(pool["identical"], root) not in where and _rel(pool["clinic_mel"], root) in where
    for a, b in (("clinic_nevus", "reencoded"), ("ham_resized", "resized"),
                 ("ham_lesion", "arch_lesion")):
        assert where[_rel(pool[a], root)] == where[_rel(pool[b], root)], (a, b)
    # keep-first: the earlier source's label wins the disagreement.
    assert _rel(pool["conflict"], root) not in where
    assert df.loc[df["path"] == _rel(pool["clinic_conflict"], root), "label"].item() == "nevus"
    assert (df.groupby("sha256")["split"].nunique() == 1).all()
    assert set(df["source"]) == {"clinic", "ham10000", "isic-archive"}
    meta = json.loads(out.with_suffix(".json").read_text())
    assert sum(s["total"] for s in meta["sources"].values()) == len(df)
    assert meta["sources"]["ham10000"]["class_mapping"] == {"mel": "melanoma", "nv": "nevus"}
    # What a training run records of the split (run.json's data).
    prov = provenance(meta)
    assert prov["sources"]["clinic"]["images"] == meta["sources"]["clinic"]["total"] > 0
    assert prov["layout"] == "sources" and prov["test_source"] == ""


def test_disagreeing_label_follows_the_conflicts_policy(pool: dict[str, Path],
                                                        tmp_path: Path) -> None:
    ds = load_sources(plan_sources([], sources_file=pool["sources"]))
    manifest = build_manifest(ds)
    root = tmp_path / "data"
    conflict = {_rel(pool["conflict"], root), _rel(pool["clinic_conflict"], root)}
    res = make_split(manifest, seed=0)  # resolve: the metadata does not settle it: both go
    gone = {d["path"]: d for d in res.meta["dropped"]}
    assert conflict <= set(gone) and gone[_rel(pool["conflict"], root)]["kind"] == \
        "label_conflict" and gone[_rel(pool["conflict"], root)]["source"] == "isic-archive"
    with pytest.raises(SkinError, match="label conflicts"):
        make_split(manifest, conflicts="error")


def test_test_source_holds_one_source_out(pool: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "held.csv"
    result = runner.invoke(app, ["split", "--sources", str(pool["sources"]), "--out", str(out),
                                 "--test-source", "isic-archive"])
    assert result.exit_code == 0, result.output
    df = load_split(out)
    test = df[df["split"] == "test"]
    assert set(test["source"]) == {"isic-archive"}
    assert (df.loc[df["source"] == "isic-archive", "split"] == "test").all()
    root = tmp_path / "data"
    meta = json.loads(out.with_suffix(".json").read_text())
    leaked = {d["path"] for d in meta["dropped"] if d["kind"] == "leaks_into_test"}
    # The other sources' copies of test images and of its lesion do not train the model.
    assert {_rel(pool["clinic_mel"], root), _rel(pool["ham_resized"], root),
            _rel(pool["ham_lesion"], root)} <= leaked
    assert meta["test_source"] == "isic-archive" and meta["ratios"]["test"] == 0.0


def test_one_metadata_for_every_positional_source_and_unmapped_classes(tmp_path: Path) -> None:
    make_class_folders(tmp_path / "site_a", {"melanoma": 3, "nevus": 3}, seed=1)
    one = make_image(tmp_path / "site_a" / "melanoma" / "ISIC_0000001.jpg", seed=99)
    make_class_folders(tmp_path / "site_b", {"MEL": 3, "nv": 3, "unk": 2}, seed=2)
    meta = tmp_path / "meta.csv"
    pd.DataFrame([{"image_id": one.stem, "dx": "mel", "lesion_id": "L9",
                   "sex": "male"}]).to_csv(meta, index=False)
    plan = plan_sources([tmp_path / "site_a", tmp_path / "site_b"], [meta])
    assert [s.label for s in plan.specs] == ["site_a", "site_b"]
    assert all(s.metadata == meta for s in plan.specs)
    ds = load_sources(plan)
    assert ds.classes == ["melanoma", "nevus", "unk"]  # unk maps to nothing: kept, reported
    info = {s["name"]: s for s in ds.sources}
    assert info["site_b"]["unmapped"] == [{"class": "unk", "images": 2, "dropped": False}]
    assert "maps to no class" in info["site_b"]["warnings"][0]
    assert ds.metadata and ds.metadata["matched_images"] == 1
    dropped = load_sources(plan, drop_unmapped=True)
    assert dropped.classes == ["melanoma", "nevus"]
    assert sum("--drop-unmapped" in s["reason"] for s in dropped.skipped) == 2


def _bad(args: list[str], tmp_path: Path) -> str:
    out = tmp_path / "bad" / "split.csv"
    result = runner.invoke(app, ["split", *args, "--out", str(out)])
    assert result.exit_code == 1, result.output
    assert len(result.output.strip().splitlines()) == 1 and "Traceback" not in result.output
    assert not out.exists() and not out.with_suffix(".json").exists()
    return _flat(result.output)


def test_bad_input_is_one_line_and_writes_nothing(pool: dict[str, Path], tmp_path: Path) -> None:
    root = tmp_path / "data"
    assert "Source path" in _bad([str(root / "clinic"), str(root / "nowhere")], tmp_path)
    make_class_folders(tmp_path / "x" / "clinic", {"melanoma": 2, "nevus": 2}, seed=9)
    assert "Two sources are named 'clinic'" in _bad(
        [str(root / "clinic"), str(tmp_path / "x" / "clinic")], tmp_path)
    typo = tmp_path / "typo.yaml"
    typo.write_text(f"sources:\n  - path: {root / 'clinic'}\n  - path: {root / 'archive'}\n"
                    "    class_map: {malignant melanoma: melanom}\n")
    msg = _bad(["--sources", str(typo)], tmp_path)
    assert "'melanom', which is not a class" in msg and "Did you mean: melanoma" in msg
    key = tmp_path / "key.yaml"
    key.write_text(f"sources:\n  - path: {root / 'clinic'}\n    clas_map: {{}}\n")
    msg = _bad(["--sources", str(key)], tmp_path)
    assert "unknown key 'clas_map'" in msg and "class_map" in msg
    msg = _bad(["--sources", str(pool["sources"]), "--test-source", "isic_archive"], tmp_path)
    assert "names no source" in msg and "isic-archive" in msg
    derm = make_class_folders(tmp_path / "derm", {"dermatofibroma": 3, "nevus": 3}, seed=7)
    assert derm
    msg = _bad([str(root / "clinic"), str(tmp_path / "derm"), "--test-source", "derm"], tmp_path)
    assert "leaves class 'dermatofibroma' with no training image" in msg
    assert "needs two or more sources" in _bad([str(root / "clinic"), "--test-source", "clinic"],
                                               tmp_path)


def test_declared_layout_is_checked(pool: dict[str, Path], tmp_path: Path) -> None:
    plan = SourcesPlan([SourceSpec(tmp_path / "data" / "clinic", layout="kaggle"),
                        SourceSpec(tmp_path / "data" / "archive")])
    with pytest.raises(SkinError, match="declared layout 'kaggle'"):
        load_sources(plan)


def test_source_is_a_subgroup() -> None:
    df = pd.DataFrame({"sex": ["", ""], "source": ["clinic", "ham"]})
    assert groups_from_frame(df) == {"source": ["clinic", "ham"]}


def test_evaluate_reports_metrics_per_source(tmp_path: Path,
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from helpers_run import make_run

    classes = ["melanoma", "nevus", "vascular lesion"]
    for i, name in enumerate(("clinic", "public")):
        make_class_folders(tmp_path / "data" / name, {c: 5 for c in classes}, seed=10 + i)
    monkeypatch.chdir(tmp_path)
    split = tmp_path / "pooled.csv"
    result = runner.invoke(app, ["split", "data/clinic", "data/public", "--out", str(split)])
    assert result.exit_code == 0, result.output
    run = make_run(tmp_path, classes=classes, name="tiny")
    result = runner.invoke(app, ["evaluate", str(run), "--split", str(split), "--subset", "all",
                                 "--bootstrap", "100", "--out", str(tmp_path / "ev")])
    assert result.exit_code == 0, result.output
    assert "source" in result.output
    sub = json.loads((tmp_path / "ev" / "metrics.json").read_text())["subgroups"]
    rows = {r["value"]: r for r in sub["attributes"]["source"]}
    assert set(rows) == {"clinic", "public"} and all(r["n"] == 15 for r in rows.values())
    for r in rows.values():
        lo, hi = r["ci95"]
        assert lo <= r["macro_f1"] <= hi and r["per_class_recall"]
    # The model card names each source and what it gave each split.
    from skincli.clinical.card import build, markdown

    shutil.copyfile(split, run / "split.csv")
    shutil.copyfile(split.with_suffix(".json"), run / "split.json")
    card = markdown(build(run))
    assert "- Source clinic: " in card and "- Source public: " in card
    assert "mapped onto one set of classes" in card


def test_predictions_logged_with_their_source(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("skincli.monitor.store")
    from helpers_run import make_run

    from skincli.monitor.store import open_store

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    make_run(tmp_path, classes=["melanoma", "nevus"], name="m1")
    for i in range(2):
        make_image(tmp_path / "images" / f"x{i}.jpg", seed=i)
    result = runner.invoke(app, ["predict", "--runs-dir", "runs", "images", "--json",
                                 "--source", "clinic-b"])
    assert result.exit_code == 0, result.output
    with open_store(str(tmp_path / "store.db")) as store:
        rows = store.predictions()
    assert list(rows["source"]) == ["clinic-b", "clinic-b"]
