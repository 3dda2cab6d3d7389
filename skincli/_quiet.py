"""Keep TensorFlow's start-up chatter off the user's terminal.

TensorFlow's C++ logging (absl) prints INFO lines such as the oneDNN notice while it is being
imported, before TF_CPP_MIN_LOG_LEVEL can take effect. We import it with file descriptor 2
pointed at /dev/null; Python exceptions still propagate normally. Set SKIN_TF_VERBOSE=1 to see
everything.
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from types import ModuleType
from typing import Any


@contextmanager
def silenced_stderr_fd() -> Iterator[None]:
    """Point file descriptor 2 at /dev/null for the duration (C-level writes included)."""
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):  # no real fd 2 (embedded, captured)
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    os.dup2(null, 2)
    try:
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


class _QuietTensorFlowFinder(importlib.abc.MetaPathFinder):
    """Finds `tensorflow` once and runs its import with stderr silenced."""

    def find_spec(self, fullname: str, path: Sequence[str] | None,
                  target: ModuleType | None = None) -> Any:
        if fullname != "tensorflow":
            return None
        sys.meta_path.remove(self)
        spec = importlib.util.find_spec(fullname)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module

        def quiet_exec(module: ModuleType) -> None:
            with silenced_stderr_fd():
                exec_module(module)

        spec.loader.exec_module = quiet_exec  # type: ignore[method-assign]
        return spec


def install() -> None:
    """Silence TensorFlow's import-time logging unless SKIN_TF_VERBOSE is set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if os.environ.get("SKIN_TF_VERBOSE") or "tensorflow" in sys.modules:
        return
    if not any(isinstance(f, _QuietTensorFlowFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _QuietTensorFlowFinder())
