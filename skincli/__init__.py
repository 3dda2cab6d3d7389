"""skincli: the whole skin-lesion classification lifecycle behind one `skin` command."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("skincli")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"

DISCLAIMER = (
    "Decision support only, not a diagnosis: a clinician must confirm every result."
)

from skincli import _quiet  # noqa: E402

_quiet.install()

__all__ = ["__version__", "DISCLAIMER"]
