"""Running a loaded run over labelled images: logits (with TTA views), embeddings, colours."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from skincli.calibration import softmax
from skincli.data.evalset import EvalSet, read_batches
from skincli.errors import SkinError
from skincli.ood import colour_features
from skincli.predictor import Predictor

# progress(stage, done, total) after each batch
Progress = Callable[[str, int, int], None]


@dataclass
class Scored:
    """Model outputs for the readable images of an EvalSet."""

    filepaths: list[str]
    y: np.ndarray                      # (N,) class indices in the run's order
    logits: np.ndarray                 # (V, N, C): V = 8 with TTA (view 0 = as is), else 1
    embeddings: np.ndarray | None      # (N, D) of the untransformed images
    colour: np.ndarray                 # (N, 7) colour features (for the OOD reference)
    skipped: list[dict[str, str]] = field(default_factory=list)

    def probs(self, temperature: float, tta: bool) -> np.ndarray:
        """Calibrated probabilities, averaged over the TTA views when tta."""
        views = self.logits if tta else self.logits[:1]
        return np.mean([softmax(v, temperature) for v in views], axis=0)


def score(predictor: Predictor, eval_set: EvalSet, tta: bool = False, batch_size: int = 32,
          progress: Progress | None = None, stage: str = "evaluate") -> Scored:
    """Run the model over an EvalSet in batches; unreadable files are skipped and listed."""
    keep_paths: list[str] = []
    ys: list[np.ndarray] = []
    logits: list[np.ndarray] = []
    embs: list[np.ndarray] = []
    colours: list[np.ndarray] = []
    skipped: list[dict[str, str]] = []
    for batch in read_batches(eval_set, predictor.classes, predictor.input_size, batch_size,
                              predictor.max_pixels):
        skipped.extend(batch.skipped)
        if len(batch.y):
            keep_paths.extend(batch.filepaths)
            ys.append(batch.y)
            meta = predictor.encode_metadata(batch.metadata)
            if tta:
                views, emb = predictor.tta_logits(batch.images, batch_size, meta)
            else:
                first, emb = predictor.logits_and_embeddings(batch.images, batch_size, meta)
                views = first[None]
            logits.append(views)
            if emb is not None:
                embs.append(emb)
            colours.append(colour_features(batch.images))
        if progress is not None:
            progress(stage, batch.done, batch.total)
    if not keep_paths:
        raise SkinError(f"None of the {len(eval_set.filepaths)} images of "
                        f"{eval_set.description} could be read",
                        hint="Check the files with `skin eda`")
    c = len(predictor.classes)
    return Scored(
        filepaths=keep_paths, y=np.concatenate(ys).astype(np.int64),
        logits=np.concatenate(logits, axis=1) if logits else np.zeros((1, 0, c)),
        embeddings=np.concatenate(embs) if embs and len(embs) == len(logits) else None,
        colour=np.concatenate(colours), skipped=skipped)
