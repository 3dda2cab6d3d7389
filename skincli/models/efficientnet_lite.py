"""EfficientNet-Lite0/1/2 in Keras, built only from standard layers.

Mirrors Google's TF reference (`efficientnet/lite/efficientnet_lite_builder.py`):
ReLU6 everywhere, no squeeze-excite, stem (32) and head (1280) channels and the first/last
stage repeats are NOT scaled, BatchNorm epsilon 1e-3 / momentum 0.99, TF "same" padding.

Padding choice: the offline weights are a PyTorch port of Google's TF checkpoints whose convs are
`Conv2dStaticSamePadding` modules (the `static_padding` entries in the file's metadata), i.e.
they reproduce TF "same" padding -- extra row/column on the bottom/right when the total pad is
odd. Keras `padding="same"` has exactly these semantics, so no explicit ZeroPadding is needed;
the numpy reference forward in the tests pads explicitly and checks this.

BatchNorm: a state_dict stores no momentum or epsilon. The TF reference trains with momentum
0.99 and epsilon 1e-3 (Keras' defaults too). Epsilon matters at inference: the checkpoints
contain channels with running variance exactly 0, where 1e-3 vs PyTorch's 1e-5 changes the output.

Input normalisation for Lite is (x - 127) / 128 on RGB 0..255; it is NOT part of the network
built here unless `normalise=True` (the registry puts it in the outer model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from skincli.errors import SkinError

# (kernel, repeats, in_filters, out_filters, expand_ratio, stride) of the B0 baseline stages.
_BASE_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (3, 1, 32, 16, 1, 1),
    (3, 2, 16, 24, 6, 2),
    (5, 2, 24, 40, 6, 2),
    (3, 3, 40, 80, 6, 2),
    (5, 3, 80, 112, 6, 1),
    (5, 4, 112, 192, 6, 2),
    (3, 1, 192, 320, 6, 1),
)

# variant -> (width multiplier, depth multiplier, native resolution, dropout of the ImageNet head)
LITE_VARIANTS: dict[str, tuple[float, float, int, float]] = {
    "lite0": (1.0, 1.0, 224, 0.2),
    "lite1": (1.0, 1.1, 240, 0.2),
    "lite2": (1.1, 1.2, 260, 0.3),
}

STEM_FILTERS = 32
HEAD_FILTERS = 1280
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99
DROP_CONNECT_RATE = 0.2
# Rescaling that maps RGB 0..255 to (x - 127) / 128, the Lite training normalisation.
NORM_SCALE = 1.0 / 128.0
NORM_OFFSET = -127.0 / 128.0


@dataclass(frozen=True)
class BlockSpec:
    """One MBConv block after width/depth scaling."""

    index: int
    kernel: int
    stride: int
    in_filters: int
    out_filters: int
    expand_ratio: int

    @property
    def expanded(self) -> int:
        return self.in_filters * self.expand_ratio

    @property
    def residual(self) -> bool:
        return self.stride == 1 and self.in_filters == self.out_filters


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """TF reference `round_filters`: scale channels and round to a multiple of 8."""
    filters = filters * width
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:  # never round down by more than 10%
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth: float) -> int:
    """TF reference `round_repeats`: ceil of the scaled repeat count."""
    return int(math.ceil(depth * repeats))


def check_variant(variant: str) -> str:
    v = variant.lower().replace("efficientnet_", "").replace("efficientnet-", "")
    if v not in LITE_VARIANTS:
        raise SkinError(f"Unknown EfficientNet-Lite variant {variant!r}",
                        hint=f"Choose one of: {', '.join(LITE_VARIANTS)}")
    return v


def block_specs(variant: str) -> list[BlockSpec]:
    """The scaled MBConv block list for a Lite variant (first and last stage repeats fixed)."""
    width, depth, _, _ = LITE_VARIANTS[check_variant(variant)]
    blocks: list[BlockSpec] = []
    last = len(_BASE_STAGES) - 1
    for s, (kernel, repeats, fin, fout, expand, stride) in enumerate(_BASE_STAGES):
        # Lite keeps the stem's input (32) fixed, so stage 0 reads 32 channels unscaled.
        fin = STEM_FILTERS if s == 0 else round_filters(fin, width)
        fout = round_filters(fout, width)
        reps = repeats if s in (0, last) else round_repeats(repeats, depth)
        for r in range(reps):
            blocks.append(BlockSpec(len(blocks), kernel, stride if r == 0 else 1,
                                    fin if r == 0 else fout, fout, expand))
    return blocks


def head_input_filters(variant: str) -> int:
    return block_specs(variant)[-1].out_filters


def efficientnet_lite(variant: str = "lite0", *, input_size: int | None = None,
                      include_top: bool = False, normalise: bool = False,
                      pooling: bool = True, classes: int = 1000, name: str | None = None,
                      drop_connect_rate: float = DROP_CONNECT_RATE) -> Any:
    """Build an (unweighted) EfficientNet-Lite network as a functional `keras.Model`.

    include_top=False: output is the global-average-pooled features (None, 1280) when
    `pooling`, else the last feature map. include_top=True adds the ImageNet head
    (Dropout + Dense `predictions`, logits). normalise=True prepends the (x-127)/128 Rescaling.
    Load ImageNet weights with `skincli.models.pretrained.load_lite_imagenet`.
    """
    import keras
    from keras import layers

    v = check_variant(variant)
    _, _, native, top_dropout = LITE_VARIANTS[v]
    size = int(input_size or native)
    if size < 32:
        raise SkinError(f"Input size {size} is too small for EfficientNet-Lite",
                        hint="Use at least 32 pixels")
    specs = block_specs(v)

    def bn(n: str) -> Any:
        return layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=n)

    def relu6(n: str) -> Any:
        return layers.ReLU(max_value=6.0, name=n)

    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    if normalise:
        x = layers.Rescaling(NORM_SCALE, offset=NORM_OFFSET, name="normalise")(x)
    x = layers.Conv2D(STEM_FILTERS, 3, strides=2, padding="same", use_bias=False,
                      name="stem_conv")(x)
    x = bn("stem_bn")(x)
    x = relu6("stem_relu6")(x)
    for b in specs:
        p = f"block{b.index}_"
        shortcut = x
        if b.expand_ratio != 1:
            x = layers.Conv2D(b.expanded, 1, padding="same", use_bias=False,
                              name=p + "expand_conv")(x)
            x = bn(p + "expand_bn")(x)
            x = relu6(p + "expand_relu6")(x)
        x = layers.DepthwiseConv2D(b.kernel, strides=b.stride, padding="same", use_bias=False,
                                   name=p + "dwconv")(x)
        x = bn(p + "dw_bn")(x)
        x = relu6(p + "dw_relu6")(x)
        x = layers.Conv2D(b.out_filters, 1, padding="same", use_bias=False,
                          name=p + "project_conv")(x)
        x = bn(p + "project_bn")(x)
        if b.residual:
            # Stochastic depth as in the TF reference: rate grows linearly with block index.
            rate = drop_connect_rate * b.index / len(specs)
            if rate > 0:
                x = layers.Dropout(rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
            x = layers.Add(name=p + "add")([x, shortcut])
    x = layers.Conv2D(HEAD_FILTERS, 1, padding="same", use_bias=False, name="head_conv")(x)
    x = bn("head_bn")(x)
    x = relu6("head_relu6")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = layers.Dropout(top_dropout, name="top_dropout")(x)
        x = layers.Dense(classes, name="predictions")(x)
    elif pooling:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    return keras.Model(inputs, x, name=name or f"efficientnet_{v}")
