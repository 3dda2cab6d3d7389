"""`skin learning-curve`: what more data of each class would buy.

1. Shares: nested, lesion-grouped, class-stratified subsets of the split's training part
   (default 20/35/50/70/100%). Per seed, each class's lesions are put in a random order and a
   share takes the shortest prefix holding that share of the class's images, so the 20% subset
   sits inside the 35% one, a lesion's photographs stay together, and every class shrinks
   alike. Validation and test stay the same for every share.
2. Each (share, seed) is trained with `skincli.train` (the seed also seeds the training) and
   scored on the test part: per-class F1, macro F1. Results are appended to results.json after
   every run, and a finished run is never trained again: an interrupted curve continues where
   it stopped (an unfinished training is resumed from its checkpoint).
3. Per class (F1 against that class's training images) and for macro F1 (against all
   training images) an inverse power law is fitted (`skincli.powerlaw`), backtested (fitted on
   the shares up to 50%, predicting 100%), and asked how many images reach the target. A
   curve that fails its backtest gives no estimate.
4. A staged collection plan: the classes furthest below the target first, with how many more
   images the curve says each needs to get halfway, then to the target.

The fitting and the plan (`analyse`, `collection_plan`) work from results.json alone
(`--from-results`), without training.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skincli import powerlaw
from skincli.errors import SkinError
from skincli.fsutil import check_writable, write_json
from skincli.plots import pyplot, save_figure

DEFAULT_SHARES = (0.2, 0.35, 0.5, 0.7, 1.0)
DEFAULT_SEEDS = 2
CLASS_TARGET = 0.75
MACRO_TARGET = 0.85
MIN_IMAGES = 2   # a share must leave every class at least this many training images
MIN_LESIONS = 2  # ... and at least this many lesions
MIN_SPLIT_LESIONS = 5  # training lesions per class the split must hold at all
BACKTEST_SHARE = 0.5
RESULTS = "results.json"
ANALYSIS = "analysis.json"
MACRO = "macro F1"

Progress = Callable[[str], None]


# --- checks and shares ------------------------------------------------------------------------

def check_targets(*targets: float) -> None:
    """Every target in (0, 1), or one line."""
    for t in targets:
        if not 0.0 < float(t) < 1.0:
            raise SkinError(f"Target {t} is not valid: it must be between 0 and 1",
                            hint="e.g. --target 0.75 --macro-target 0.85")


def check_shares(shares: Sequence[float]) -> list[float]:
    """Sorted distinct shares in (0, 1], at least 3 of them, ending at 1."""
    out = sorted({round(float(s), 6) for s in shares})
    if not out or out[0] <= 0 or out[-1] > 1:
        raise SkinError(f"Shares {', '.join(map(str, shares))} are not valid: each must be in "
                        "(0, 1]", hint="e.g. --shares 0.2,0.35,0.5,0.7,1")
    if len(out) < 3:
        raise SkinError("A learning curve needs at least 3 shares (3 parameters are fitted)",
                        hint="e.g. --shares 0.2,0.35,0.5,0.7,1")
    if out[-1] != 1.0:
        out.append(1.0)  # the full training part is the point of today
    return out


def _units(train: pd.DataFrame) -> pd.Series:
    """The lesion of each training image: its group, else its content, else itself."""
    group = train["group"].astype(str) if "group" in train else pd.Series("", train.index)
    sha = train["sha256"].astype(str) if "sha256" in train else pd.Series("", train.index)
    return pd.Series(np.where(group != "", "g:" + group,
                              np.where(sha != "", "h:" + sha, "p:" + train["path"].astype(str))),
                     index=train.index)


def share_orders(train: pd.DataFrame, seed: int) -> dict[str, list[list[int]]]:
    """Per class, its lesions (lists of row positions) in this seed's random order."""
    units = _units(train)
    rng = np.random.default_rng(seed)
    out: dict[str, list[list[int]]] = {}
    labels = train["label"].astype(str).to_numpy()
    for cls in sorted(set(labels)):
        rows = np.flatnonzero(labels == cls)
        by_unit: dict[str, list[int]] = {}
        for r in rows:
            by_unit.setdefault(units.iloc[r], []).append(int(r))
        groups = [by_unit[k] for k in sorted(by_unit)]
        out[cls] = [groups[i] for i in rng.permutation(len(groups))]
    return out


def take(orders: dict[str, list[list[int]]], share: float) -> dict[str, list[int]]:
    """Per class, the row positions of the shortest lesion prefix with >= share of images."""
    out = {}
    for cls, groups in orders.items():
        total = sum(len(g) for g in groups)
        need = max(1, math.ceil(round(share * total, 9)))
        rows: list[int] = []
        for g in groups:
            if len(rows) >= need:
                break
            rows.extend(g)
        out[cls] = rows
    return out


def check_split(df: pd.DataFrame, shares: Sequence[float], seeds: int) -> None:
    """The split can carry a learning curve: val and test parts, and enough images and
    lesions of every class at the smallest share (checked for every seed)."""
    parts = set(df["split"].astype(str))
    for part in ("train", "val", "test"):
        if part not in parts:
            raise SkinError(f"The split has no {part} images; a learning curve needs train, "
                            "val and test", hint="Run `skin split` with --val and --test above 0")
    train = df[df["split"] == "train"].reset_index(drop=True)
    test_classes = set(df.loc[df["split"] == "test", "label"].astype(str))
    missing = sorted(set(train["label"].astype(str)) - test_classes)
    if missing:
        raise SkinError(f"Class {missing[0]!r} has no test images, so its curve cannot be "
                        "measured", hint="Re-split with a larger --test")
    orders0 = share_orders(train, 0)
    for cls, groups in orders0.items():
        if len(groups) < MIN_SPLIT_LESIONS:
            raise SkinError(f"The split has {len(groups)} training lesion(s) of {cls!r}; a "
                            f"learning curve needs at least {MIN_SPLIT_LESIONS} per class",
                            hint="Use a split with more lesions of that class")
    smallest = min(shares)
    for seed in range(seeds):
        orders = share_orders(train, seed) if seed else orders0
        for cls, rows in take(orders, smallest).items():
            if len(rows) < MIN_IMAGES:
                raise SkinError(f"A {smallest:.0%} share leaves {cls!r} with {len(rows)} "
                                f"training image(s); at least {MIN_IMAGES} are needed",
                                hint="Use a larger smallest share (--shares)")
            n_lesions = len({g for g in _units(train).iloc[rows]})
            if n_lesions < MIN_LESIONS:
                raise SkinError(f"A {smallest:.0%} share holds {n_lesions} lesion of {cls!r} "
                                f"(seed {seed}); at least {MIN_LESIONS} are needed",
                                hint="Use a larger smallest share (--shares)")


def share_counts(split: str | Path, shares: Sequence[float] = DEFAULT_SHARES,
                 seeds: int = DEFAULT_SEEDS) -> dict[str, Any]:
    """Per share (seed 0): training images and lesions of each class; checks, writes nothing."""
    from skincli.data.splitfile import load_split

    shares = check_shares(shares)
    df = load_split(split)
    check_split(df, shares, int(seeds))
    train = df[df["split"] == "train"].reset_index(drop=True)
    units = _units(train)
    orders = share_orders(train, 0)
    table = {}
    for share in shares:
        rows = take(orders, share)
        table[share] = {c: {"images": len(r), "lesions": len(set(units.iloc[r]))}
                        for c, r in rows.items()}
    return {"shares": shares, "classes": sorted(orders), "counts": table,
            "runs": len(shares) * int(seeds),
            "full_equivalents": round(sum(shares) * int(seeds), 2)}


def run_name(share: float, seed: int) -> str:
    """The run folder of one share and seed, e.g. lc-035-s1."""
    return f"lc-{round(share * 100):03d}-s{seed}"


def write_share_split(df: pd.DataFrame, rows: list[int], path: Path) -> Path:
    """The split file of one share: its training rows plus every val and test row."""
    from skincli.data.split import SplitResult
    from skincli.data.splitfile import write_split

    train = df[df["split"] == "train"].reset_index(drop=True)
    keep = pd.concat([train.iloc[sorted(rows)], df[df["split"] != "train"]])
    meta = dict(df.attrs.get("meta") or {})
    meta["root"] = df.attrs.get("root", meta.get("root", ""))
    meta["learning_curve_share"] = {"rows": len(rows), "of": len(train)}
    return write_split(SplitResult(frame=keep.reset_index(drop=True), meta=meta), path)


# --- training and scoring ----------------------------------------------------------------------

def _interrupted(run_dir: Path) -> bool:
    """True for a run saved by Ctrl-C (usable, but not the schedule asked for)."""
    from skincli.runs import load_run_info

    return bool((load_run_info(run_dir).extra or {}).get("interrupted"))


def _train_one(split_path: Path, name: str, runs_dir: Path, seed: int,
               overrides: dict[str, Any]) -> Path:
    """Train (or finish) one share's run; a finished run is returned as it is.

    An interrupted run (Ctrl-C saves one) or an unfinished one continues from its checkpoint;
    a Ctrl-C during this training stops the whole curve (KeyboardInterrupt) rather than
    scoring a half-trained model.
    """
    from skincli.train import resume, train

    final = runs_dir / name
    tmp = runs_dir / f".{name}.tmp"
    run: Path | None = None
    if (final / "run.json").is_file():
        if not _interrupted(final):
            return final
        run = Path(resume(name, runs_dir))
    elif tmp.exists():
        try:
            run = Path(resume(name, runs_dir))
        except SkinError:
            shutil.rmtree(tmp, ignore_errors=True)  # nothing to resume from: start again
    if run is None:
        if final.exists():  # a folder without run.json is not a finished run
            shutil.rmtree(final)
        config = {**overrides, "split": str(split_path), "name": name,
                  "runs_dir": str(runs_dir), "seed": seed}
        run = Path(train(config))
    if _interrupted(run):
        raise KeyboardInterrupt
    return run


def _score_test(run_dir: Path) -> dict[str, Any]:
    """Per-class F1, macro F1 and balanced accuracy of a run on its test part."""
    from skincli.data.evalset import load_eval_set
    from skincli.evaluate import score
    from skincli.metrics import classification_summary
    from skincli.predictor import load_predictor

    predictor = load_predictor(run_dir)
    eval_set = load_eval_set(predictor.run_dir, predictor.classes, subset="test")
    scored = score(predictor, eval_set)
    s = classification_summary(scored.y, scored.probs(predictor.temperature, False),
                               predictor.classes, n_boot=0)
    return {"f1": {r["class"]: r["f1"] for r in s["per_class"]},
            "support": {r["class"]: r["support"] for r in s["per_class"]},
            "macro_f1": s["macro_f1"], "balanced_accuracy": s["balanced_accuracy"]}


def _eta(entries: list[dict[str, Any]], shares: list[float], seeds: int) -> str:
    """"; about N min to go", from the minutes per unit of share measured so far."""
    done = {(e["share"], e["seed"]) for e in entries}
    timed = [e for e in entries if e.get("minutes")]
    if not timed:
        return ""
    per_share = sum(e["minutes"] for e in timed) / sum(e["share"] for e in timed)
    left = sum(s for s in shares for k in range(seeds) if (s, k) not in done)
    return f"; about {per_share * left:.0f} min to go" if left else ""


def _load_results(path: Path) -> dict[str, Any] | None:
    import json

    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise SkinError(f"Cannot read {path}: {exc}",
                        hint="Remove it to start the learning curve again") from exc


def measure(split: str | Path, out: str | Path, shares: Sequence[float] = DEFAULT_SHARES,
            seeds: int = DEFAULT_SEEDS, overrides: dict[str, Any] | None = None,
            progress: Progress | None = None) -> dict[str, Any]:
    """Train and score every (share, seed); resumable; returns the results (results.json)."""
    from skincli.data.splitfile import load_split

    say = progress or (lambda _msg: None)
    shares = check_shares(shares)
    if int(seeds) < 1:
        raise SkinError(f"--seeds {seeds} is not valid: at least 1 (2 or more to see noise)")
    df = load_split(split)
    check_split(df, shares, int(seeds))
    out = Path(out)
    overrides = {k: v for k, v in (overrides or {}).items() if v is not None}
    from skincli.train import resolve

    resolve({k: v for k, v in overrides.items() if k != "preset"},
            preset=overrides.get("preset"))  # a bad option fails now, not after an hour
    results_path = out / RESULTS
    results = _load_results(results_path) or {}
    def schedule(o: dict[str, Any] | None) -> dict[str, Any]:  # threads change no result
        return {k: v for k, v in (o or {}).items() if k != "threads"}

    if results and (results.get("split") != str(Path(split).resolve())
                    or schedule(results.get("train")) != schedule(overrides)
                    or results.get("seeds") not in (None, int(seeds))
                    or results.get("shares") not in (None, shares)):
        raise SkinError(f"{results_path} holds a learning curve of another split, schedule, "
                        "shares or seeds",
                        hint="Pass another --out, or remove that folder to start again")
    check_writable(results_path)
    train = df[df["split"] == "train"].reset_index(drop=True)
    classes = sorted(train["label"].astype(str).unique())
    results.update({"split": str(Path(split).resolve()), "train": overrides,
                    "classes": classes, "shares": shares, "seeds": int(seeds),
                    "train_images": {c: int((train["label"] == c).sum()) for c in classes}})
    entries: list[dict[str, Any]] = results.setdefault("entries", [])
    # Training many models in one process makes TensorFlow warn about retracing each time.
    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    done = {(e["share"], e["seed"]) for e in entries}
    runs_dir = out / "runs"
    for seed in range(int(seeds)):
        orders = share_orders(train, seed)
        for share in shares:
            if (share, seed) in done:
                continue
            rows = take(orders, share)
            name = run_name(share, seed)
            flat = [r for cls_rows in rows.values() for r in cls_rows]
            split_path = write_share_split(df, flat, out / "splits" / f"{name}.csv")
            say(f"{name}: training on {len(flat)} of {len(train)} training images")
            started = time.perf_counter()
            run_dir = _train_one(split_path, name, runs_dir, seed, overrides)
            test = _score_test(run_dir)
            entries.append({"share": share, "seed": seed, "run": name,
                            "n_train": {c: len(rows[c]) for c in classes},
                            "n_train_total": len(flat), **test,
                            "minutes": round((time.perf_counter() - started) / 60, 2)})
            write_json(results_path, results)  # after every run: an interruption loses one
            say(f"{name}: test macro F1 {test['macro_f1']:.3f} "
                f"({entries[-1]['minutes']:.1f} min){_eta(entries, shares, int(seeds))}")
    write_json(results_path, results)
    return results


# --- analysis -----------------------------------------------------------------------------------

def _points(results: dict[str, Any], key: str) -> tuple[np.ndarray, ...]:
    """Per share: mean size, mean score, standard error, share (for one class or MACRO)."""
    rows = []
    for share in sorted({e["share"] for e in results["entries"]}):
        es = [e for e in results["entries"] if e["share"] == share]
        if key == MACRO:
            n = [e["n_train_total"] for e in es]
            y = [e["macro_f1"] for e in es]
            m = sum(es[0]["support"].values()) / max(1, len(es[0]["support"]))
        else:
            n = [e["n_train"][key] for e in es]
            y = [e["f1"][key] if e["f1"][key] is not None else 0.0 for e in es]
            m = es[0]["support"][key]
        f = float(np.mean(y))
        # Seed spread (the training's noise) plus the test set's binomial noise.
        spread = float(np.std(y, ddof=1)) ** 2 / len(y) if len(y) > 1 else 0.0
        se = math.sqrt(spread + f * (1 - f) / max(1, m))
        rows.append((float(np.mean(n)), f, se, share))
    return tuple(np.array(col) for col in zip(*rows))


def analyse_curve(results: dict[str, Any], key: str, target: float, n_boot: int = 200,
                  seed: int = 0) -> dict[str, Any]:
    """Fit, backtest and size one curve (a class, or MACRO)."""
    n, y, se, share = _points(results, key)
    fit = powerlaw.fit_curve(n, y, se, n_boot=n_boot, seed=seed)
    bt = powerlaw.backtest(n, y, se, share <= BACKTEST_SHARE + 1e-9, np.isclose(share, 1.0),
                           n_boot=n_boot, seed=seed)
    need = powerlaw.required(fit, target)
    halfway = None
    today_n, today_y = float(n[-1]), float(y[-1])
    # Stage 1 is half-way from where the fitted curve stands today (not the noisy measured
    # point: a curve above it would ask for a handful of images) to the target.
    today_fit = fit.predict(today_n)
    if bt["passed"]:
        if today_y < target and today_fit < target:
            halfway = powerlaw.required(fit, today_fit + (target - today_fit) / 2)
    else:
        need = {"status": "no estimate", "median": None, "interval80": None, "target": target,
                "text": f"no estimate (backtest {bt['status']})"}
    return {"key": key, "target": target, "images_today": today_n, "f1_today": today_y,
            "f1_today_fit": today_fit,
            "points": {"n": n.tolist(), "y": y.tolist(), "se": se.tolist(),
                       "share": share.tolist()},
            "fit": {"a": fit.a, "b": fit.b, "c": fit.c, "converged": fit.ok,
                    "a_interval80": fit.interval("a"), "c_interval80": fit.interval("c")},
            "backtest": bt, "required": need, "halfway": halfway}


def analyse(results: dict[str, Any], target: float = CLASS_TARGET,
            macro_target: float = MACRO_TARGET, n_boot: int = 200) -> dict[str, Any]:
    """Every class's curve, the macro curve and the staged collection plan."""
    check_targets(target, macro_target)
    if not isinstance(results, dict) or not results.get("classes"):
        raise SkinError("Not a learning-curve results file (no classes)",
                        hint="Pass the results.json `skin learning-curve` wrote")
    entries = results.get("entries") or []
    if len({e["share"] for e in entries}) < 3:
        raise SkinError("The results hold fewer than 3 shares; nothing to fit",
                        hint="Run `skin learning-curve` to finish the measurements")
    curves = [analyse_curve(results, c, target, n_boot) for c in results["classes"]]
    macro = analyse_curve(results, MACRO, macro_target, n_boot)
    return {"classes": curves, "macro": macro, "plan": collection_plan(curves),
            "train": results.get("train"), "split": results.get("split"),
            "seeds": results.get("seeds"), "shares": sorted({e["share"] for e in entries})}


def collection_plan(curves: list[dict[str, Any]]) -> list[str]:
    """Staged advice, worst class first: stage 1 gets each class half-way to its target (a
    short extrapolation, then measure again), stage 2 to the target; what the curves cannot
    size is said as such."""
    below = sorted((c for c in curves if c["f1_today"] < c["target"]),
                   key=lambda c: c["f1_today"])
    if not below:
        return ["Every class already reaches its target on this test split."]
    stage1, stage2, other = [], [], []
    for c in below:
        name, today = c["key"], c["images_today"]
        need, half = c["required"], c["halfway"] or {}
        if need["status"] == "no estimate":
            other.append(f"{name}: the curve failed its backtest, so no size is estimated; "
                         "collect more and measure again")
            continue
        if any(step.get("status") == "estimate" and step["median"] <= today
               for step in (need, half)):
            # The fitted curve runs above today's measured F1 (seed and test-set noise): it
            # would say "collect nothing", which no one should act on.
            other.append(f"{name}: the fitted curve lies above the measured F1 "
                         f"{c['f1_today']:.2f} at today's {today:,.0f} images (seed and "
                         "test-set noise), so it cannot size the next step; measure again "
                         "with more seeds or a larger test split")
            continue
        if half.get("status") == "estimate":
            on_curve = c.get("f1_today_fit", c["f1_today"])
            stage1.append(f"~{half['median'] - today:,.0f} more {name} "
                          f"(F1 {c['f1_today']:.2f} measured, {on_curve:.2f} on the curve "
                          f"-> ~{half['target']:.2f})")
        if need["status"] == "estimate":
            stage2.append(f"~{need['median'] - today:,.0f} more {name} in all "
                          f"(to ~{need['median']:,.0f}; F1 -> {c['target']:.2f})")
        elif need["status"] == "unreachable":
            iv = c["fit"].get("a_interval80")
            iv_text = f", 80% interval {iv[0]:.2f}-{iv[1]:.2f}" if iv else ""
            other.append(f"{name}: more images alike are not predicted to reach "
                         f"{c['target']:.2f} (asymptote {c['fit']['a']:.2f}{iv_text}); better "
                         "images, labels or a better model are needed")
        elif need["status"] == "beyond":
            other.append(f"{name}: the target lies beyond {need['horizon']:,.0f} images (3x "
                         f"today's {today:,.0f}), further than the curve can say; collect "
                         "and measure again")
    plan = []
    if stage1:
        plan.append("Stage 1 (then re-run the learning curve): collect " + "; ".join(stage1))
    if stage2:
        plan.append("Stage 2: collect " + "; ".join(stage2))
    return plan + other


def write_analysis(analysis: dict[str, Any], out: str | Path) -> Path:
    """analysis.json and learning_curve.png in `out`."""
    out = Path(out)
    write_json(out / ANALYSIS, analysis)
    plot(analysis, out / "learning_curve.png")
    return out


def plot(analysis: dict[str, Any], path: Path) -> None:
    """One panel per class plus macro F1: points, fit, target and horizon."""
    plt = pyplot()
    curves = analysis["classes"] + [analysis["macro"]]
    cols = 3
    rows = math.ceil(len(curves) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 3.2 * rows), squeeze=False)
    for ax, c in zip(axes.ravel(), curves):
        pts = c["points"]
        n = np.array(pts["n"])
        xs = np.linspace(n.min() * 0.8, n.max() * powerlaw.HORIZON, 200)
        f = c["fit"]
        ax.errorbar(n, pts["y"], yerr=1.96 * np.array(pts["se"]), fmt="o", ms=4)
        ax.plot(xs, powerlaw.power_law(xs, f["a"], f["b"], f["c"]), "-", lw=1)
        ax.axhline(c["target"], ls="--", c="grey", lw=0.8)
        ax.axvline(n.max(), ls=":", c="grey", lw=0.8)
        ax.set_title(f"{c['key']} (backtest {c['backtest']['status']})", fontsize=9)
        ax.set_ylim(0, 1)
        ax.set_xlabel("training images")
    for ax in axes.ravel()[len(curves):]:
        ax.axis("off")
    fig.tight_layout()
    save_figure(fig, path)
