"""Training: `train(config) -> run folder`, `resume(run)`, `TrainConfig`, `DEFAULTS`, `PRESETS`.

Importing this package is cheap; TensorFlow loads when training starts.
"""

from __future__ import annotations

from typing import Any

from skincli.train.config import DEFAULTS, PRESETS, TrainConfig, resolve

__all__ = ["DEFAULTS", "PRESETS", "TrainConfig", "resolve", "resume", "train"]


def __getattr__(name: str) -> Any:
    if name in ("train", "resume"):
        from skincli.train import trainer

        return getattr(trainer, name)
    raise AttributeError(name)
