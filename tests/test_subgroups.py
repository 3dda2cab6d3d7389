"""Subgroup metrics with bootstrap intervals (skincli.subgroups)."""

import numpy as np
import pytest

from skincli.subgroups import age_band, groups_from_frame, subgroup_metrics


@pytest.mark.parametrize("age, band", [("55", "45-59"), ("5", "<30"), ("80.0", "75+"),
                                       ("", ""), ("n/a", ""), (None, "")])
def test_age_band(age: object, band: str) -> None:
    assert age_band(age) == band


def test_a_subgroup_wholly_below_overall_is_flagged() -> None:
    rng = np.random.default_rng(0)
    n = 400
    y = rng.integers(0, 3, n)
    pred = y.copy()
    sex = np.where(np.arange(n) < 300, "male", "female")
    # Women: predictions at random; men: perfect.
    women = sex == "female"
    pred[women] = rng.integers(0, 3, women.sum())
    out = subgroup_metrics(y, pred, ["a", "b", "c"], {"sex": list(sex), "site": [""] * n},
                           n_boot=300, seed=1)
    rows = {r["value"]: r for r in out["attributes"]["sex"]}
    assert rows["male"]["macro_f1"] == pytest.approx(1.0)
    assert rows["female"]["below_overall"] and not rows["male"]["below_overall"]
    assert [f["value"] for f in out["flagged"]] == ["female"]
    assert rows["female"]["ci95"][1] < out["overall_macro_f1"]
    assert "site" not in out["attributes"]  # no values: not reported


def test_small_subgroups_are_listed_not_scored() -> None:
    y = np.array([0, 1] * 10)
    out = subgroup_metrics(y, y, ["a", "b"], {"sex": ["f"] * 18 + ["m"] * 2}, n_boot=50)
    rows = {r["value"]: r for r in out["attributes"]["sex"]}
    assert "macro_f1" not in rows["m"] and "fewer than" in rows["m"]["note"]


def test_groups_from_frame_skips_empty_columns() -> None:
    import pandas as pd

    df = pd.DataFrame({"sex": ["male", ""], "age": ["40", "77"], "site": ["", ""]})
    assert groups_from_frame(df) == {"sex": ["male", ""], "age_band": ["30-44", "75+"]}
