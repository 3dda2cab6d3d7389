"""The data layer: listing a data set, the manifest of its files, and the split file."""

from skincli.data.dataset import Dataset, Entry, load_dataset
from skincli.data.manifest import build_manifest
from skincli.data.split import DEFAULT_SPLIT_PATH, make_split
from skincli.data.splitfile import load_split, split_file_sha256, write_split

__all__ = ["DEFAULT_SPLIT_PATH", "Dataset", "Entry", "build_manifest", "load_dataset",
           "load_split", "make_split", "split_file_sha256", "write_split"]
