"""`--strategy multiworker`: synchronous data-parallel training across processes or machines.

Every worker runs the same `skin train` command with its own `TF_CONFIG`; TensorFlow's
MultiWorkerMirroredStrategy averages the gradients of all workers at every step, and only the
chief (worker 0) keeps the run folder. This module makes that path safe to use:

- `TF_CONFIG` is checked before TensorFlow sees it (a typo is one line, not a traceback);
- every worker waits a bounded time for the others to join, and checks its peers every few
  seconds while training: a worker that dies makes the others stop with one clear line instead
  of waiting forever in an all-reduce;
- two Keras 3 defects with MultiWorkerMirroredStrategy are worked around: its first `fit`
  builds the model by reducing one input batch across workers ("Attempt to convert a value
  (PerReplica...)"; the local batch has the same shapes, so it is used instead), and it
  averages each step's scalar loss and metrics over axis 0 ("Invalid reduction dimension 0");
  they are averaged across workers element-wise instead.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from skincli.errors import SkinError

# Seconds a worker waits at start for every other worker to be up.
JOIN_TIMEOUT_S = float(os.environ.get("SKIN_CLUSTER_JOIN_TIMEOUT_S", "300"))
# Peer health checks while training: every INTERVAL s, each with TIMEOUT s, RETRIES times.
# A dead peer is noticed within about INTERVAL + RETRIES * TIMEOUT seconds.
CHECK_INTERVAL_S = 5
CHECK_TIMEOUT_S = 5
CHECK_RETRIES = 2

_TF_CONFIG_HINT = ('Set TF_CONFIG on each worker, e.g. {"cluster": {"worker": ["host1:12345", '
                   '"host2:12345"]}, "task": {"type": "worker", "index": 0}}')


def cluster_from_env() -> dict[str, Any] | None:
    """The parsed and checked `TF_CONFIG` (None when unset: one worker, the chief)."""
    raw = os.environ.get("TF_CONFIG", "").strip()
    if not raw:
        return None
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SkinError(f"TF_CONFIG is not valid JSON ({exc.msg} at character {exc.pos})",
                        hint=_TF_CONFIG_HINT) from None
    cluster = cfg.get("cluster") if isinstance(cfg, dict) else None
    task = cfg.get("task") if isinstance(cfg, dict) else None
    if not isinstance(cluster, dict) or not isinstance(task, dict):
        raise SkinError("TF_CONFIG needs a \"cluster\" and a \"task\" object",
                        hint=_TF_CONFIG_HINT)
    kind, index = task.get("type"), task.get("index")
    members = cluster.get(kind) if isinstance(kind, str) else None
    if not isinstance(members, list) or not members:
        raise SkinError(f"TF_CONFIG task type {kind!r} is not a job of the cluster "
                        f"({', '.join(map(str, cluster)) or 'none'})", hint=_TF_CONFIG_HINT)
    if not isinstance(index, int) or not 0 <= index < len(members):
        raise SkinError(f"TF_CONFIG task index {index!r} is outside 0..{len(members) - 1} for "
                        f"the {len(members)} {kind} addresses", hint=_TF_CONFIG_HINT)
    for address in (a for job in cluster.values() if isinstance(job, list) for a in job):
        if not isinstance(address, str) or ":" not in address:
            raise SkinError(f"TF_CONFIG cluster address {address!r} is not host:port",
                            hint=_TF_CONFIG_HINT)
    return cfg


def make_strategy() -> Any:
    """A MultiWorkerMirroredStrategy with bounded waits (one worker without TF_CONFIG)."""
    import tensorflow as tf
    from tensorflow.python.distribute import collective_all_reduce_strategy as car

    cfg = cluster_from_env()
    ext = car.CollectiveAllReduceExtended
    # Class attributes read when the strategy starts its health-check thread (TensorFlow's
    # defaults: wait forever for the cluster, then notice a dead peer after about 60 s).
    ext._check_health_initial_timeout = int(JOIN_TIMEOUT_S)
    ext._check_health_interval = CHECK_INTERVAL_S
    ext._check_health_timeout = CHECK_TIMEOUT_S
    ext._check_health_retry_limit = CHECK_RETRIES
    _patch_keras_symbolic_build()
    try:
        return tf.distribute.MultiWorkerMirroredStrategy()
    except RuntimeError as exc:
        if "Timeout waiting for the cluster" in str(exc):
            workers = ", ".join(str(a) for job in (cfg or {}).get("cluster", {}).values()
                                for a in job)
            raise SkinError(f"Not every worker joined within {JOIN_TIMEOUT_S:g} s "
                            f"(cluster: {workers})",
                            hint="Start `skin train --strategy multiworker` on every machine "
                            "of TF_CONFIG, with the same options") from None
        raise


def worker_scratch(name: str) -> tuple[Path, Path]:
    """(tmp_dir, final_dir) for a worker other than the chief: a scratch folder, removed at exit.

    Such a worker trains in step with the chief (its model is the same) but keeps nothing.
    """
    root = Path(tempfile.mkdtemp(prefix="skin-worker-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    return root / f".{name}.tmp", root / name


def worker_count(strategy: Any) -> int:
    """How many workers take part (1 for a single process)."""
    extended = getattr(strategy, "extended", None)
    return int(getattr(extended, "_num_workers", 1) or 1)


@contextlib.contextmanager
def peer_failures(strategy: Any) -> Iterator[None]:
    """Turn a lost or failed peer into one line that says what happened and what to do."""
    try:
        yield
    except Exception as exc:
        if worker_count(strategy) <= 1 or not _is_collective_failure(exc):
            raise
        detail = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else ""
        raise SkinError(f"Multi-worker training stopped: another worker is down or unreachable "
                        f"({type(exc).__name__}: {detail})",
                        hint="Restart `skin train` on every worker; all must run together"
                        ) from None


def _is_collective_failure(exc: BaseException) -> bool:
    import tensorflow as tf

    kinds = (tf.errors.UnavailableError, tf.errors.DeadlineExceededError,
             tf.errors.CancelledError, tf.errors.AbortedError, tf.errors.InternalError,
             tf.errors.FailedPreconditionError)
    return isinstance(exc, kinds)


_PATCHED = False


def _patch_keras_symbolic_build() -> None:
    """Build the model from the local replica's batch instead of a cross-worker reduce."""
    global _PATCHED
    if _PATCHED:
        return
    try:
        from keras.src.backend.tensorflow import trainer as keras_tf_trainer
    except ImportError:  # another Keras layout: nothing to patch
        return
    import tensorflow as tf

    TensorFlowTrainer = keras_tf_trainer.TensorFlowTrainer  # noqa: N806
    original_reduce = keras_tf_trainer.reduce_per_replica

    def reduce_per_replica(values: Any, strategy: Any, reduction: str) -> Any:
        if (reduction not in ("auto", "mean")
                or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            return original_reduce(values, strategy, reduction)
        return tf.nest.map_structure(
            lambda v: strategy.reduce("MEAN", v, axis=None)
            if isinstance(v, tf.distribute.DistributedValues) else v, values)

    original = TensorFlowTrainer._maybe_symbolic_build

    def _maybe_symbolic_build(self: Any, iterator: Any = None, data_batch: Any = None) -> Any:
        strategy = getattr(self, "_distribute_strategy", None)
        if (iterator is None or strategy is None
                or not isinstance(strategy, tf.distribute.MultiWorkerMirroredStrategy)):
            return original(self, iterator=iterator, data_batch=data_batch)
        for _, _, it in iterator:
            batch = next(it)
            data_batch = tf.nest.map_structure(
                lambda v: strategy.experimental_local_results(v)[0]
                if isinstance(v, tf.distribute.DistributedValues) else v, batch)
            break
        with strategy.scope():
            self._symbolic_build(data_batch=data_batch)

    TensorFlowTrainer._maybe_symbolic_build = _maybe_symbolic_build
    keras_tf_trainer.reduce_per_replica = reduce_per_replica
    _PATCHED = True
