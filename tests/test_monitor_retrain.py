"""`skin monitor retrain`: leakage-safe merge, same held-out data, and the promotion guard.

Training and evaluation are injected (a fake trainer writes a run folder; a fake evaluator
returns probabilities of a chosen accuracy), so the decision logic is tested in seconds.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from imagegen import make_class_folders, make_image
from PIL import Image
from typer.testing import CliRunner

from skincli.data.dataset import load_dataset
from skincli.data.manifest import build_manifest
from skincli.data.split import make_split
from skincli.data.splitfile import load_split, write_split
from skincli.errors import SkinError
from skincli.monitor.retrain import LOG_FILE, retrain
from skincli.runs import CURRENT_FILE, RunInfo, load_run_info, save_run_info, set_current

CLASSES = ["alpha", "beta", "gamma"]


@pytest.fixture()
def world(tmp_path: Path) -> dict:
    make_class_folders(tmp_path / "data", {c: 12 for c in CLASSES}, seed=1)
    ds = load_dataset(tmp_path / "data")
    result = make_split(build_manifest(ds, cache=False, workers=1), val=0.25, test=0.25, seed=0,
                        min_per_split=1)
    runs = tmp_path / "runs"
    champ = runs / "champ"
    champ.mkdir(parents=True)
    write_split(result, champ / "split.csv")
    save_run_info(champ, RunInfo(name="champ", arch="tiny", classes=CLASSES, input_size=32,
                                 created="2026-01-01T00:00:00",
                                 config={"arch": "tiny", "epochs": 1, "seed": 0}))
    set_current(champ, runs)
    split = load_split(champ / "split.csv")
    test_files = split[split["split"] == "test"]["filepath"].tolist()
    train_files = split[split["split"] == "train"]["filepath"].tolist()

    new = tmp_path / "new"
    fresh = make_class_folders(new, {c: 4 for c in CLASSES}, seed=7)  # 12 genuinely new
    shutil.copy(test_files[0], new / "alpha" / "copy_of_test.jpg")       # same bytes as test
    shutil.copy(train_files[0], new / "beta" / "copy_of_train.jpg")      # same bytes as train
    Image.open(test_files[1]).save(new / "gamma" / "reencoded_test.png")  # near-copy of test
    make_image(new / "delta" / "unknown_class.jpg", seed=999)             # class unknown
    (new / "alpha" / "broken.jpg").write_bytes(b"not an image")           # unreadable
    truth = {str(Path(p).resolve()): lab for p, lab in zip(split["filepath"], split["label"])}
    return {"runs": runs, "champ": champ, "new": new, "fresh": fresh, "truth": truth,
            "test_files": {str(Path(p).resolve()) for p in test_files}, "split": split}


def fake_train(world: dict, calls: list) -> callable:
    def train(config: dict) -> Path:
        calls.append(config)
        merged = load_split(config["split"])
        # the test split is exactly the champion's, and nothing new went into it
        old = world["split"]
        assert sorted(merged[merged["split"] == "test"]["filepath"]) == sorted(
            old[old["split"] == "test"]["filepath"])
        run = Path(config["runs_dir"]) / config["name"]
        run.mkdir(parents=True)
        shutil.copy(config["split"], run / "split.csv")
        save_run_info(run, RunInfo(name=config["name"], arch="tiny", classes=CLASSES,
                                   input_size=32, created="2026-02-01T00:00:00",
                                   config=config))
        return run
    return train


def fake_evaluate(world: dict, accuracy: dict[str, float], seen: list) -> callable:
    """Probabilities that are right on the first `accuracy[run]` share of the images."""
    def evaluate(run_dir: Path, paths: list[str]) -> np.ndarray:
        seen.append((run_dir.name, list(paths)))
        acc = accuracy["champ" if run_dir.name == "champ" else "challenger"]
        out = np.full((len(paths), len(CLASSES)), 0.05)
        for i, p in enumerate(paths):
            true = CLASSES.index(world["truth"][str(Path(p).resolve())])
            guess = true if i < round(acc * len(paths)) else (true + 1) % len(CLASSES)
            out[i, guess] = 0.9
        return out
    return evaluate


def _run(world: dict, champ_acc: float, chall_acc: float, margin: float = 0.01):
    calls, seen = [], []
    res = retrain(world["new"], champion="champ", runs_dir=world["runs"], margin=margin,
                  train_fn=fake_train(world, calls),
                  evaluate_fn=fake_evaluate(world, {"champ": champ_acc,
                                                    "challenger": chall_acc}, seen),
                  n_boot=200)
    return res, calls, seen


def _current(world: dict) -> str:
    return (world["runs"] / CURRENT_FILE).read_text().strip()


def test_worse_challenger_is_never_promoted(world: dict) -> None:
    res, calls, seen = _run(world, champ_acc=0.8, chall_acc=0.5)
    assert not res.promoted and res.decision == "keep"
    assert _current(world) == "champ"
    assert len(calls) == 1
    # both models were evaluated on the same images: the champion's test split
    assert seen[0][1] == seen[1][1]
    assert {str(Path(p).resolve()) for p in seen[0][1]} == world["test_files"]
    assert res.evaluation["challenger"]["macro_f1"] < res.evaluation["champion"]["macro_f1"]


def test_equal_challenger_is_not_promoted_below_the_margin(world: dict) -> None:
    res, _, _ = _run(world, champ_acc=0.8, chall_acc=0.8, margin=0.01)
    assert not res.promoted and "< margin" in res.reason
    assert _current(world) == "champ"


def test_better_challenger_is_promoted_and_every_step_logged(world: dict) -> None:
    res, calls, _ = _run(world, champ_acc=0.6, chall_acc=1.0)
    assert res.promoted
    assert _current(world) == res.challenger == "champ-challenger"
    # the challenger used the champion's config with the merged split
    assert calls[0]["arch"] == "tiny" and calls[0]["split"].endswith("split.csv")
    steps = [json.loads(line) for line in (world["runs"] / LOG_FILE).read_text().splitlines()]
    assert [s["step"] for s in steps] == ["start", "data", "train", "trained", "evaluate",
                                          "decision"]
    assert len({s["retrain_id"] for s in steps}) == 1
    assert steps[-1]["promoted"] is True and "margin" in steps[-1]["reason"]
    assert steps[-2]["champion"]["macro_f1"] < steps[-2]["challenger"]["macro_f1"]


def test_data_merge_is_deduplicated_and_leakage_safe(world: dict) -> None:
    res = retrain(world["new"], champion="champ", runs_dir=world["runs"], dry_run=True)
    d = res.data
    assert d["found"] == 12 + 5
    assert d["unreadable"] == 1
    assert d["unknown_class"] == 1 and d["unknown_class_names"] == ["delta"]
    assert d["duplicate_existing"] == 2 and d["duplicate_test"] == 1
    assert d["near_duplicate_test"] == 1
    assert d["added_train"] + d["added_val"] == 12
    assert d["added_val"] >= 1
    merged = load_split(res.split_path)
    new_rows = merged[~merged["filepath"].isin(world["split"]["filepath"])]
    assert len(new_rows) == 12
    assert set(new_rows["split"]) <= {"train", "val"}
    fresh = {str(Path(p).resolve()) for ps in world["fresh"].values() for p in ps}
    assert {str(Path(p).resolve()) for p in new_rows["filepath"]} == fresh
    assert not any(Path(p).is_absolute() for p in new_rows["path"])  # portable split file
    assert _current(world) == "champ"  # a dry run changes nothing


def test_nothing_new_means_nothing_trained(world: dict, tmp_path: Path) -> None:
    only_dups = tmp_path / "dups"
    (only_dups / "alpha").mkdir(parents=True)
    shutil.copy(next(iter(world["test_files"])), only_dups / "alpha" / "x.jpg")
    calls: list = []
    res = retrain(only_dups, champion="champ", runs_dir=world["runs"],
                  train_fn=fake_train(world, calls), evaluate_fn=lambda *_: None)
    assert calls == [] and res.decision == "keep" and "no new image" in res.reason


def test_negative_margin_is_refused(world: dict) -> None:
    with pytest.raises(SkinError, match="margin"):
        retrain(world["new"], champion="champ", runs_dir=world["runs"], margin=-0.1)


def test_failed_training_is_logged_and_champion_kept(world: dict) -> None:
    def broken(config: dict) -> Path:
        raise SkinError("out of memory while training")

    with pytest.raises(SkinError):
        retrain(world["new"], champion="champ", runs_dir=world["runs"], train_fn=broken)
    last = json.loads((world["runs"] / LOG_FILE).read_text().splitlines()[-1])
    assert last["step"] == "failed" and "out of memory" in last["error"]
    assert _current(world) == "champ"
    assert load_run_info(world["champ"]).name == "champ"


def test_cli_dry_run(world: dict) -> None:
    from skincli.cli import app

    result = CliRunner().invoke(app, ["monitor", "retrain", "--data", str(world["new"]),
                                      "--run", "champ", "--runs-dir", str(world["runs"]),
                                      "--dry-run"])
    assert result.exit_code == 0, result.output
    assert "added to train" in result.output and "Dry run" in result.output


def test_cli_bad_new_data_is_one_line_with_advice_retrain_can_follow(world: dict,
                                                                      tmp_path: Path) -> None:
    from skincli.cli import app

    def run(data: Path) -> str:
        result = CliRunner().invoke(app, ["monitor", "retrain", "--data", str(data), "--run",
                                          "champ", "--runs-dir", str(world["runs"]),
                                          "--dry-run"])
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
        return " ".join(result.output.split())

    out = run(tmp_path / "nope")
    assert out.startswith(f"error: --data {tmp_path / 'nope'} does not exist")
    csv = tmp_path / "new.csv"
    csv.write_text("path,verdict\na.jpg,nevus\n")
    out = run(csv)
    assert "no label column" in out and "Rename the CSV columns to path and label" in out
    assert "--label-col" not in out  # retrain has no such option


def test_new_photograph_of_a_test_lesion_stays_out(tmp_path: Path) -> None:
    from skincli.monitor.retrain import merge_new_data

    data = tmp_path / "data"
    make_class_folders(data, {c: 10 for c in CLASSES}, seed=3)
    rows = [{"isic_id": p.stem, "diagnosis": p.parent.name, "lesion_id": f"L{i}"}
            for i, p in enumerate(sorted(data.rglob("*.jpg")))]
    import pandas as pd

    # make_class_folders reuses stems across classes: give each file a unique id first.
    for row, p in zip(rows, sorted(data.rglob("*.jpg"))):
        new_name = p.with_name(f"{p.parent.name[:2]}_{p.name}")
        p.rename(new_name)
        row["isic_id"] = new_name.stem
    pd.DataFrame(rows).to_csv(tmp_path / "meta.csv", index=False)
    ds = load_dataset(data, metadata=tmp_path / "meta.csv")
    result = make_split(build_manifest(ds, cache=False, workers=1), val=0.25, test=0.25, seed=0,
                        min_per_split=1)
    write_split(result, tmp_path / "split.csv")
    split = load_split(tmp_path / "split.csv")
    test_row = split[split["split"] == "test"].iloc[0]
    train_row = split[split["split"] == "train"].iloc[0]
    new = tmp_path / "new"
    make_image(new / test_row["label"] / "N_1.jpg", seed=501)   # same lesion as a test image
    make_image(new / train_row["label"] / "N_2.jpg", seed=502)  # same lesion as a train image
    make_image(new / train_row["label"] / "N_3.jpg", seed=503)  # a new lesion
    pd.DataFrame([{"isic_id": "N_1", "diagnosis": test_row["label"],
                   "lesion_id": test_row["lesion_id"]},
                  {"isic_id": "N_2", "diagnosis": train_row["label"],
                   "lesion_id": train_row["lesion_id"]},
                  {"isic_id": "N_3", "diagnosis": train_row["label"], "lesion_id": "L_new"}]
                 ).to_csv(tmp_path / "new_meta.csv", index=False)
    merged, added, summary = merge_new_data(split, new, CLASSES,
                                            metadata={"metadata": tmp_path / "new_meta.csv"})
    assert summary["same_lesion_test"] == 1
    assert sorted(Path(p).name for p in added["path"]) == ["N_2.jpg", "N_3.jpg"]
    assert added.loc[added["path"].str.endswith("N_2.jpg"), "split"].item() == "train"
