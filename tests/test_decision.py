"""Decision rules: priors, re-weighting, macro-F1 offsets, storage in run.json, the Predictor
hook, and `skin predict --decision` / `--prevalence` with their bad inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers_run import make_run
from imagegen import make_class_folders, make_image
from typer.testing import CliRunner

from skincli.cli import app
from skincli.decision import (
    Decision,
    check_rule,
    decision_summary,
    fit_decision,
    fit_offsets,
    model_prior,
    read_prior,
    write_prior,
)
from skincli.errors import SkinError
from skincli.evaluate import resolve_decision
from skincli.metrics import balanced_accuracy, macro_f1
from skincli.runs import RunInfo, load_run_info

runner = CliRunner()
CLASSES = ["melanoma", "nevus", "vascular lesion"]
TRAIN = {"melanoma": 4, "nevus": 10, "vascular lesion": 2}  # imbalanced on purpose


def _flat(text: str) -> str:
    return " ".join(text.split())


def gaussian_stream(prior: np.ndarray, n: int, seed: int, sep: float = 1.2
                    ) -> tuple[np.ndarray, np.ndarray]:
    """Labels drawn from `prior`, x ~ N(mu_y, I) in 2-D; returns (exact posteriors under a
    uniform prior, i.e. perfectly calibrated probabilities of a balanced-trained model, y)."""
    rng = np.random.default_rng(seed)
    c = len(prior)
    angles = 2 * np.pi * np.arange(c) / c
    mu = sep * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    y = rng.choice(c, size=n, p=prior)
    x = mu[y] + rng.normal(size=(n, 2))
    z = x @ mu.T - 0.5 * (mu * mu).sum(axis=1)
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    return p / p.sum(axis=1, keepdims=True), y


def _info(**kw: object) -> RunInfo:
    return RunInfo(name="r", arch="tiny", classes=list(CLASSES), input_size=32,
                   uncertain_threshold=0.4, **kw)  # type: ignore[arg-type]


# --- rules and priors --------------------------------------------------------------------------

def test_unknown_rule_is_one_line_with_the_choices() -> None:
    assert check_rule(None) == "balanced" and check_rule("Macro-F1") == "macro-f1"
    with pytest.raises(SkinError) as err:
        check_rule("prevalance")
    text = str(err.value)
    assert "\n" not in text and "Did you mean: prevalence" in text and "macro-f1" in text


def test_prior_files_yaml_csv_and_normalisation(tmp_path: Path) -> None:
    y = tmp_path / "p.yaml"
    y.write_text("melanoma: 0.2\nnevus: 0.7\nvascular lesion: 0.1\n")
    prior, warnings = read_prior(y, CLASSES)
    assert prior == pytest.approx({"melanoma": 0.2, "nevus": 0.7, "vascular lesion": 0.1})
    assert warnings == []
    c = tmp_path / "p.csv"
    c.write_text("class,prevalence\nmelanoma,20\nnevus,70\nvascular lesion,10\n")  # counts
    prior, warnings = read_prior(c, CLASSES)
    assert prior["nevus"] == pytest.approx(0.7)
    assert len(warnings) == 1 and "normalised" in warnings[0]
    # what `skin monitor --suggest-prevalence` writes reads back unchanged
    out = write_prior(tmp_path / "s.yaml", {"melanoma": 0.25, "nevus": 0.5,
                                            "vascular lesion": 0.25}, comment="estimated")
    assert read_prior(out, CLASSES)[0]["vascular lesion"] == pytest.approx(0.25)


@pytest.mark.parametrize("body, expected", [
    ("melanoma: 0.2\nnevus: 0.7\nvascular lesion: 0.05\nbasal cell: 0.05\n", "does not know"),
    ("melanoma: 0.3\nnevus: 0.7\n", "no prevalence for 'vascular lesion'"),
    ("melanoma: -0.2\nnevus: 0.7\nvascular lesion: 0.5\n", "must be a positive number"),
    ("melanoma: 0\nnevus: 0\nvascular lesion: 0\n", "every prevalence is 0"),
    ("melanoma: 0\nnevus: 0.9\nvascular lesion: 0.1\n", "could never be predicted"),
    ("melanoma: lots\nnevus: 0.9\nvascular lesion: 0.1\n", "not a number"),
    ("- just\n- a list\n", "no `class: value` mapping"),
    ("melanoma: [0.2\n", "not valid YAML"),
])
def test_bad_priors_are_refused_in_one_line(tmp_path: Path, body: str, expected: str) -> None:
    f = tmp_path / "p.yaml"
    f.write_text(body)
    with pytest.raises(SkinError) as err:
        read_prior(f, CLASSES)
    assert expected in str(err.value) and "\n" not in str(err.value)


def test_model_prior_uniform_when_balanced_training() -> None:
    counts = {"melanoma": 10, "nevus": 80, "vascular lesion": 10}
    assert model_prior(_info(), counts)[0] == pytest.approx([1 / 3] * 3)
    natural = model_prior(_info(config={"oversample": False}), counts)[0]
    assert natural == pytest.approx([0.1, 0.8, 0.1])


def test_prevalence_rule_trades_balanced_accuracy_for_accuracy() -> None:
    prior = np.array([0.1, 0.8, 0.1])
    val_p, val_y = gaussian_stream(prior, 1500, seed=1)
    test_p, test_y = gaussian_stream(prior, 6000, seed=2)
    info = _info()
    d = fit_decision("prevalence", info, val_p, val_y, prior=dict(zip(CLASSES, prior)),
                     prior_source="test")
    adj = d.apply(test_p)
    assert adj.sum(axis=1) == pytest.approx(np.ones(len(adj)))
    # exactly Bayes' rule: p * prior / uniform, renormalised
    expected = test_p * prior / (test_p * prior).sum(axis=1, keepdims=True)
    assert adj == pytest.approx(expected)
    acc_b = (test_p.argmax(1) == test_y).mean()
    acc_p = (adj.argmax(1) == test_y).mean()
    assert acc_p > acc_b + 0.05
    assert balanced_accuracy(test_y, adj.argmax(1)) < balanced_accuracy(test_y, test_p.argmax(1))
    assert d.uncertain_threshold is not None and d.uncertain_threshold != info.uncertain_threshold
    assert "refitted" in d.threshold_source


def test_macro_f1_offsets_do_not_lower_validation_macro_f1() -> None:
    # a miscalibrated, skewed model: offsets must find something at least as good
    val_p, val_y = gaussian_stream(np.array([0.15, 0.7, 0.15]), 900, seed=3)
    skew = val_p * np.array([1.0, 3.0, 1.0])
    skew /= skew.sum(axis=1, keepdims=True)
    b = fit_offsets(skew, val_y)
    before = macro_f1(val_y, skew.argmax(1))
    after = macro_f1(val_y, (np.log(skew) + b).argmax(1))
    assert after > before and abs(b.mean()) < 1e-9
    assert b[1] < b[0] and b[1] < b[2]  # it undid the skew towards nevus
    d = fit_decision("macro-f1", _info(), skew, val_y)
    assert d.fitted["val_macro_f1_after"] == pytest.approx(after)
    with pytest.raises(SkinError, match="validation images"):
        fit_decision("macro-f1", _info(), None, None)


def test_decision_summary_names_rule_and_prior() -> None:
    info = _info(extra={"decisions": {"train_counts": {"melanoma": 1, "nevus": 2,
                                                       "vascular lesion": 1}}})
    s = decision_summary(info)
    assert s["rule"] == "balanced" and s["training_prior"]["nevus"] == 0.5
    d = Decision("prevalence", CLASSES, np.array([0.5, 2.0, 0.5]), 0.3,
                 prior={"melanoma": 0.2, "nevus": 0.6, "vascular lesion": 0.2},
                 prior_source="file clinic.yaml")
    s = decision_summary(info, d)
    assert s["rule"] == "prevalence" and s["prior"]["nevus"] == 0.6
    assert "clinic.yaml" in s["description"] and json.dumps(s)


# --- with a run -------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def split_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, list[Path]]]:
    root = tmp_path_factory.mktemp("data")
    return {"train": make_class_folders(root / "train", TRAIN, seed=0),
            "val": make_class_folders(root / "val", {c: 8 for c in CLASSES}, seed=1),
            "test": make_class_folders(root / "test", {c: 5 for c in CLASSES}, seed=2)}


@pytest.fixture()
def env(tmp_path: Path, split_files: dict, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("SKIN_STORE", str(tmp_path / "store.db"))
    make_run(tmp_path, classes=CLASSES, name="withsplit", split_files=split_files,
             uncertain_threshold=0.34, created="2026-01-01T00:00:00")
    make_run(tmp_path, classes=CLASSES, name="nosplit", created="2026-01-02T00:00:00")
    for i in range(3):
        make_image(tmp_path / "images" / f"x{i}.jpg", seed=40 + i)
    return tmp_path


def test_resolve_uses_training_counts_and_stores_the_fit(env: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import skincli.evaluate.refit as refit
    from skincli.predictor import Predictor

    pred = Predictor.from_run("withsplit", env / "runs")
    d = resolve_decision(pred, "prevalence")
    assert d.prior == pytest.approx({c: n / 16 for c, n in TRAIN.items()})
    assert d.prior_source == "training split (16 images)" and d.fitted["n_val"] == 24
    stored = load_run_info(env / "runs" / "withsplit").extra["decisions"]
    assert stored["train_counts"] == TRAIN and stored["fits"][0]["rule"] == "prevalence"

    # the second time it comes from run.json: no validation pass
    def no_val(*a: object, **k: object) -> None:
        raise AssertionError("refitted although run.json holds the operating point")

    monkeypatch.setattr(refit.Validation, "scored", no_val)
    again = resolve_decision(Predictor.from_run("withsplit", env / "runs"), "prevalence")
    assert again.uncertain_threshold == d.uncertain_threshold
    assert again.weights == pytest.approx(d.weights)

    # the hook: verdicts answer under the rule, calibrated probabilities kept for the log
    batch = np.stack([pred.preprocess(str(p)) for p in sorted((env / "images").glob("*.jpg"))])
    cal = pred.probabilities(batch)
    pred.set_decision(d)
    out = pred.verdicts(cal)
    assert [o.decision for o in out] == ["prevalence"] * 3
    assert np.array([list(o.probabilities.values()) for o in out]) == pytest.approx(
        d.apply(cal), abs=1e-9)
    assert np.array([list(o.calibrated.values()) for o in out]) == pytest.approx(cal)
    assert pred.model_summary()["decision"] == "prevalence"
    assert pred.model_summary()["uncertain_threshold"] == d.uncertain_threshold


def test_prevalence_without_counts_is_one_line(env: Path) -> None:
    from skincli.predictor import Predictor

    with pytest.raises(SkinError, match="no training class counts"):
        resolve_decision(Predictor.from_run("nosplit", env / "runs"), "prevalence")
    result = runner.invoke(app, ["predict", "images", "--run", "nosplit", "--decision",
                                 "prevalence", "--no-log"])
    assert result.exit_code == 1
    out = _flat(result.output)
    assert "no training class counts" in out and "--prevalence FILE" in out
    assert "Traceback" not in result.output


def test_predict_cli_bad_decision_inputs(env: Path) -> None:
    bad = runner.invoke(app, ["predict", "images", "--decision", "bayes", "--no-log"])
    assert bad.exit_code == 1 and "Unknown --decision 'bayes'" in _flat(bad.output)
    f = env / "p.yaml"
    f.write_text("melanoma: 0.5\nnevus: 0.5\n")
    res = runner.invoke(app, ["predict", "images", "--run", "withsplit", "--decision",
                              "prevalence", "--prevalence", str(f), "--no-log"])
    assert res.exit_code == 1 and "no prevalence for 'vascular lesion'" in _flat(res.output)
    res = runner.invoke(app, ["predict", "images", "--prevalence", str(f), "--no-log"])
    assert res.exit_code == 1 and "applies to --decision prevalence" in _flat(res.output)
    assert "Traceback" not in res.output


def test_predict_cli_names_the_rule_and_logs_calibrated(env: Path) -> None:
    from skincli.monitor.store import open_store

    f = env / "clinic.csv"
    f.write_text("class,prevalence\nmelanoma,0.05\nnevus,0.9\nvascular lesion,0.05\n")
    res = runner.invoke(app, ["predict", "images", "--run", "withsplit", "--decision",
                              "prevalence", "--prevalence", str(f), "--json"])
    assert res.exit_code == 0, res.output
    doc = json.loads(res.stdout)
    assert doc["decision"]["rule"] == "prevalence" and doc["model"]["decision"] == "prevalence"
    assert doc["decision"]["prior"]["nevus"] == pytest.approx(0.9)
    assert all(p["decision"] == "prevalence" for p in doc["predictions"])
    plain = runner.invoke(app, ["predict", "images", "--run", "withsplit", "--json",
                                "--no-log"])
    base = json.loads(plain.stdout)
    assert base["decision"]["rule"] == "balanced"
    with open_store(str(env / "store.db")) as store:
        logged = store.predictions()
    assert len(logged) == 3
    for row, p in zip(logged.sort_values("request_id").itertuples(),
                      sorted(base["predictions"], key=lambda p: p["file"])):
        # the log keeps the calibrated probabilities, not the re-weighted answer
        assert row.probabilities == pytest.approx(p["probabilities"], abs=1e-5)
    table = runner.invoke(app, ["predict", "images", "--run", "withsplit", "--decision",
                                "macro-f1", "--no-log"])
    assert table.exit_code == 0, table.output
    assert "decision macro-f1" in _flat(table.output)


def test_serve_decision_in_responses_and_model(env: Path, tmp_path: Path) -> None:
    from test_serve_support import image_bytes, serving, upload

    from skincli.serve.settings import Settings

    with serving(env / "runs", run="withsplit", decision="prevalence") as client:
        body = client.get("/v1/model").json()
        assert body["decision"]["rule"] == "prevalence"
        assert body["decision"]["prior_source"] == "training split (16 images)"
        assert body["serving"]["decision"] == "prevalence"
        r = client.post("/v1/predict", files=upload(image_bytes()))
        assert r.status_code == 200 and r.json()["prediction"]["decision"] == "prevalence"
    with serving(env / "runs", run="withsplit") as client:
        r = client.post("/v1/predict", files=upload(image_bytes()))
        assert r.json()["prediction"]["decision"] == "balanced"
    s = Settings.from_env({"SKIN_DECISION": "macro-f1"})
    assert s.decision == "macro-f1" and s.to_env()["SKIN_DECISION"] == "macro-f1"
    with pytest.raises(SkinError, match="Unknown --decision"):
        Settings.from_env({"SKIN_DECISION": "nope"})
    with pytest.raises(SkinError, match="does not exist"):
        Settings.from_env({"SKIN_DECISION": "prevalence", "SKIN_PREVALENCE": "missing.yaml"})
    cli = runner.invoke(app, ["serve", "nosplit", "--decision", "prevalence", "--port", "0"])
    assert cli.exit_code == 1 and "no training class counts" in _flat(cli.output)


# --- skin evaluate: the rules side by side -------------------------------------------------------

def test_evaluate_shows_rules_side_by_side_and_the_frontier(env: Path) -> None:
    res = runner.invoke(app, ["evaluate", "withsplit", "--bootstrap", "100", "--out", "rep"])
    assert res.exit_code == 0, res.output
    out = _flat(res.output)
    assert "Decision rules on the same 15 images" in out
    header = next(line for line in res.output.splitlines()
                  if "metric" in line and "prevalence" in line)
    assert [w for w in header.split() if w.isalpha() or "-" in w] == [
        "metric", "balanced", "prevalence", "macro-f1"]
    assert "recall" in out and "uncertain share" in out
    metrics = json.loads((env / "rep" / "metrics.json").read_text())
    dec = metrics["decisions"]
    assert [r["rule"] for r in dec["rules"]] == ["balanced", "prevalence", "macro-f1"]
    # the balanced rule is the main evaluation itself
    assert dec["rules"][0]["accuracy"] == pytest.approx(metrics["metrics"]["accuracy"])
    assert dec["rules"][0]["ci95"] == metrics["metrics"]["ci95"]
    for r in dec["rules"]:
        lo, hi = r["ci95"]["accuracy"]
        assert lo <= r["accuracy"] <= hi
        rec = r["per_class_recall"]["nevus"]
        assert rec["n"] == 5 and rec["ci95"][0] <= rec["recall"] <= rec["ci95"][1]
    front = dec["frontier"]
    assert len(front) == 11 and front[0]["t"] == 0 and front[-1]["t"] == 1
    # the two ends of the frontier are the balanced and the prevalence rule
    assert front[0]["accuracy"] == pytest.approx(dec["rules"][0]["accuracy"])
    assert front[-1]["accuracy"] == pytest.approx(dec["rules"][1]["accuracy"])
    assert (env / "rep" / "decision_frontier.png").stat().st_size > 1000
    fits = load_run_info(env / "runs" / "withsplit").extra["decisions"]["fits"]
    assert {f["rule"] for f in fits} == {"prevalence", "macro-f1"}


def test_evaluate_without_counts_notes_the_missing_rule(env: Path, split_files: dict) -> None:
    from helpers_run import make_split

    # a run whose split.csv has no train rows: no counts, but validation images for macro-f1
    run = make_run(env, classes=CLASSES, name="notrain", created="2026-01-03T00:00:00")
    make_split(run, {"val": split_files["val"], "test": split_files["test"]})
    res = runner.invoke(app, ["evaluate", "notrain", "--bootstrap", "50", "--out", "rep2"])
    assert res.exit_code == 0, res.output
    assert "prevalence rule not evaluated" in _flat(res.output)
    dec = json.loads((env / "rep2" / "metrics.json").read_text())["decisions"]
    assert [r["rule"] for r in dec["rules"]] == ["balanced", "macro-f1"]
    assert "frontier" not in dec and not (env / "rep2" / "decision_frontier.png").exists()


# --- skin export ---------------------------------------------------------------------------------

def test_export_builds_the_rule_into_the_probabilities(env: Path) -> None:
    import tensorflow as tf

    from skincli.predictor import Predictor

    f = env / "clinic.yaml"
    f.write_text("melanoma: 0.1\nnevus: 0.8\nvascular lesion: 0.1\n")
    res = runner.invoke(app, ["export", "withsplit", "--out", "exported", "--decision",
                              "prevalence", "--prevalence", str(f)])
    assert res.exit_code == 0, res.output
    assert "Decision rule: prevalence" in res.output
    target = env / "exported" / "withsplit" / "1"
    meta = json.loads((target / "assets.extra" / "skin.json").read_text())
    assert meta["decision"]["rule"] == "prevalence" and meta["decision"]["prior"]["nevus"] == 0.8
    pred = Predictor.from_run("withsplit", env / "runs")
    pred.set_decision(resolve_decision(pred, "prevalence", f))
    pixels = np.stack([pred.preprocess(str(p)) for p in sorted((env / "images").glob("*.jpg"))])
    expected = pred.decide(pred.probabilities(pixels))
    assert not np.allclose(expected, pred.probabilities(pixels), atol=1e-3)  # the rule matters
    loaded = tf.saved_model.load(str(target))
    got = loaded.signatures["predict_pixels"](pixels=tf.constant(pixels))["probabilities"]
    np.testing.assert_allclose(got.numpy(), expected, atol=1e-5)
    bad = runner.invoke(app, ["export", "nosplit", "--out", "exported", "--decision",
                              "prevalence"])
    assert bad.exit_code == 1 and "no training class counts" in _flat(bad.output)
    assert not (env / "exported" / "nosplit").exists()
    typo = runner.invoke(app, ["export", "withsplit", "--decision", "maco-f1"])
    assert typo.exit_code == 1 and "Did you mean: macro-f1" in _flat(typo.output)
