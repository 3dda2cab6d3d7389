"""The metadata term of a run trained with `--use-metadata`: age, sex and site beside the image.

A run trained with metadata adds to the image model's logits a linear term of the patient's
sex, age band and anatomical site (one-hot each, ISIC 2019-style late fusion of metadata into
the classification head, trained jointly with the network):

    logits = image_logits + encode(sex, age band, site) @ W        (W: D x C, no bias)

Two choices make "no metadata" mean "no evidence":

- every field's one-hot is centred on its training frequencies, and a missing field encodes
  as zeros, so a prediction without metadata is exactly the image model's, and the term
  cannot learn "metadata is missing" as a class signal (in the ISIC archive missing metadata
  is nearly always a melanoma or a nevus: a shortcut that would not survive deployment);
- training drops each field at random (`FIELD_DROPOUT`), so the image model also learns to
  stand alone.

The encoder's vocabulary (sites with enough training images, the rest as "other") and W are
stored in run.json `extra["metadata_head"]`; the Predictor applies them after any engine, so
model.tflite and exports stay image-only models and their JSON carries the term.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from skincli.errors import SkinError
from skincli.subgroups import AGE_BANDS, age_band

FIELDS = ("sex", "age_band", "site")
SEXES = ("male", "female")
BANDS = tuple(name for _, _, name in AGE_BANDS)
OTHER_SITE = "other"
# A general site needs this many training images to get its own weight; rarer ones share
# "other".
MIN_SITE_IMAGES = 10
# Probability that training hides one field of an image (the image model must stand alone).
FIELD_DROPOUT = 0.2
# The term's weights learn at this multiple of the network's learning rate: the rate is set
# for fine-tuning a backbone, at which a zero-initialised linear term moves by ~lr per step
# and ends a run with weights of ~0.1 logit (measured), far from the log-odds it should carry.
LR_SCALE = 30.0
_MISSING = {"", "nan", "none", "unknown", "na", "n/a"}
VERSION = 2
# Sites are read as the ISIC archive's general sites, with the torso as one: the archive
# (anterior/posterior torso, head/neck) and HAM10000 (back, chest, face, scalp...) name sites
# differently, and in a collection assembled from both the *vocabulary* tells the source (in
# isic9 every melanoma and nevus has an archive-style site, every other class a HAM-style
# one). Learning that would be learning the source, not the patient.
SITE_GROUPS: dict[str, str] = {
    **dict.fromkeys(("head/neck", "head", "neck", "face", "scalp", "ear", "lip", "nose"),
                    "head/neck"),
    **dict.fromkeys(("torso", "anterior torso", "posterior torso", "lateral torso", "trunk",
                     "back", "chest", "abdomen", "upper back", "lower back", "breast"), "torso"),
    **dict.fromkeys(("upper extremity", "arm", "forearm", "hand", "shoulder"),
                    "upper extremity"),
    **dict.fromkeys(("lower extremity", "leg", "thigh", "foot", "knee"), "lower extremity"),
    **dict.fromkeys(("palms/soles", "acral", "palm", "sole"), "palms/soles"),
    **dict.fromkeys(("oral/genital", "genital", "oral", "mucosa"), "oral/genital"),
}


def site_group(value: Any) -> str:
    """A site as one of the general sites (SITE_GROUPS); unknown text -> OTHER_SITE."""
    text = _clean(value)
    if not text:
        return ""
    return SITE_GROUPS.get(text, OTHER_SITE)


def _clean(value: Any) -> str:
    text = "" if value is None else str(value).strip().lower()
    return "" if text in _MISSING else text


@dataclass
class MetadataEncoder:
    """Centred one-hot encoding of (sex, age band, site); missing fields encode as zeros."""

    sites: list[str]
    means: dict[str, list[float]]  # per field: training frequency of each value (present rows)

    @property
    def values(self) -> dict[str, list[str]]:
        """Each field's values in encoding order."""
        return {"sex": list(SEXES), "age_band": list(BANDS),
                "site": [*self.sites, OTHER_SITE]}

    @property
    def dim(self) -> int:
        """Length of an encoded row."""
        return sum(len(v) for v in self.values.values())

    def blocks(self) -> np.ndarray:
        """For each encoded column, the index of its field in FIELDS (for field dropout)."""
        return np.concatenate([np.full(len(self.values[f]), i, np.int32)
                               for i, f in enumerate(FIELDS)])

    def _index(self, field_name: str, value: str) -> int | None:
        if not value:
            return None
        values = self.values[field_name]
        if field_name == "site":
            group = site_group(value)
            return values.index(group) if group in self.sites else len(values) - 1
        return values.index(value) if value in values else None

    def onehot(self, records: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        """Uncentred one-hot rows (N, D) and a present mask per column (N, D)."""
        out = np.zeros((len(records), self.dim), np.float32)
        present = np.zeros_like(out, dtype=bool)
        offset = 0
        for f in FIELDS:
            n = len(self.values[f])
            for r, rec in enumerate(records):
                i = self._index(f, _clean(rec.get(f)))
                if i is not None:
                    out[r, offset + i] = 1.0
                    present[r, offset:offset + n] = True
            offset += n
        return out, present

    def encode(self, records: Sequence[Mapping[str, Any]]) -> np.ndarray:
        """Encoded rows (N, D) float32: one-hot minus the training frequencies, 0 if missing."""
        hot, present = self.onehot(records)
        mean = np.concatenate([np.asarray(self.means[f], np.float32) for f in FIELDS])
        return np.where(present, hot - mean, 0.0).astype(np.float32)

    @classmethod
    def fit(cls, records: Sequence[Mapping[str, Any]]) -> MetadataEncoder:
        """The vocabulary and centring frequencies of the training images' metadata."""
        sites: dict[str, int] = {}
        for rec in records:
            s = site_group(rec.get("site"))
            if s:
                sites[s] = sites.get(s, 0) + 1
        enc = cls(sites=sorted(s for s, n in sites.items()
                               if n >= MIN_SITE_IMAGES and s != OTHER_SITE), means={})
        hot, present = enc.onehot(records)
        offset = 0
        for f in FIELDS:
            n = len(enc.values[f])
            rows = present[:, offset]
            block = hot[rows, offset:offset + n]
            # Rounded as run.json stores them, so training and prediction encode alike.
            enc.means[f] = [round(float(v), 6) for v in
                            (block.mean(axis=0) if len(block) else np.zeros(n))]
            offset += n
        return enc

    def coverage(self, records: Sequence[Mapping[str, Any]]) -> dict[str, int]:
        """How many records have each field."""
        _, present = self.onehot(records)
        out, offset = {}, 0
        for f in FIELDS:
            out[f] = int(present[:, offset].sum())
            offset += len(self.values[f])
        return out

    def to_dict(self) -> dict[str, Any]:
        """The JSON-able description (values and centring frequencies of each field)."""
        return {"fields": list(FIELDS), "values": self.values,
                "means": {f: list(self.means[f]) for f in FIELDS}}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MetadataEncoder:
        """Inverse of to_dict."""
        return cls(sites=[s for s in data["values"]["site"] if s != OTHER_SITE],
                   means={f: list(map(float, data["means"][f])) for f in FIELDS})


@dataclass
class MetadataHead:
    """The encoder and the weights W (D x C) of a run's metadata term."""

    encoder: MetadataEncoder
    weights: np.ndarray

    def offsets(self, encoded: np.ndarray | None, n: int) -> np.ndarray:
        """The term added to the logits of n images (zeros without metadata)."""
        if encoded is None:
            return np.zeros((n, self.weights.shape[1]), np.float32)
        return (np.asarray(encoded, np.float32) @ self.weights).astype(np.float32)

    def to_dict(self, classes: Sequence[str]) -> dict[str, Any]:
        """run.json `extra["metadata_head"]`."""
        return {"version": VERSION, **self.encoder.to_dict(), "classes": list(classes),
                "field_dropout": FIELD_DROPOUT,
                "weights": [[round(float(v), 6) for v in row] for row in self.weights]}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None) -> MetadataHead | None:
        """The head in run.json, or None (absent or of another version)."""
        if not data or data.get("version") != VERSION:
            return None
        enc = MetadataEncoder.from_dict(data)
        w = np.asarray(data["weights"], np.float32)
        if w.ndim != 2 or w.shape[0] != enc.dim:
            return None
        return cls(enc, w)


def records_from_frame(frame: Any) -> list[dict[str, str]] | None:
    """Per row {sex, age_band, site} from a split/dataset frame; None without such columns."""
    if frame is None or not any(c in frame for c in ("sex", "age", "site")):
        return None
    n = len(frame)
    sex = frame["sex"].tolist() if "sex" in frame else [""] * n
    age = frame["age"].tolist() if "age" in frame else [""] * n
    site = frame["site"].tolist() if "site" in frame else [""] * n
    return [{"sex": _clean(s), "age_band": age_band(a), "site": _clean(t)}
            for s, a, t in zip(sex, age, site)]


def parse_inputs(age: Any = None, sex: Any = None, site: Any = None) -> dict[str, str]:
    """A user's metadata (CLI options, API query) -> a record; bad values are one-line errors."""
    rec = {"sex": "", "age_band": "", "site": _clean(site)}
    if age is not None and str(age).strip() != "":
        try:
            a = float(age)
        except (TypeError, ValueError):
            a = float("nan")
        if not np.isfinite(a) or not 0 <= a <= 120:
            raise SkinError(f"age {age!r} is not an age in years",
                            hint="Give a number from 0 to 120, or leave it out")
        rec["age_band"] = age_band(a)
    s = _clean(sex)
    if s:
        if s in ("m", "f"):
            s = {"m": "male", "f": "female"}[s]
        if s not in SEXES:
            raise SkinError(f"sex {sex!r} is not one of {', '.join(SEXES)}",
                            hint="Give male or female, or leave it out")
        rec["sex"] = s
    return rec


def describe(record: Mapping[str, Any]) -> str:
    """'male, 45-59, back' (or 'none') for messages."""
    parts = [str(record.get(f)) for f in FIELDS if record.get(f)]
    return ", ".join(parts) if parts else "none"
