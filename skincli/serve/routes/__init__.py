"""The API's routes, one APIRouter per area; `skincli.serve.app.create_app` includes them."""

from __future__ import annotations

from skincli.serve.routes import model, ops, page, predict

ROUTERS = (predict.router, model.router, ops.router, page.router)

__all__ = ["ROUTERS"]
