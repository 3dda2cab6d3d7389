"""Moved to skincli.export; kept so older imports keep working."""

from skincli.export import export_saved_model, export_tflite

__all__ = ["export_saved_model", "export_tflite"]
