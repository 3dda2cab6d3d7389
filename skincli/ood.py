"""Does this image look like the training images? The out-of-distribution reference.

Out-of-distribution reference (run.json `extra["reference"]`, written by `skin evaluate
--calibrate` from the run's validation images when missing, or by `build_reference`):

- embedding (the main signal): root-mean-square over dimensions of the embedding's z-scores
  against the reference mean and standard deviation (each standard deviation floored at 0.1 x
  their median, so near-constant features cannot explode the score); flagged above
  1.5 x the 99th percentile of the reference images' own scores.
- colour (a coarse second check): per-channel mean and standard deviation and the mean
  saturation of the model-input image, as max |z|; flagged above max(2 x the 99th percentile
  of the reference, 6).

Measured with a short EfficientNet-Lite0 run on ISIC (reference: its 246 validation images):
2% of the ISIC Test-folder images (2 of 102) and 1% of the Train-folder images were flagged;
three natural photographs and a pure-noise image were flagged, but a blank white image and a
striped "document" were not (their embeddings are unremarkable). It is a warning, not a gate.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from skincli.image_quality import OOD_WARNING, quality_warnings

_COLOUR_FEATURES = ("mean_r", "mean_g", "mean_b", "std_r", "std_g", "std_b", "saturation")


def colour_features(batch: np.ndarray) -> np.ndarray:
    """Cheap colour statistics (N, 7) of model-input images (N, S, S, 3) in 0..255."""
    x = np.asarray(batch, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, len(_COLOUR_FEATURES)), np.float64)
    flat = x.reshape(len(x), -1, 3)
    mean = flat.mean(axis=1)
    std = flat.std(axis=1)
    hi, lo = flat.max(axis=2), flat.min(axis=2)
    sat = ((hi - lo) / np.maximum(hi, 1.0)).mean(axis=1, keepdims=True)
    return np.concatenate([mean, std, sat], axis=1).astype(np.float64)


REFERENCE_VERSION = 2
EMBEDDING_MARGIN, COLOUR_MARGIN, COLOUR_FLOOR = 1.5, 2.0, 6.0
_EMBEDDING_SD_FLOOR = 0.1  # x the median standard deviation


def _threshold(scores: np.ndarray, margin: float, floor: float = 0.0) -> float:
    return float(max(margin * np.quantile(scores, 0.99), floor))


def build_reference(batch_features: np.ndarray, embeddings: np.ndarray | None,
                    source: str = "") -> dict[str, Any]:
    """Reference statistics for `input_warnings` from colour features (N, 7) and embeddings.

    Store the result in run.json `extra["reference"]`.
    """
    feats = np.asarray(batch_features, dtype=np.float64)
    if len(feats) < 10:
        raise ValueError("a reference needs at least 10 images")
    mu, sd = feats.mean(axis=0), feats.std(axis=0)
    ref: dict[str, Any] = {
        "version": REFERENCE_VERSION, "n": int(len(feats)), "source": source,
        "colour": {"features": list(_COLOUR_FEATURES), "mean": mu.tolist(),
                   "std": sd.tolist()},
    }
    if embeddings is not None and len(embeddings) == len(feats):
        e = np.asarray(embeddings, dtype=np.float64)
        ref["embedding"] = {"dims": int(e.shape[1]), "mean": e.mean(axis=0).tolist(),
                            "std": e.std(axis=0).tolist()}
    parsed = parse_reference(ref, thresholds=False)
    assert parsed is not None
    scores = _scores_from_features(parsed, feats, embeddings)
    ref["colour"]["threshold"] = _threshold(scores["colour"], COLOUR_MARGIN, COLOUR_FLOOR)
    if "embedding" in ref and scores["embedding"] is not None:
        ref["embedding"]["threshold"] = _threshold(scores["embedding"], EMBEDDING_MARGIN)
    return _round(ref)


def _round(value: Any) -> Any:
    if isinstance(value, float):
        return float(f"{value:.6g}")
    if isinstance(value, dict):
        return {k: _round(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_round(v) for v in value]
    return value


def parse_reference(raw: Any, thresholds: bool = True) -> dict[str, Any] | None:
    """run.json's reference -> arrays; None when absent or unusable (never raises)."""
    try:
        if raw.get("version") != REFERENCE_VERSION:  # scores of another definition
            return None
        colour = raw["colour"]
        mu = np.asarray(colour["mean"], dtype=np.float64)
        sd = np.asarray(colour["std"], dtype=np.float64)
        # A floor on the spread so a constant feature in the reference does not explode z.
        ref: dict[str, Any] = {
            "colour_mean": mu, "colour_std": np.maximum(sd, 1.0),
            "colour_threshold": float(colour["threshold"]) if thresholds else np.inf,
            "embedding_mean": None, "embedding_std": None, "embedding_threshold": np.inf,
        }
        emb = raw.get("embedding")
        if emb:
            esd = np.asarray(emb["std"], dtype=np.float64)
            ref["embedding_mean"] = np.asarray(emb["mean"], dtype=np.float64)
            ref["embedding_std"] = np.maximum(
                esd, _EMBEDDING_SD_FLOOR * max(float(np.median(esd)), 1e-6))
            if thresholds:
                ref["embedding_threshold"] = float(emb["threshold"])
        return ref
    except (TypeError, KeyError, ValueError, AttributeError):
        return None


def _scores_from_features(ref: dict[str, Any], feats: np.ndarray,
                          embeddings: np.ndarray | None) -> dict[str, np.ndarray | None]:
    z = np.abs((feats - ref["colour_mean"]) / ref["colour_std"])
    out: dict[str, np.ndarray | None] = {"colour": z.max(axis=1), "embedding": None}
    mu = ref["embedding_mean"]
    if mu is not None and embeddings is not None and np.shape(embeddings)[1:] == mu.shape:
        ez = (np.asarray(embeddings, dtype=np.float64) - mu) / ref["embedding_std"]
        out["embedding"] = np.sqrt((ez * ez).mean(axis=1))
    return out


def reference_scores(ref: dict[str, Any], batch: np.ndarray,
                     embeddings: np.ndarray | None = None) -> dict[str, np.ndarray | None]:
    """Per-image distance scores to a parsed reference: {"colour": (N,), "embedding": (N,)}."""
    return _scores_from_features(ref, colour_features(batch), embeddings)


def input_warnings(ref: dict[str, Any] | None, batch: np.ndarray,
                   embeddings: np.ndarray | None = None) -> list[list[str]]:
    """Per image, warnings when it is blank or looks unlike the parsed reference's images."""
    n = len(batch)
    out: list[list[str]] = quality_warnings(batch)  # blank/uniform: no reference needed
    if ref is None or n == 0:
        return out
    scores = reference_scores(ref, batch, embeddings)
    for i in range(n):
        reasons = []
        if scores["colour"] is not None and scores["colour"][i] > ref["colour_threshold"]:
            reasons.append("colours")
        if scores["embedding"] is not None and scores["embedding"][i] > ref[
                "embedding_threshold"]:
            reasons.append("image features")
        if reasons:
            out[i].append(f"{OOD_WARNING} ({' and '.join(reasons)} far outside the "
                          "training images); treat this result with extra caution")
    return out
