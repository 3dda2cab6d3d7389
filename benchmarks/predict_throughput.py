"""`skin predict` speed: LiteRT vs TensorFlow engine vs a naive per-image loop, same run.

    python benchmarks/predict_throughput.py                 # EfficientNet-Lite0 bench run
    python benchmarks/predict_throughput.py --run runs/train --images ../shared/data/isic9/Test

1. Model only, in this process, engines alternated round by round (so a busy machine hurts
   both alike): ms per image at batch 1 and at --batch.
2. `Predictor.predict_paths` on a folder of JPEGs (read, decode, resize, model, verdicts), the
   work of `skin predict FOLDER`, engines alternated; plus the naive loop (Keras
   `model.predict` per image), what a first version usually does.
3. Whole-command wall time of a cold `skin predict one.jpg` in a fresh process, per engine,
   alternated, --cold-repeats times each; and whether TensorFlow was imported.

Prints one table with the ratios and writes everything to JSON. Without --run, a bench run is
built: the registry's EfficientNet-Lite0 (ImageNet backbone, untrained 9-class head; timing
does not depend on the head's weights) with model.tflite written as `skin train` writes it.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from benchrun import make_bench_run, make_payload  # noqa: E402  (this folder)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ISIC_TEST = REPO.parent / "shared" / "data" / "isic9" / "Test"


def image_files(folder: Path, n: int) -> list[Path]:
    """Up to n JPEGs (spread over the classes), else generated ones in a temp folder."""
    files = sorted(folder.rglob("*.jpg")) if folder.is_dir() else []
    if files:
        step = max(1, len(files) // n)
        return files[::step][:n]
    out = Path(tempfile.mkdtemp(prefix="predict-bench-"))
    paths = []
    for i in range(n):
        p = out / f"img{i}.jpg"
        p.write_bytes(make_payload(450, seed=i))
        paths.append(p)
    return paths


def model_only(predictors: dict[str, Any], batch: np.ndarray, big: int, rounds: int
               ) -> dict[str, dict[str, float]]:
    """ms per image at batch 1 and batch `big`, engines alternated each round (median)."""
    times: dict[str, dict[str, list[float]]] = {k: {"b1": [], "big": []} for k in predictors}
    for p in predictors.values():  # warm every path
        p.logits_and_embeddings(batch[:1], 1)
        p.logits_and_embeddings(batch[:big], big)
    for _ in range(rounds):
        for name, p in predictors.items():
            t = time.perf_counter()
            for i in range(len(batch)):
                p.logits_and_embeddings(batch[i:i + 1], 1)
            times[name]["b1"].append((time.perf_counter() - t) / len(batch) * 1000)
            t = time.perf_counter()
            p.logits_and_embeddings(batch, big)
            times[name]["big"].append((time.perf_counter() - t) / len(batch) * 1000)
    return {k: {m: float(np.median(v)) for m, v in d.items()} for k, d in times.items()}


def folder_throughput(predictors: dict[str, Any], files: list[Path], batch: int, rounds: int
                      ) -> dict[str, float]:
    """Images/s of predict_paths (what `skin predict FOLDER` runs), alternated, median."""
    paths = [str(f) for f in files]
    out: dict[str, list[float]] = {k: [] for k in predictors}
    for p in predictors.values():
        p.predict_paths(paths[:batch], batch_size=batch)
    for _ in range(rounds):
        for name, p in predictors.items():
            t = time.perf_counter()
            results = p.predict_paths(paths, batch_size=batch)
            out[name].append(len(results) / (time.perf_counter() - t))
    return {k: float(np.median(v)) for k, v in out.items()}


def naive_loop(predictor: Any, files: list[Path], rounds: int) -> float:
    """Images/s of: for each file, decode + Keras model.predict of one image."""
    from skincli.calibration import softmax

    model = predictor.model
    model.predict(np.zeros((1, predictor.input_size, predictor.input_size, 3), np.float32),
                  verbose=0)
    rates = []
    for _ in range(rounds):
        t = time.perf_counter()
        for f in files:
            x = predictor.preprocess(f)[None]
            softmax(model.predict(x, verbose=0), predictor.temperature)
        rates.append(len(files) / (time.perf_counter() - t))
    return float(np.median(rates))


PROBE = ("import sys, runpy\nsys.argv = ['skin', *sys.argv[1:]]\n"
         "try:\n    runpy.run_module('skincli', run_name='__main__')\n"
         "except SystemExit:\n    pass\n"
         "print('TF-LOADED' if 'tensorflow' in sys.modules else 'TF-ABSENT', file=sys.stderr)\n")


def cold_start(run_dir: Path, image: Path, repeats: int) -> dict[str, dict[str, Any]]:
    """Wall time of a whole fresh `skin predict one.jpg` process per engine, alternated."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    walls: dict[str, list[float]] = {"litert": [], "tf": []}
    tf_loaded: dict[str, bool] = {}
    for _ in range(repeats):
        for engine in walls:
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", PROBE, "predict", str(image), "--run", str(run_dir),
                 "--no-log", "--json", "--engine", engine], env=env, capture_output=True,
                text=True, timeout=600)
            walls[engine].append(time.perf_counter() - t)
            if proc.returncode != 0:
                raise SystemExit(f"skin predict failed ({engine}):\n{proc.stderr[-2000:]}")
            tf_loaded[engine] = "TF-LOADED" in proc.stderr
    return {k: {"median_s": float(np.median(v)), "runs_s": v, "tensorflow_imported":
                tf_loaded[k]} for k, v in walls.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", help="run folder or name (default: a built bench run)")
    parser.add_argument("--runs-dir", default="runs")
    parser.add_argument("--arch", default="efficientnet_lite0", help="for the bench run")
    parser.add_argument("--images", default=str(ISIC_TEST), help="folder of JPEGs")
    parser.add_argument("--n", type=int, default=64, help="images per measurement")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--cold-repeats", type=int, default=3)
    parser.add_argument("--out", default="predict_throughput.json")
    args = parser.parse_args()
    if min(args.n, args.batch, args.rounds, args.cold_repeats) < 1:
        raise SystemExit("--n, --batch, --rounds and --cold-repeats must be positive")
    from skincli import ui
    from skincli.predictor import Predictor
    from skincli.runs import resolve_run

    with tempfile.TemporaryDirectory(prefix="predict-bench-") as tmp:
        os.environ.setdefault("SKIN_CACHE_DIR", str(Path(tmp) / "cache"))
        run_dir = (resolve_run(args.run, args.runs_dir) if args.run
                   else make_bench_run(Path(tmp), args.arch))
        files = image_files(Path(args.images), args.n)
        load_before = os.getloadavg()[0]
        predictors = {"litert": Predictor.from_run(run_dir, engine="litert", on_warning=print),
                      "tf": Predictor.from_run(run_dir, engine="tf")}
        if predictors["litert"].engine_name != "litert":
            raise SystemExit("this run has no LiteRT engine (see the warning above)")
        info = predictors["tf"].info
        print(f"run {run_dir} ({info.arch}, {info.input_size} px); {len(files)} images from "
              f"{args.images if Path(args.images).is_dir() else 'generated JPEGs'}; "
              f"{os.cpu_count()} CPUs; load average {load_before:.1f}", flush=True)
        batch = np.stack(predictors["tf"].read_images([str(f) for f in files])).astype(
            np.float32)
        model = model_only(predictors, batch, args.batch, args.rounds)
        print(f"  model only: {model}", flush=True)
        t = time.perf_counter()
        predictors["tf"].read_images([str(f) for f in files])
        read_ms = (time.perf_counter() - t) / len(files) * 1000
        print(f"  read+decode+resize: {read_ms:.2f} ms/img (thread pool)", flush=True)
        folder = folder_throughput(predictors, files, args.batch, args.rounds)
        print(f"  predict_paths img/s: {folder}", flush=True)
        naive = naive_loop(predictors["tf"], files[:32], args.rounds)
        print(f"  naive loop img/s: {naive:.1f}", flush=True)
        cold = cold_start(run_dir, files[0], args.cold_repeats)
        print(f"  cold start: {cold}", flush=True)
        load_after = os.getloadavg()[0]

    lt, tf = model["litert"], model["tf"]
    rows = [
        ["model, batch 1 (ms/img)", f"{lt['b1']:.2f}", f"{tf['b1']:.2f}", "-",
         f"{tf['b1'] / lt['b1']:.2f}x"],
        [f"model, batch {args.batch} (ms/img)", f"{lt['big']:.2f}", f"{tf['big']:.2f}", "-",
         f"{tf['big'] / lt['big']:.2f}x"],
        [f"predict FOLDER, {len(files)} JPEGs (img/s)", f"{folder['litert']:.1f}",
         f"{folder['tf']:.1f}", f"{naive:.1f}", f"{folder['litert'] / folder['tf']:.2f}x"],
        ["read+decode+resize (ms/img, both)", f"{read_ms:.2f}", f"{read_ms:.2f}", "-", "-"],
        ["cold `skin predict one.jpg` (s)", f"{cold['litert']['median_s']:.2f}",
         f"{cold['tf']['median_s']:.2f}", "-",
         f"{cold['tf']['median_s'] / cold['litert']['median_s']:.2f}x"],
    ]
    ui.console.print(ui.table(
        f"skin predict on {info.arch} ({info.input_size} px), {os.cpu_count()} CPUs, load "
        f"average {load_before:.1f} -> {load_after:.1f}",
        ["measure", "litert", "tf", "naive", "tf/litert (speed-up)"], rows))
    ui.console.print(f"LiteRT run imports TensorFlow: {cold['litert']['tensorflow_imported']}; "
                     f"litert vs naive loop: {folder['litert'] / naive:.1f}x", highlight=False)
    result = {"run": str(run_dir), "arch": info.arch, "input_size": info.input_size,
              "images": len(files), "batch": args.batch, "cpus": os.cpu_count(),
              "model_ms_per_image": model, "predict_paths_images_per_s": folder,
              "naive_images_per_s": naive, "cold_start": cold, "read_ms_per_image": read_ms,
              "load_average": {"before": load_before, "after": load_after},
              "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    ui.console.print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
