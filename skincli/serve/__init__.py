"""`skin serve`: the REST API (app factory, micro-batching, limits, metrics) and its web page."""

from __future__ import annotations

from typing import TYPE_CHECKING

from skincli.serve.settings import Settings

if TYPE_CHECKING:
    from fastapi import FastAPI

__all__ = ["Settings", "create_app"]


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the FastAPI app (imported lazily so `import skincli.serve` stays light)."""
    from skincli.serve.app import create_app as _create

    return _create(settings)
