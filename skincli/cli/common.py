"""Helpers shared by every CLI command: turning errors into one clean line."""

from __future__ import annotations

import functools
from collections.abc import Callable
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer

from skincli import ui
from skincli.errors import SkinError

F = TypeVar("F", bound=Callable[..., Any])


def handle_errors(func: F) -> F:
    """Show SkinError (and Ctrl-C) as one line on stderr and exit non-zero, never a traceback."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except SkinError as exc:
            ui.error(str(exc))
            raise typer.Exit(code=1) from None
        except KeyboardInterrupt:
            ui.error("interrupted")
            raise typer.Exit(code=130) from None

    return wrapper  # type: ignore[return-value]


def not_implemented(name: str) -> None:
    """An honest placeholder for a command that does not exist yet."""
    raise SkinError(f"`skin {name}` is not implemented yet")


# --- the metadata options every command that reads a labelled data set takes -----------------

class LabelSource(str, Enum):
    """Where labels come from when --metadata is given."""

    metadata = "metadata"
    folder = "folder"


class GroupLevel(str, Enum):
    """Which identity unit keeps images together in a split."""

    lesion = "lesion"
    patient = "patient"


MetadataOpt = Annotated[Path | None, typer.Option(
    "--metadata", dir_okay=False,
    help="Image metadata CSV (ISIC archive export, HAM10000_metadata.csv or ISIC challenge "
    "ground truth): its diagnosis is the label, lesion_id the group, age/sex/site the "
    "subgroups. Rows join images by file name without suffix.")]
LabelsOpt = Annotated[LabelSource | None, typer.Option(
    "--labels", help="With --metadata: take labels from the metadata (default) or keep the "
    "folders'.")]
GroupOpt = Annotated[GroupLevel | None, typer.Option(
    "--group", help="With --metadata: keep each lesion's (default) or each patient's images "
    "in one split.")]
ClassMapOpt = Annotated[list[str] | None, typer.Option(
    "--class-map", metavar="CODE=CLASS",
    help="With --metadata: map a diagnosis code to a class name (repeatable; overrides the "
    "built-in table, e.g. 'bkl=pigmented benign keratosis').")]


def metadata_args(metadata: Path | None, labels: LabelSource | None, group: GroupLevel | None,
                  class_map: list[str] | None) -> dict[str, Any]:
    """The load_dataset keyword arguments for the metadata options."""
    from skincli.data.metadata import parse_class_map

    return {"metadata": metadata, "labels": labels.value if labels else None,
            "group": group.value if group else None,
            "class_map": parse_class_map(class_map) or None}
