"""Training options: one dataclass, one table of defaults, named presets.

`DEFAULTS` is the single place to tune the default run; every field has a one-line comment.
Precedence when resolving: DEFAULTS < preset < explicit options (CLI flags, YAML, dict keys).
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skincli.clinical.triage import FIT_METHODS as TRIAGE_FITS
from skincli.errors import SkinError, did_you_mean
from skincli.models.colour import METHODS as COLOUR_METHODS
from skincli.runs import check_run_name

# Cheap to import: no TensorFlow here (the CLI imports this at start-up for its help texts).


@dataclass
class TrainConfig:
    """Every option of a training run (the resolved set is saved as the run's config.yaml)."""

    split: str = "splits/split.csv"   # split CSV written by `skin split`
    arch: str = "efficientnet"        # architecture name (see `skin train --list-archs`)
    weights: str = "imagenet"         # imagenet | none | PATH to .weights.h5/.keras
    input_size: int | None = None     # square input side in pixels; None = the arch's own size
    epochs: int = 2                   # phase 1: epochs training the head, backbone frozen
    fine_tune: str = "all"            # phase 2: all | top:N (last N backbone layers) | none
    fine_tune_epochs: int = 16        # phase 2 epochs (0 = no fine-tuning)
    batch_size: int = 32              # images per step
    lr: float = 1e-3                  # peak learning rate of the head phase
    fine_tune_lr: float = 6e-4        # peak learning rate of the fine-tuning phase
    weight_decay: float = 0.01        # AdamW decoupled weight decay (scaled by the learning rate)
    warmup_epochs: float = 1.0        # linear warm-up before the cosine decay (each phase)
    min_lr_ratio: float = 0.01        # cosine decays to this fraction of the peak rate
    oversample: bool = True           # balanced classes in every batch (sampling, no copies)
    oversample_strength: float = 1.0  # class c drawn with weight n_c^(1-s): 1 = balanced,
    #                                   0 = as in the data, 0.5 = square-root balancing
    class_weights: bool = False       # weight the loss by inverse class frequency
    loss: str = "ce"                  # ce (cross-entropy) | focal
    focal_gamma: float = 2.0          # focusing parameter of the focal loss
    label_smoothing: float = 0.1      # soften one-hot targets by this much
    augment: float = 1.0              # augmentation strength: 0 = off, 1 = default, up to 2
    mixup: float = 0.0                # mixup Beta(a, a) parameter; 0 = off
    cutmix: float = 0.0               # cutmix Beta(a, a) parameter; 0 = off
    dropout: float = 0.2              # dropout before the logits layer (and the hidden one)
    head_units: int = 0               # 0 = linear head on pooled features; N = hidden layer
    colour_constancy: str = "none"    # none | shades-of-gray (a layer inside the model, p = 6;
    #                                   adds a per-channel colour-shift augmentation)
    use_metadata: bool = False        # add a term of age, sex and site to the logits
    #                                   (needs a split made with --metadata; skincli.metahead)
    ema: float = 0.0                  # moving average of weights (e.g. 0.99) for selection; 0=off
    patience: int = 8                 # early stopping: epochs without a better val macro F1
    seed: int = 0                     # fixes initial weights, sampling and augmentation
    deterministic: bool = False       # force deterministic TF kernels (~15% slower on CPU, where
    #                                   a fixed seed and thread count already repeat exactly)
    name: str = "train"               # run folder name (auto-incremented: train, train2 ...)
    runs_dir: str = "runs"            # where run folders go
    strategy: str = "default"         # default | mirrored | multiworker (tf.distribute)
    threads: int = 0                  # CPU threads for TensorFlow; 0 = all available cores
    cache: str = "memory"             # memory (decode once, keep uint8) | none (decode each time)
    jit_compile: bool = False         # XLA-compile the training step
    uncertain_accuracy: float = 0.5   # see run.json uncertain_threshold (chosen on validation)
    calibrate: bool = True            # fit temperature scaling on val at the end (off: T = 1)
    triage_sensitivity: float = 0.95  # referral threshold: this sensitivity on validation
    triage_malignant: str = ""        # classes summed into the malignancy score ("" = mel+BCC+SCC)
    # lower-bound: the one-sided 95% Clopper-Pearson bound of validation sensitivity reaches the
    # target (held 95% on test in 5 of 5 lesion-grouped isic9 splits, the point estimate in 3
    # of 5, docs/accuracy.md); a validation split with too few malignant cases for the bound
    # falls back to the point estimate, and run.json and the summary say so.
    triage_fit: str = "lower-bound"

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (what config.yaml holds)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Build from a dict; unknown keys raise SkinError naming the closest option."""
        names = [f.name for f in dataclasses.fields(cls)]
        clean: dict[str, Any] = {}
        for raw, value in data.items():
            key = str(raw).replace("-", "_")
            if key not in names:
                raise SkinError(f"Unknown training option {raw!r}.{did_you_mean(key, names)}")
            clean[key] = value
        return validate(cls(**clean))


DEFAULTS: dict[str, Any] = TrainConfig().to_dict()

# Presets change many defaults at once; explicit options still win over them.
PRESETS: dict[str, dict[str, Any]] = {
    # A quick CPU run for trying things out: about a quarter of the default's time (isic9
    # split 0: macro F1 0.655 in 4.9 min vs the default's 0.738 in 22, cores shared).
    "fast": {"input_size": 192, "epochs": 1, "fine_tune_epochs": 5, "patience": 3},
    # Longer fine-tuning at a higher resolution, about twice the default's time. On isic9 it
    # did not beat the default (split 0: 0.715 vs 0.738, within one split's seed noise).
    "thorough": {"input_size": 260, "epochs": 3, "fine_tune_epochs": 24, "patience": 10},
}

_CHOICES = {
    "loss": ("ce", "focal"),
    "strategy": ("default", "mirrored", "multiworker"),
    "cache": ("memory", "none"),
}
_FINE_TUNE = re.compile(r"^(all|none|top:(\d+))$")


def resolve(overrides: dict[str, Any] | None = None, preset: str | None = None) -> TrainConfig:
    """DEFAULTS, then the preset, then the explicit overrides (None values are ignored)."""
    merged: dict[str, Any] = dict(DEFAULTS)
    if preset:
        key = str(preset).lower()
        if key not in PRESETS:
            raise SkinError(f"Unknown preset {preset!r}.{did_you_mean(key, PRESETS)}",
                            hint=f"Choose one of: {', '.join(PRESETS)}")
        merged.update(PRESETS[key])
    for key, value in (overrides or {}).items():
        if value is not None:
            merged[str(key).replace("-", "_")] = value
    return TrainConfig.from_dict(merged)


def fine_tune_layers(spec: str) -> int | None:
    """'all' -> None (every layer), 'none' -> 0, 'top:N' -> N."""
    match = _FINE_TUNE.match(str(spec).strip().lower())
    if not match:
        raise SkinError(f"--fine-tune {spec!r} is not valid",
                        hint="Use all, none or top:N (e.g. top:40)")
    if match.group(1) == "all":
        return None
    if match.group(1) == "none":
        return 0
    return int(match.group(2))


def validate(cfg: TrainConfig) -> TrainConfig:
    """Check ranges and choices; normalise spellings. Raises SkinError on the first problem."""
    for key, choices in _CHOICES.items():
        value = str(getattr(cfg, key)).lower()
        if value not in choices:
            raise SkinError(f"--{key.replace('_', '-')} {getattr(cfg, key)!r} is not valid."
                            f"{did_you_mean(value, choices)}",
                            hint=f"Choose one of: {', '.join(choices)}")
        setattr(cfg, key, value)
    cfg.fine_tune = str(cfg.fine_tune).strip().lower()
    fine_tune_layers(cfg.fine_tune)

    def need(ok: bool, option: str, what: str) -> None:
        if not ok:
            raise SkinError(f"--{option} {getattr(cfg, option.replace('-', '_'))!r} is not "
                            f"valid: it must be {what}")

    need(int(cfg.epochs) >= 0, "epochs", "0 or more")
    need(int(cfg.fine_tune_epochs) >= 0, "fine-tune-epochs", "0 or more")
    need(int(cfg.batch_size) >= 1, "batch-size", "at least 1")
    need(float(cfg.lr) > 0, "lr", "positive")
    need(float(cfg.fine_tune_lr) > 0, "fine-tune-lr", "positive")
    need(float(cfg.weight_decay) >= 0, "weight-decay", "0 or more")
    need(float(cfg.warmup_epochs) >= 0, "warmup-epochs", "0 or more")
    need(0 <= float(cfg.min_lr_ratio) <= 1, "min-lr-ratio", "between 0 and 1")
    need(0 <= float(cfg.label_smoothing) < 1, "label-smoothing", "in [0, 1)")
    need(0 <= float(cfg.augment) <= 2, "augment", "between 0 (off) and 2")
    need(0 <= float(cfg.oversample_strength) <= 1, "oversample_strength",
         "between 0 (the data's class mix) and 1 (balanced)")
    need(float(cfg.mixup) >= 0, "mixup", "0 (off) or a positive Beta parameter")
    need(float(cfg.cutmix) >= 0, "cutmix", "0 (off) or a positive Beta parameter")
    need(0 <= float(cfg.dropout) < 1, "dropout", "in [0, 1)")
    need(int(cfg.head_units) >= 0, "head-units", "0 (linear head) or a number of units")
    need(cfg.colour_constancy in COLOUR_METHODS, "colour-constancy",
         f"one of {', '.join(COLOUR_METHODS)}")
    need(0 <= float(cfg.ema) < 1, "ema", "0 (off) or a decay in (0, 1), e.g. 0.99")
    need(int(cfg.patience) >= 1, "patience", "at least 1")
    need(float(cfg.focal_gamma) >= 0, "focal-gamma", "0 or more")
    need(int(cfg.threads) >= 0, "threads", "0 (all cores) or more")
    need(0 < float(cfg.uncertain_accuracy) < 1, "uncertain-accuracy", "between 0 and 1")
    need(0 < float(cfg.triage_sensitivity) < 1, "triage-sensitivity", "between 0 and 1")
    need(cfg.triage_fit in TRIAGE_FITS, "triage-fit", f"one of {', '.join(TRIAGE_FITS)}")
    need(cfg.input_size is None or int(cfg.input_size) >= 32, "input-size", "at least 32")
    need(isinstance(cfg.calibrate, bool), "calibrate", "true or false")
    need(isinstance(cfg.use_metadata, bool), "use-metadata", "true or false")
    if cfg.use_metadata and (float(cfg.mixup) > 0 or float(cfg.cutmix) > 0):
        raise SkinError("--use-metadata does not combine with --mixup or --cutmix (a mixed "
                        "image has no one patient's metadata)",
                        hint="Set --mixup 0 --cutmix 0, or train without --use-metadata")
    need(int(cfg.epochs) + int(cfg.fine_tune_epochs) > 0, "epochs",
         "positive when --fine-tune-epochs is 0")
    check_run_name(cfg.name)
    for key in ("epochs", "fine_tune_epochs", "batch_size", "patience", "seed", "threads"):
        setattr(cfg, key, int(getattr(cfg, key)))
    if cfg.input_size is not None:
        cfg.input_size = int(cfg.input_size)
    cfg.split = str(Path(cfg.split))
    cfg.runs_dir = str(Path(cfg.runs_dir))
    cfg.weights = str(cfg.weights)
    return cfg
