"""The Prometheus text format (0.0.4) and OpenMetrics 1.0 (what Prometheus asks for; it
differs in its headers and its ``# EOF`` only), written straight from label values, byte for
byte as client_python's ``generate_latest`` functions write the same families.

The collector's families take the same ``add_metric`` calls as client_python's
``*MetricFamily``, without a ``Sample`` and a label dict per sample, and a sample unchanged
since the last scrape is not formatted again: with a series per pid (``--label-pid``) or per
pod, a scrape has tens of thousands of samples, most of them unchanged.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from functools import partial

from prometheus_client import exposition
from prometheus_client.openmetrics import exposition as om_exposition
from prometheus_client.openmetrics.exposition import UNDERSCORES, escape_label_name
from prometheus_client.openmetrics.exposition import escape_metric_name as _metric_name
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# A counter's samples end in _total (and so does its name in the Prometheus format's headers).
SUFFIXES = {"counter": "_total", "gauge": "", "histogram": ""}
EOF_LINE = b"# EOF\n"


def escape_value(value: str) -> str:
    """A label value as client_python escapes it (backslash, newline, double quote)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def header(name: str, kind: str, documentation: str, openmetrics: bool) -> str:
    """HELP and TYPE: OpenMetrics also escapes double quotes in the help text."""
    if openmetrics:
        help_text = escape_value(documentation)
    else:
        help_text = documentation.replace("\\", r"\\").replace("\n", r"\n")
    return f"# HELP {name} {help_text}\n# TYPE {name} {kind}\n"


class LineCache:
    """Sample lines by (sample name, label values, value), kept from one scrape to the next:
    lines no scrape asked for since the last rotation go, so it holds one scrape's lines at
    most. Concurrent scrapes may share it: a key always makes the same line."""

    def __init__(self) -> None:
        self._last: dict[tuple, str] = {}
        self._now: dict[tuple, str] = {}

    def get(self, key: tuple) -> str | None:
        """The line of that key if the last scrape had it (kept for the next one too)."""
        line = self._last.get(key)
        if line is not None:
            self._now[key] = line
        return line

    def put(self, key: tuple, line: str) -> str:
        self._now[key] = line
        return line

    def rotate(self) -> None:
        """Called once a scrape is written."""
        self._last, self._now = self._now, {}


class TextFamily:
    """A gauge or counter family written as text as its samples come: the ``add_metric`` of
    client_python's ``GaugeMetricFamily`` and ``CounterMetricFamily``."""

    def __init__(
        self, kind: str, name: str, documentation: str, labels: Sequence[str], cache: LineCache
    ) -> None:
        self.kind = kind
        self.name = _metric_name(name, UNDERSCORES)
        self.sample_name = _metric_name(name + SUFFIXES[kind], UNDERSCORES)
        self.documentation = documentation
        self._label_names = tuple(escape_label_name(label, UNDERSCORES) for label in labels)
        self._cache = cache
        self._lines: list[str] = []

    def add_metric(self, labels: Sequence[str], value: float) -> None:
        # Tens of thousands of calls a scrape with a series per pid: kept short.
        key = (self.sample_name, tuple(labels), value)
        line = self._cache.get(key)
        if line is None:
            line = self._cache.put(
                key, sample_line(self.sample_name, self._label_names, key[1], value)
            )
        self._lines.append(line)

    def text(self, openmetrics: bool = False) -> str:
        name = self.name if openmetrics else self.sample_name
        return header(name, self.kind, self.documentation, openmetrics) + "".join(self._lines)


def sample_line(name: str, label_names: Sequence[str], values: Sequence[str], value: float) -> str:
    """One sample, its labels sorted by name as client_python writes them."""
    pairs = sorted(zip(label_names, values, strict=True))
    labels = ",".join(f'{label}="{escape_value(text)}"' for label, text in pairs)
    return (
        f"{name}{{{labels}}} {floatToGoString(value)}\n"
        if labels
        else f"{name} {floatToGoString(value)}\n"
    )


class TextHistogram(TextFamily):
    """``HistogramMetricFamily.add_metric`` as text: a series' buckets, count and sum, written
    together and kept together."""

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], cache: LineCache
    ) -> None:
        super().__init__("histogram", name, documentation, labels, cache)

    def add_metric(
        self, labels: Sequence[str], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> None:
        key = (self.name, tuple(labels), tuple(buckets), sum_value)
        line = self._cache.get(key)
        if line is None:
            line = self._cache.put(key, self._series(key[1], buckets, sum_value))
        self._lines.append(line)

    def _series(
        self, values: tuple[str, ...], buckets: Sequence[tuple[str, float]], sum_value: float
    ) -> str:
        with_bound = (*self._label_names, "le")
        lines = [
            sample_line(f"{self.name}_bucket", with_bound, (*values, bound), count)
            for bound, count in buckets
        ]
        # As client_python: no count nor sum when a bucket bound is negative.
        if float(buckets[0][0]) >= 0:
            lines.append(
                sample_line(f"{self.name}_count", self._label_names, values, buckets[-1][1])
            )
            lines.append(sample_line(f"{self.name}_sum", self._label_names, values, sum_value))
        return "".join(lines)


class TextFamilies:
    """Makes the collector's families as text (see ``collector.MetricFamilies`` for the same
    as client_python objects)."""

    def __init__(self, cache: LineCache) -> None:
        self._cache = cache

    def gauge(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ) -> TextFamily:
        return self._family("gauge", name, documentation, labels, value)

    def counter(
        self, name: str, documentation: str, labels: Sequence[str] = (), value: float | None = None
    ) -> TextFamily:
        return self._family("counter", name, documentation, labels, value)

    def histogram(self, name: str, documentation: str, labels: Sequence[str]) -> TextHistogram:
        return TextHistogram(name, documentation, labels, self._cache)

    def _family(
        self, kind: str, name: str, documentation: str, labels: Sequence[str], value: float | None
    ) -> TextFamily:
        family = TextFamily(kind, name, documentation, labels, self._cache)
        if value is not None:
            family.add_metric([], value)
        return family


def format_of(encoder: Callable) -> str | None:
    """Which format ``choose_encoder``'s encoder writes, where this module writes it the same:
    ``"text"``, ``"openmetrics"``, or None (another escaping or version: client_python's)."""
    function, options = encoder, {}
    if isinstance(encoder, partial):
        function, options = encoder.func, encoder.keywords
    if options.get("escaping", UNDERSCORES) != UNDERSCORES:
        return None
    if function is exposition.generate_latest:
        return "text"
    if function is om_exposition.generate_latest and options.get("version") == "1.0.0":
        return "openmetrics"
    return None


def write_text(collectors: Iterable[Collector], openmetrics: bool = False) -> bytes:
    """The exposition of collectors in order, as the ``generate_latest`` of a registry holding
    them writes it: those that write their own text (``text()``) do, client_python writes
    the others."""
    parts = []
    for collector in collectors:
        own = getattr(collector, "text", None)
        if own is not None:
            parts.append(own(openmetrics).encode())
        elif openmetrics:
            parts.append(om_exposition.generate_latest(collector).removesuffix(EOF_LINE))
        else:
            parts.append(exposition.generate_latest(collector))
    if openmetrics:
        parts.append(EOF_LINE)
    return b"".join(parts)
