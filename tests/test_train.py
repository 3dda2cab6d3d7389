"""Training end to end on tiny generated images with the tiny arch (seconds per run)."""

from __future__ import annotations

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from helpers_run import write_split_lines
from imagegen import make_class_folders, make_fake_jpeg

from skincli.errors import SkinError
from skincli.runs import load_run_info

COUNTS = {"blue": 10, "green": 8, "red": 6}

# Small, fast, non-deterministic-op settings; each test overrides what it is about.
FAST: dict[str, Any] = {"arch": "tiny", "epochs": 1, "fine_tune_epochs": 1, "batch_size": 8,
                        "deterministic": False, "lr": 0.01, "fine_tune_lr": 0.003}


def make_split_files(root: Path, counts: dict[str, int] = COUNTS, val_share: float = 0.3,
                     extra_train: list[tuple[Path, str]] | None = None,
                     size: tuple[int, int] = (40, 40)) -> Path:
    """Images in root/data/<class>/ plus a split.csv + split.json in `skin split`'s format."""
    made = make_class_folders(root / "data", counts, size=size)
    rows = []
    for label, files in made.items():
        n_val = max(1, int(len(files) * val_share))  # a class of one image has none to train
        rows += [(p, label, "val" if i < n_val else "train") for i, p in enumerate(files)]
    rows += [(Path(p), label, "train") for p, label in (extra_train or [])]
    lines = ["path,label,split,sha256,group"]
    for path, label, part in rows:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        lines.append(f"{path.relative_to(root / 'data').as_posix()},{label},{part},{digest},"
                     f"{digest[:12]}")
    return write_split_lines(root / "splits" / "split.csv", root / "data", lines)


@pytest.fixture()
def split(tmp_path: Path) -> Path:
    return make_split_files(tmp_path)


def _cfg(split: Path, **kw: Any) -> dict[str, Any]:
    return {**FAST, "split": str(split), "runs_dir": str(split.parent.parent / "runs"), **kw}


class StopAt:
    """A progress callback that raises `exc` when epoch number `epoch` has been saved."""

    def __init__(self, epoch: int, exc: type[BaseException] = KeyboardInterrupt) -> None:
        self.epoch, self.exc = epoch, exc
        self.events: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: str, info: dict[str, Any]) -> None:
        self.events.append((event, info))
        if event == "epoch" and info["epoch"] == self.epoch:
            raise self.exc("stop")


def test_end_to_end_run_folder_is_complete_and_serves_the_same_numbers(split: Path) -> None:
    from skincli.metrics import classification_metrics
    from skincli.predictor import Predictor
    from skincli.train import train

    events: list[str] = []
    run = train(_cfg(split, epochs=2, fine_tune_epochs=4),
                progress=lambda e, i: events.append(e))
    assert run == split.parent.parent / "runs" / "train"
    names = {p.name for p in run.iterdir()}
    assert {"model.keras", "run.json", "config.yaml", "history.csv", "history.png", "split.csv",
            "split.json", "versions.json"} <= names
    assert "ckpt" not in names and not list(run.parent.glob(".*.tmp"))
    info = load_run_info(run)
    assert info.arch == "tiny" and info.classes == sorted(COUNTS) and info.input_size == 64
    assert info.preprocessing["normalisation"]
    assert info.split_sha256 == hashlib.sha256(split.read_bytes()).hexdigest()
    assert info.extra["interrupted"] is False
    assert isinstance(info.temperature, float) and info.temperature > 0
    assert info.uncertain_threshold is not None and info.uncertain_threshold >= 0.0
    assert info.val_metrics["calibration"]["calibrated"] is True
    assert set(info.val_metrics["per_class_f1"]) == set(COUNTS)
    assert yaml.safe_load((run / "config.yaml").read_text())["epochs"] == 2
    history = (run / "history.csv").read_text().splitlines()
    assert len(history) == 1 + 6 and history[0].startswith("epoch,phase,loss")
    assert "tensorflow" in json.loads((run / "versions.json").read_text()) or \
        "tensorflow-cpu" in json.loads((run / "versions.json").read_text())
    assert events[0] == "start" and events.count("epoch") == 6
    # Only 6 validation images: too few for the out-of-distribution reference, said as a warning.
    assert [e for e in events if e != "warning"][-1] == "saving"
    assert "reference" not in info.extra and events[-1] == "warning"

    # The saved model, loaded the way `predict`/`evaluate` load it, reproduces val metrics.
    predictor = Predictor.from_run(run)
    val = [(line.split(",")[0], line.split(",")[1]) for line in
           split.read_text().splitlines()[1:] if line.split(",")[2] == "val"]
    data = split.parent.parent / "data"
    batch = np.stack([predictor.preprocess(data / p) for p, _ in val])
    labels = np.array([info.classes.index(lab) for _, lab in val])
    again = classification_metrics(labels, predictor.probabilities(batch), info.classes)
    assert again["macro_f1"] == pytest.approx(info.val_metrics["macro_f1"], abs=1e-6)
    preds = predictor.predict([data / val[0][0]])
    assert preds[0].label in COUNTS


def test_learns_colour_classes(split: Path) -> None:
    """Three clearly different colours: a working trainer must separate them."""
    from skincli.train import train

    run = train(_cfg(split, epochs=3, fine_tune_epochs=6, augment=0.5))
    assert load_run_info(run).val_metrics["macro_f1"] > 0.8


def test_same_seed_gives_the_same_run(tmp_path: Path) -> None:
    from skincli.train import train

    split = make_split_files(tmp_path)
    a = train(_cfg(split, name="a", mixup=0.2))  # default: no forced op determinism
    b = train(_cfg(split, name="b", mixup=0.2))

    def losses(run: Path) -> list[str]:
        return [line.split(",")[2] for line in (run / "history.csv").read_text().splitlines()[1:]]

    assert losses(a) == losses(b)


def test_ctrl_c_saves_best_so_far_and_resume_finishes(split: Path) -> None:
    from skincli.predictor import Predictor
    from skincli.train import resume, train

    stopper = StopAt(epoch=2)
    run = train(_cfg(split, epochs=2, fine_tune_epochs=2), progress=stopper)
    info = load_run_info(run)
    assert info.extra["interrupted"] is True and info.extra["epochs_run"] == 2
    assert (run / "ckpt" / "state.json").exists()
    assert Predictor.from_run(run).predict([split.parent.parent / "data" / "red" /
                                            "img_000.jpg"])[0].label in COUNTS

    phases: list[tuple[str, int]] = []
    done = resume("train", runs_dir=run.parent,
                  progress=lambda e, i: phases.append((i["phase"], i["start_epoch"]))
                  if e == "phase" else None)
    assert done == run
    info = load_run_info(done)
    assert info.extra["interrupted"] is False and info.extra["epochs_run"] == 4
    assert phases == [("fine-tune", 0)]  # the head phase was complete: not repeated
    assert not (done / "ckpt").exists()
    with pytest.raises(SkinError, match="nothing to resume"):
        resume("train", runs_dir=run.parent)


def test_crash_leaves_an_unfinished_folder_that_resumes_mid_phase(split: Path) -> None:
    from skincli.train import resume, train

    runs = split.parent.parent / "runs"
    with pytest.raises(RuntimeError):
        train(_cfg(split, epochs=3, fine_tune_epochs=0), progress=StopAt(2, RuntimeError))
    assert not (runs / "train").exists()  # a crashed run never looks finished
    assert (runs / ".train.tmp" / "ckpt" / "state.json").exists()
    phases: list[tuple[str, int]] = []
    done = resume("train", runs_dir=runs,
                  progress=lambda e, i: phases.append((i["phase"], i["start_epoch"]))
                  if e == "phase" else None)
    assert phases == [("head", 2)]
    assert load_run_info(done).extra["epochs_run"] == 3
    assert not (runs / ".train.tmp").exists()


def test_interrupt_before_the_first_epoch_leaves_nothing(split: Path) -> None:
    from skincli.train import train

    def stop(event: str, info: dict[str, Any]) -> None:
        if event == "batch":
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(split), progress=stop)
    assert not list((split.parent.parent / "runs").iterdir())


def test_unreadable_training_image_is_skipped_and_counted(tmp_path: Path) -> None:
    from skincli.train import train

    bad = make_fake_jpeg(tmp_path / "data" / "red" / "broken.jpg")
    split = make_split_files(tmp_path, extra_train=[(bad, "red")])
    info = load_run_info(train(_cfg(split)))
    assert info.extra["skipped_images"] == 1
    assert info.extra["skipped_files"] == [str(bad)]


def test_run_names_auto_increment_and_explicit_names_must_be_free(split: Path) -> None:
    from skincli.train import train

    first = train(_cfg(split, epochs=1, fine_tune_epochs=0))
    second = train(_cfg(split, epochs=1, fine_tune_epochs=0))
    assert (first.name, second.name) == ("train", "train2")
    with pytest.raises(SkinError, match="already exists"):
        train(_cfg(split, name="train2"))


def test_bad_inputs_fail_before_training(tmp_path: Path) -> None:
    from skincli.train import train

    split = make_split_files(tmp_path, counts={"a": 5, "b": 5, "lonely": 1})
    with pytest.raises(SkinError, match="'lonely' has no training images"):
        train(_cfg(split))
    with pytest.raises(SkinError, match="skin split"):
        train(_cfg(tmp_path / "nope.csv"))
    with pytest.raises(SkinError, match="efficientnet"):
        train(_cfg(split, arch="efficientnett"))
    assert not (tmp_path / "runs").exists() or not list((tmp_path / "runs").iterdir())


def test_disk_full_is_one_clear_error(split: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import errno

    from skincli.train import train, trainer

    def full(*args: Any, **kwargs: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer.np, "savez", full)
    with pytest.raises(SkinError, match="No space left on the disk while writing the checkpoint"):
        train(_cfg(split))


def test_fine_tune_top_n_and_batchnorm_stay_frozen() -> None:
    import keras

    from skincli.models.registry import build_model
    from skincli.train.model import set_phase_trainable

    built = build_model("tiny", 3, weights="none")
    set_phase_trainable(built, "head", "all")
    assert not built.backbone.trainable and built.model.get_layer("logits").trainable
    set_phase_trainable(built, "fine-tune", "top:4")
    layers = built.backbone.layers
    assert not any(la.trainable for la in layers[:-4])
    assert [la.trainable for la in layers[-4:] if la.weights] != []
    set_phase_trainable(built, "fine-tune", "all")
    bns = [la for la in layers if isinstance(la, keras.layers.BatchNormalization)]
    convs = [la for la in layers if isinstance(la, keras.layers.Conv2D)]
    assert bns and not any(la.trainable for la in bns)
    assert convs and all(la.trainable for la in convs)


def _val_outputs(run: Path, split: Path) -> tuple[Any, np.ndarray, np.ndarray]:
    """The saved model's validation logits, computed the way `skin evaluate` reads images."""
    from skincli.predictor import Predictor

    predictor = Predictor.from_run(run)
    val = [line.split(",")[:2] for line in split.read_text().splitlines()[1:]
           if line.split(",")[2] == "val"]
    data = split.parent.parent / "data"
    batch = np.stack(predictor.read_images([data / p for p, _ in val])).astype(np.float32)
    labels = np.array([predictor.classes.index(lab) for _, lab in val])
    return predictor, predictor.logits(batch), labels


def test_training_calibrates_like_evaluate_and_stores_the_ood_reference(tmp_path: Path) -> None:
    from skincli.calibration import calibrate
    from skincli.train import train

    split = make_split_files(tmp_path, counts={"blue": 8, "green": 8, "red": 8}, val_share=0.5)
    run = train(_cfg(split, fine_tune_epochs=0))
    info = load_run_info(run)
    predictor, logits, labels = _val_outputs(run, split)
    # The same calibration module, on the same validation images, gives the stored values.
    want = calibrate(logits, labels, info.config["uncertain_accuracy"])
    assert isinstance(info.temperature, float) and info.temperature > 0
    assert info.temperature == pytest.approx(want["temperature"], rel=1e-3)
    assert info.uncertain_threshold == pytest.approx(want["uncertain"]["threshold"], abs=1e-4)
    assert info.extra["uncertain_rule"] == want["uncertain"]["rule"]
    cal = info.val_metrics["calibration"]
    assert cal["n_val"] == 12 and cal["calibrated"] is True
    assert cal["val_nll_after"] <= cal["val_nll_before"] + 1e-9  # T minimises validation NLL
    assert cal["val_ece_before"] == pytest.approx(want["val_ece_before"], abs=1e-4)
    assert info.extra["calibration"]["temperature"] == info.temperature
    ref = info.extra["reference"]
    assert ref["n"] == 12 and "embedding" in ref and ref["colour"]["threshold"] > 0

    # `predict` can warn right away: a blank white image is flagged, a validation image is not.
    white = np.full((64, 64, 3), 255, np.uint8)
    val_image = split.parent.parent / "data" / "blue" / "img_000.jpg"
    flagged, normal = predictor.predict([white, val_image])
    assert any("does not look like" in w for w in flagged.warnings)
    assert normal.warnings == []


def test_no_calibrate_keeps_temperature_one(tmp_path: Path) -> None:
    from skincli.calibration import choose_uncertain_threshold, softmax
    from skincli.train import train

    split = make_split_files(tmp_path, counts={"blue": 8, "green": 8, "red": 8}, val_share=0.5)
    run = train(_cfg(split, fine_tune_epochs=0, calibrate=False))
    info = load_run_info(run)
    assert info.temperature == 1.0 and info.config["calibrate"] is False
    assert info.val_metrics["calibration"]["calibrated"] is False
    assert "calibration" not in info.extra
    _, logits, labels = _val_outputs(run, split)
    rule = choose_uncertain_threshold(softmax(logits), labels, 0.5)  # one rule, raw probs
    assert info.uncertain_threshold == pytest.approx(rule["threshold"], abs=1e-4)
    assert info.extra["reference"]["n"] == 12  # the reference does not depend on T


def test_calibrate_option_must_be_a_boolean(split: Path) -> None:
    from skincli.train import train

    with pytest.raises(SkinError, match="--calibrate"):
        train(_cfg(split, calibrate="maybe"))


def test_validation_inference_is_not_converted_by_autograph(monkeypatch: pytest.MonkeyPatch
                                                            ) -> None:
    """The per-epoch validation function never has its source parsed by autograph.

    When autograph cannot parse a function's source it logs "AutoGraph could not transform
    ... could not parse the source code" on every run; a parser that always fails shows it.
    """
    from tensorflow.python.autograph.pyct import parser

    from skincli.models.registry import build_model
    from skincli.train.model import inference_fn

    parsed: list[Any] = []

    def failing_parser(entity: Any, *args: Any, **kwargs: Any) -> Any:
        parsed.append(entity)
        raise ValueError("could not parse the source code")

    monkeypatch.setattr(parser, "parse_entity", failing_parser)
    built = build_model("tiny", 3, weights="none")
    fn = inference_fn(built.model, 64)
    probs = np.asarray(fn(np.zeros((2, 64, 64, 3), np.float32)))
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0, atol=1e-5)
    assert parsed == []
    # Autograph caches conversions per code object, so also check the switch itself.
    assert getattr(fn, "_autograph", None) is False


def test_mirrored_strategy_trains_on_one_cpu(split: Path) -> None:
    from skincli.train import train

    run = train(_cfg(split, strategy="mirrored", fine_tune_epochs=0))
    info = load_run_info(run)
    assert info.config["strategy"] == "mirrored" and info.extra["epochs_run"] == 1


def test_ema_changes_the_evaluated_weights_not_the_training(split: Path) -> None:
    import keras

    from skincli.train import train

    plain = train(_cfg(split, name="plain", epochs=2, fine_tune_epochs=0))
    ema = train(_cfg(split, name="ema", epochs=2, fine_tune_epochs=0, ema=0.5))

    def column(run: Path, i: int) -> list[str]:
        return [line.split(",")[i] for line in (run / "history.csv").read_text().splitlines()[1:]]

    assert column(plain, 2) == column(ema, 2)  # same training losses: the raw weights train
    a = keras.models.load_model(plain / "model.keras").get_layer("logits").get_weights()[0]
    b = keras.models.load_model(ema / "model.keras").get_layer("logits").get_weights()[0]
    assert not np.allclose(a, b)  # the saved model holds the averaged weights
