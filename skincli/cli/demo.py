"""`skin demo`: the whole lifecycle on a small synthetic data set, in a few minutes on a CPU."""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import typer

from skincli import ui
from skincli.cli.common import handle_errors
from skincli.errors import SkinError

HELP = ("Run eda -> split -> train -> evaluate -> predict on a small SYNTHETIC data set "
        "(generated on the fly) to see the whole lifecycle before bringing your own data.")


def demo_steps(arch: str, epochs: int, fine_tune_epochs: int, input_size: int,
               name: str = "demo") -> list[list[str]]:
    """The commands the demo runs, exactly as a user would type them in the work folder."""
    sample = "data/synthetic-melanoma/synthetic-melanoma_0000.jpg"
    return [
        ["eda", "data"],
        ["split", "data"],
        ["train", "--arch", arch, "--oversample", "--epochs", str(epochs),
         "--fine-tune-epochs", str(fine_tune_epochs), "--input-size", str(input_size),
         "--name", name],
        ["evaluate"],
        ["predict", sample, "data/synthetic-nevus/synthetic-nevus_0000.jpg"],
    ]


@handle_errors
def command(
    workdir: Annotated[
        Path | None,
        typer.Option(help="Folder for the synthetic data, runs and reports "
                     "(default: a new temporary folder).", file_okay=False),
    ] = None,
    arch: Annotated[str, typer.Option(help="Architecture to train (see `skin train "
                                      "--list-archs`).")] = "efficientnet",
    epochs: Annotated[int, typer.Option(min=1, help="Epochs with the backbone frozen.")] = 3,
    fine_tune_epochs: Annotated[int, typer.Option(min=0, help="Fine-tuning epochs.")] = 1,
    input_size: Annotated[int, typer.Option(min=32, help="Input size for the demo model.")] = 128,
    images: Annotated[int, typer.Option(min=8, help="Synthetic images in all.")] = 160,
) -> None:
    """Generate synthetic lesions and run every lifecycle step on them."""
    from skincli.fsutil import atomic_dir, write_text
    from skincli.models.registry import get_arch
    from skincli.runs import next_run_dir
    from skincli.synthetic import SYNTHETIC_NOTE, make_synthetic_dataset, synthetic_classes

    get_arch(arch)  # a typo fails now, not after the data, eda and split steps
    if workdir is not None:
        try:
            workdir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SkinError(f"Cannot create --workdir {workdir}: {exc.strerror or exc}",
                            hint="Choose a writable folder, or leave --workdir out") from None
    work = workdir or Path(tempfile.mkdtemp(prefix="skin-demo-"))
    note = work / "SYNTHETIC-DATA.txt"
    if (work / "data").exists() and not note.exists():
        # Never mix synthetic lesions into someone's own data/ folder.
        raise SkinError(f"{work} already has a data/ folder that `skin demo` did not make",
                        hint="Choose a new or empty --workdir")
    run_name = next_run_dir("demo", work / "runs").name  # demo, demo2... on a second go
    ui.console.rule("[bold]skin demo[/] — synthetic data, for demonstration only")
    shares = [0.4, 0.25, 0.2, 0.15]  # imbalanced on purpose, like real collections
    counts = {c: max(2, int(images * s)) for c, s in zip(synthetic_classes(), shares)}
    with atomic_dir(work / "data") as tmp:  # a second go replaces the images, never adds
        make_synthetic_dataset(tmp, counts)
    write_text(note, SYNTHETIC_NOTE)
    ui.console.print(f"Generated {sum(counts.values())} SYNTHETIC images in {work / 'data'}")
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    results: list[tuple[str, str, float]] = []
    for args in demo_steps(arch, epochs, fine_tune_epochs, input_size, run_name):
        shown = "skin " + " ".join(shlex.quote(a) for a in args)
        ui.console.rule(f"[cyan]$ {shown}")
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-m", "skincli", *args], cwd=work, env=env)
        took = time.perf_counter() - start
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
        results.append((shown, status, took))
        if proc.returncode != 0:
            break
    ui.console.print(ui.table("demo summary", ["command", "result", "seconds"],
                              [(c, s, f"{t:.1f}") for c, s, t in results]))
    ui.console.print(f"Everything is in {work} (data/, splits/, runs/, reports/).")
    if any(s != "ok" for _, s, _ in results):
        raise SkinError("The demo stopped at a failing step (see its message above)")
