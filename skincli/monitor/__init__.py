"""Production monitoring: the prediction store, drift tests, reports and safe retraining."""

from skincli.monitor.store import (
    DEFAULT_STORE_URL,
    PredictionStore,
    image_stats,
    open_store,
    summarize_embedding,
)

__all__ = ["DEFAULT_STORE_URL", "PredictionStore", "image_stats", "open_store",
           "summarize_embedding"]
