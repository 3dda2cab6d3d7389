"""A small thread-safe metrics registry that renders the Prometheus text format (0.0.4).

Counters, gauges and histograms with labels: enough for the server, without a dependency.
Each worker process has its own registry (see DEPLOY.md for scraping several workers).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)

Labels = tuple[tuple[str, str], ...]


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _fmt_labels(labels: Labels, extra: tuple[tuple[str, str], ...] = ()) -> str:
    items = labels + extra
    if not items:
        return ""
    return "{" + ",".join(f'{k}="{_escape(str(v))}"' for k, v in items) + "}"


def _fmt_value(value: float) -> str:
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if float(value).is_integer():
        return str(int(value))
    return repr(float(value))


class _Metric:
    kind = "untyped"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        self.name = name
        self.help = help_text
        self.label_names = tuple(label_names)
        self._lock = threading.Lock()

    def _key(self, labels: dict[str, str]) -> Labels:
        if set(labels) != set(self.label_names):
            raise ValueError(f"{self.name} needs labels {self.label_names}, got {tuple(labels)}")
        return tuple((k, str(labels[k])) for k in self.label_names)

    def header(self) -> list[str]:
        return [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]


class Counter(_Metric):
    """A monotonically increasing count per label set."""

    kind = "counter"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = ()) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}

    def inc(self, amount: float = 1.0, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = self._values.get(key, 0.0) + amount

    def value(self, **labels: str) -> float:
        with self._lock:
            return self._values.get(self._key(labels), 0.0)

    def render(self) -> list[str]:
        with self._lock:
            items = sorted(self._values.items())
        if not items and not self.label_names:
            items = [((), 0.0)]
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Gauge(_Metric):
    """A value that goes up and down, or is read from a callback at scrape time."""

    kind = "gauge"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 read: Callable[[], float] | None = None) -> None:
        super().__init__(name, help_text, label_names)
        self._values: dict[Labels, float] = {}
        self.read = read

    def set(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            self._values[key] = float(value)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def render(self) -> list[str]:
        if self.read is not None:
            try:
                return self.header() + [f"{self.name} {_fmt_value(float(self.read()))}"]
            except Exception:  # a failing callback must not break /metrics
                return self.header()
        with self._lock:
            items = sorted(self._values.items())
        return self.header() + [f"{self.name}{_fmt_labels(k)} {_fmt_value(v)}" for k, v in items]


class Histogram(_Metric):
    """Cumulative buckets, sum and count per label set."""

    kind = "histogram"

    def __init__(self, name: str, help_text: str, label_names: Sequence[str] = (),
                 buckets: Sequence[float] = LATENCY_BUCKETS) -> None:
        super().__init__(name, help_text, label_names)
        self.buckets = tuple(sorted(buckets))
        self._counts: dict[Labels, list[int]] = {}
        self._sums: dict[Labels, float] = {}

    def observe(self, value: float, **labels: str) -> None:
        key = self._key(labels)
        with self._lock:
            counts = self._counts.setdefault(key, [0] * (len(self.buckets) + 1))
            for i, bound in enumerate(self.buckets):
                if value <= bound:
                    counts[i] += 1
                    break
            else:
                counts[-1] += 1
            self._sums[key] = self._sums.get(key, 0.0) + value

    def snapshot(self, **labels: str) -> dict[str, float]:
        """{'count', 'sum', and 'le_<bound>' cumulative counts} for one label set (tests)."""
        key = self._key(labels)
        with self._lock:
            counts = list(self._counts.get(key, [0] * (len(self.buckets) + 1)))
            total = self._sums.get(key, 0.0)
        out: dict[str, float] = {"count": float(sum(counts)), "sum": total}
        running = 0
        for bound, c in zip(self.buckets, counts):
            running += c
            out[f"le_{_fmt_value(bound)}"] = float(running)
        return out

    def render(self) -> list[str]:
        lines = self.header()
        with self._lock:
            keys = sorted(self._counts)
            data = {k: (list(self._counts[k]), self._sums[k]) for k in keys}
        for key in keys:
            counts, total = data[key]
            running = 0
            for bound, c in zip(self.buckets, counts):
                running += c
                lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', _fmt_value(bound)),))}"
                             f" {running}")
            running += counts[-1]
            lines.append(f"{self.name}_bucket{_fmt_labels(key, (('le', '+Inf'),))} {running}")
            lines.append(f"{self.name}_sum{_fmt_labels(key)} {_fmt_value(total)}")
            lines.append(f"{self.name}_count{_fmt_labels(key)} {running}")
        return lines


class Metrics:
    """The server's metrics."""

    def __init__(self) -> None:
        self.requests = Counter("skin_requests_total", "HTTP requests by route, method and status",
                                ("route", "method", "status"))
        self.latency = Histogram("skin_request_duration_seconds",
                                 "Request latency from arrival to response start", ("route",))
        self.predictions = Counter("skin_predictions_total", "Predicted images by top class",
                                   ("label",))
        self.uncertain = Counter("skin_uncertain_predictions_total",
                                 "Predictions flagged uncertain")
        self.batch_size = Histogram("skin_batch_size", "Images per forward pass",
                                    buckets=BATCH_BUCKETS)
        self.inference = Histogram("skin_inference_seconds", "Forward-pass time per batch")
        self.queue_depth = Gauge("skin_queue_depth", "Images waiting for the model")
        self.decoding = Gauge("skin_decode_pixels", "Pixels being decoded now (all requests)")
        self.rejected = Counter("skin_rejected_total",
                                "Images refused before inference, by reason", ("reason",))
        self.logged = Counter("skin_prediction_log_rows_total", "Rows written to the store")
        self.log_dropped = Counter("skin_prediction_log_dropped_total",
                                   "Rows dropped because the log queue was full")
        self.log_errors = Counter("skin_prediction_log_errors_total",
                                  "Failed writes to the store (rows lost)")
        self.client_closed = Counter("skin_client_closed_total", "Requests whose client went "
                                     "away before the body was read (not a server error)",
                                     ("route",))
        self.log_spooled = Counter("skin_prediction_log_spooled_total",
                                   "Rows written to the local journal because the store could "
                                   "not take them (replayed later)")
        self.log_replayed = Counter("skin_prediction_log_replayed_total",
                                    "Journal rows written to the store after all")
        self.log_lost = Counter("skin_prediction_log_lost_total",
                                "Rows that could be neither stored nor journaled (lost)")
        self.reloads = Counter("skin_model_reloads_total", "Model reloads by result", ("result",))
        self.model_info = Gauge("skin_model_info", "The model being served (value 1)",
                                ("name", "version", "arch"))
        self.ready = Gauge("skin_ready", "1 when the model is loaded and warm")
        self.rate_limited = Counter("skin_rate_limited_total",
                                    "Requests refused with 429 by the per-client --rate-limit")
        self._all: list[_Metric] = [
            self.requests, self.latency, self.predictions, self.uncertain, self.batch_size,
            self.inference, self.queue_depth, self.decoding, self.rejected, self.logged,
            self.log_dropped,
            self.log_errors, self.log_spooled, self.log_replayed, self.log_lost,
            self.client_closed, self.reloads, self.model_info, self.ready, self.rate_limited,
        ]

    def render(self) -> str:
        """All metrics in the Prometheus text exposition format."""
        lines: list[str] = []
        for metric in self._all:
            lines.extend(metric.render())
        return "\n".join(lines) + "\n"


CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
