"""`skin export`: the run's model for other runtimes.

- `savedmodel` (skincli.export.saved): TensorFlow Serving.
- `tflite`, `tflite-int8` (skincli.export.mobile): a MediaPipe Tasks-ready model with metadata
  for Android and iOS apps.
- `web` (skincli.export.web): a static folder that classifies in the browser.

The TFLite and web formats need the `export` extra (mediapipe, for the metadata schema).
"""

from __future__ import annotations

from skincli.export.mobile import DEFAULT_TOLERANCE, INT8_MODES, TFLITE_FORMATS, export_tflite
from skincli.export.saved import build_archive, export_saved_model, next_version
from skincli.export.web import export_web

FORMATS = ("savedmodel", *TFLITE_FORMATS, "web")

__all__ = ["DEFAULT_TOLERANCE", "FORMATS", "INT8_MODES", "TFLITE_FORMATS", "build_archive",
           "export_saved_model", "export_tflite", "export_web", "next_version"]
