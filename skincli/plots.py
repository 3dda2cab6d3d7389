"""The one matplotlib set-up: pyplot on the Agg backend, so plots render with no display, and
the atomic PNG save."""

from __future__ import annotations

import os
from typing import Any

from skincli.fsutil import atomic_path


def pyplot() -> Any:
    """`matplotlib.pyplot`, headless. Imported on first use: matplotlib is slow to import."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | os.PathLike[str], dpi: int = 110) -> None:
    """Write a figure as PNG atomically, then close it (pyplot keeps open figures alive)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight")
    pyplot().close(fig)
