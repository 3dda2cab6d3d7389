"""Use skincli as a library: split, train, evaluate and predict without the CLI.

    python examples/api_example.py DATA_DIR [WORK_DIR]

DATA_DIR is a folder of class folders (or Train/ and Test/ above them). Uses a fast setting so
it finishes in a few minutes on a CPU.
"""

from __future__ import annotations

import sys
from pathlib import Path

from skincli.data.dataset import load_dataset
from skincli.data.manifest import build_manifest
from skincli.data.split import make_split
from skincli.data.splitfile import write_split
from skincli.predictor import Predictor
from skincli.train import resolve, train


def main(data: Path, work: Path) -> None:
    manifest = build_manifest(load_dataset(data))  # hashes, sizes, stats; cached
    result = make_split(manifest, val=0.15, test=0.15, seed=42, conflicts="drop")
    split_file = write_split(result, work / "splits" / "split.csv")
    print("split counts:\n", result.counts())

    config = resolve({"split": str(split_file), "runs_dir": str(work / "runs"),
                      "epochs": 1, "fine_tune_epochs": 2, "input_size": 160},
                     preset="fast")
    run_dir = train(config)
    print("trained:", run_dir)

    predictor = Predictor.from_run(run_dir)
    test = result.frame[result.frame["split"] == "test"]
    images = [str(Path(manifest.attrs["root"]) / p) for p in test["path"][:5]]
    for path, pred in zip(images, predictor.predict(images, top_k=3)):
        print(Path(path).name, pred.label, f"{pred.probability:.2f}",
              "(uncertain)" if pred.uncertain else "")
    print(predictor.info.version, "-", pred.disclaimer)


if __name__ == "__main__":
    if len(sys.argv) < 2:
        raise SystemExit("usage: python examples/api_example.py DATA_DIR [WORK_DIR]")
    main(Path(sys.argv[1]), Path(sys.argv[2] if len(sys.argv) > 2 else "skin-example"))
