"""Evaluate trained runs: metrics with uncertainty, calibration, TTA and paired comparisons.

What to evaluate on and how its images are read is `skincli.data.evalset`. The rooms here:

- `scoring`:    a loaded run over labelled images (logits with TTA views, embeddings).
- `refit`:      the validation images scored once; the temperature and uncertain threshold,
                the decision rules' operating points and the triage threshold fitted on them.
- `rules`:      every decision rule and the triage threshold on the evaluated images.
- `evaluation`: one run, or two compared, on one set of images (`evaluate`); with a defer target
                also the answer-or-defer operating point (skincli.defer) fitted on the same
                scored validation images.
- `compare`:    the paired comparison of two runs and the warnings of a result.
- `report`, `plots`: the report folder (metrics.json, CSVs, PNG plots).

`calibrate=True` fits the temperature on the validation part of the run's split, re-chooses the
uncertain threshold on the calibrated probabilities, computes the out-of-distribution reference
from the same images if run.json has none, and stores all of it in run.json.
"""

from skincli.data.evalset import lesion_groups, load_eval_set
from skincli.evaluate.evaluation import (
    MAX_BOOTSTRAP,
    evaluate,
    evaluate_predictor,
    is_own_test_split,
    store_test_metrics,
)
from skincli.evaluate.refit import (
    Validation,
    calibrate_run,
    ensure_triage,
    refit_triage,
    resolve_decision,
)
from skincli.evaluate.report import default_out, public, write_report
from skincli.evaluate.scoring import Scored, score
from skincli.predictor import load_predictor

__all__ = ["MAX_BOOTSTRAP", "Scored", "Validation", "calibrate_run", "default_out",
           "ensure_triage", "evaluate", "evaluate_predictor", "is_own_test_split",
           "lesion_groups", "load_eval_set", "load_predictor", "public", "refit_triage",
           "resolve_decision", "score", "store_test_metrics", "write_report"]
