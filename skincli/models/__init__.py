"""Model architectures: the registry (`build_model`, `list_archs`) and offline EfficientNet-Lite."""

from skincli.models.registry import (
    ArchSpec,
    BuiltModel,
    build_model,
    get_arch,
    gradcam_model,
    list_archs,
)

__all__ = ["ArchSpec", "BuiltModel", "build_model", "get_arch", "gradcam_model", "list_archs"]
