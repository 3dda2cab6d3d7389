"""Colour constancy inside the model: Shades of Gray (Finlayson & Trezzi 2004).

Dermatoscopes and cameras differ in their light and white balance; the top ISIC 2018/2019
entries normalised every image's illuminant before the network. Here that step is a Keras
layer at the model's input, so predict, serve, every engine and every export apply it with
nothing to remember: a run trained with it carries it in its own graph.

Per image and channel c, the illuminant is the Minkowski p-norm mean
e_c = (mean over pixels of x_c^p)^(1/p); the image is rescaled so that the illuminant becomes
grey, x_c * (|e| / (sqrt(3) * e_c)), and clipped to 0..255. p = 1 is Grey World, p -> inf
is max-RGB; p = 6 is what the ISIC teams used.
"""

from __future__ import annotations

from typing import Any

import numpy as np

METHODS = ("none", "shades-of-gray")
DEFAULT_POWER = 6.0
# Keeps the norm away from zero on an all-black image (then the image is returned unchanged
# up to this epsilon, instead of NaN).
_EPS = 1e-6


def shades_of_gray_np(image: np.ndarray, power: float = DEFAULT_POWER) -> np.ndarray:
    """Reference implementation on one RGB float image (H, W, 3) in 0..255 (for tests/docs)."""
    x = np.asarray(image, dtype=np.float64)
    illum = np.power(np.mean(np.power(x / 255.0, power), axis=(0, 1)), 1.0 / power) + _EPS
    gain = np.linalg.norm(illum) / (np.sqrt(3.0) * illum)
    return np.clip(x * gain, 0.0, 255.0).astype(np.float32)


def _register() -> Any:
    import keras

    @keras.saving.register_keras_serializable(package="skincli", name="ShadesOfGray")
    class ShadesOfGray(keras.layers.Layer):
        """Per-image Shades of Gray colour constancy on RGB float 0..255 (no weights)."""

        def __init__(self, power: float = DEFAULT_POWER, **kwargs: Any) -> None:
            super().__init__(**kwargs)
            self.power = float(power)

        def call(self, inputs: Any) -> Any:
            from keras import ops

            x = ops.cast(inputs, "float32")
            unit = ops.clip(x / 255.0, 0.0, 1.0)
            mean = ops.mean(ops.power(unit, self.power), axis=(1, 2), keepdims=True)
            illum = ops.power(mean, 1.0 / self.power) + _EPS
            norm = ops.sqrt(ops.sum(ops.square(illum), axis=-1, keepdims=True))
            gain = norm / (np.sqrt(3.0).astype("float32") * illum)
            return ops.clip(x * gain, 0.0, 255.0)

        def compute_output_shape(self, input_shape: Any) -> Any:
            return input_shape

        def get_config(self) -> dict[str, Any]:
            return {**super().get_config(), "power": self.power}

    return ShadesOfGray


_LAYER: Any = None


def shades_of_gray_layer(power: float = DEFAULT_POWER, name: str = "colour_constancy") -> Any:
    """A new ShadesOfGray Keras layer (registers the class with Keras on first use)."""
    return layer_class()(power=power, name=name)


def layer_class() -> Any:
    """The registered ShadesOfGray class; importing it lets Keras load models that use it."""
    global _LAYER
    if _LAYER is None:
        _LAYER = _register()
    return _LAYER


def load_keras_model(path: Any) -> Any:
    """keras.models.load_model(path, compile=False) with the project's layers registered.

    The one way the package opens a saved .keras file: a model trained with colour
    constancy holds a ShadesOfGray layer that Keras can only rebuild once it is registered.
    """
    import keras

    layer_class()
    return keras.models.load_model(path, compile=False)
