"""The process around training: CPU threads, seeds, the distribution strategy, disk errors.

Nothing here knows about models or data; the trainer calls these once before a run starts,
and every room that writes files wraps the write in `disk_guard`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import platform
from collections.abc import Iterator
from typing import Any

from skincli.errors import SkinError


def configure_threads(threads: int = 0) -> int:
    """Use `threads` CPU threads for TensorFlow ops (0 = every core this process may use).

    One inter-op thread: the model's ops run one after another anyway and tf.data has its own
    pool, so more would only oversubscribe a small machine.
    """
    import tensorflow as tf

    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    n = int(threads) or cores
    with contextlib.suppress(RuntimeError):  # TF already initialised in this process
        tf.config.threading.set_intra_op_parallelism_threads(n)
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return n


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed Python, NumPy and TensorFlow; ask for deterministic ops when the config does."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(seed)
    if deterministic:
        with contextlib.suppress(Exception):
            tf.config.experimental.enable_op_determinism()


def make_strategy(name: str) -> Any:
    """The tf.distribute strategy for `--strategy` (default: the single-device one)."""
    import tensorflow as tf

    if name == "mirrored":
        return tf.distribute.MirroredStrategy()
    if name == "multiworker":  # the cluster comes from TF_CONFIG (one worker without it)
        from skincli.train.multiworker import make_strategy as make_multiworker
        return make_multiworker()
    return tf.distribute.get_strategy()


def is_chief(strategy: Any) -> bool:
    """True for the one worker that writes the run folder (every worker without a cluster)."""
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not getattr(resolver, "task_type", None):
        return True
    return resolver.task_type == "chief" or (resolver.task_type == "worker"
                                             and int(resolver.task_id or 0) == 0)


def _is_disk_full(exc: BaseException) -> bool:
    text = str(exc)
    return (getattr(exc, "errno", None) == errno.ENOSPC or "No space left" in text
            or "errno = 28" in text)


@contextlib.contextmanager
def disk_guard(what: str, resume_name: str | None = None) -> Iterator[None]:
    """Turn 'disk full' (and other OS errors) while writing `what` into one clear line."""
    try:
        yield
    except SkinError as exc:
        if _is_disk_full(exc):
            raise _disk_full_error(what, resume_name) from None
        raise
    except OSError as exc:
        if _is_disk_full(exc):
            raise _disk_full_error(what, resume_name) from None
        raise SkinError(f"Could not write {what}: {exc.strerror or exc}",
                        hint="Check the runs folder is writable") from None


def _disk_full_error(what: str, resume_name: str | None) -> SkinError:
    hint = "Free some space"
    if resume_name:
        hint += f", then continue with `skin train --resume {resume_name}`"
    return SkinError(f"No space left on the disk while writing {what}", hint=hint)


def package_versions() -> dict[str, str]:
    """Versions of the packages a run depends on (no host names or paths)."""
    from importlib import metadata

    versions = {"python": platform.python_version()}
    for dist in ("skincli", "tensorflow", "tensorflow-cpu", "keras", "numpy", "scikit-learn",
                 "pandas", "pillow"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    return versions
