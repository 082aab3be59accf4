"""A real Prometheus on loopback for tests, and the queries that the deploy files hold.

Grafana is not packaged for Debian, so dashboards are checked the way Grafana would use them:
each panel's PromQL, with the dashboard variables filled in, is sent to Debian's `prometheus`
(the 2.42 the project's setup installs). Alert rules are loaded into the same binary.

    with start_prometheus(["127.0.0.1:9097"], rule_files=["deploy/prometheus/alerts.yml"]) as prom:
        prom.wait_for_scrapes(3)
        for title, expr in dashboard_queries("deploy/grafana/thread-observer.json"):
            assert prom.query(expr), title

Everything listens on and talks to 127.0.0.1 only, and the Prometheus process never outlives
the `with` block (nor the test process, should that be killed).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import re
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from workloads.servers import free_port

PROMETHEUS = shutil.which("prometheus")
PROMTOOL = shutil.which("promtool")
JOB = "thread-observer"

# What Grafana puts in place of its built-in variables; one minute suits a 1 s scrape interval
# and is what $__rate_interval becomes for Grafana's default 15 s interval too.
GRAFANA_BUILTINS = {
    "__rate_interval": "1m",
    "__interval": "1m",
    "__interval_ms": "60000",
    "__range": "1h",
    "__range_s": "3600",
    "__range_ms": "3600000",
}

_PR_SET_PDEATHSIG = 1
# Loaded here, not in the forked child, where only async-signal-safe work is wise.
_libc = ctypes.CDLL(None, use_errno=True)
_VARIABLE = re.compile(r"\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)")

# Local addresses must never go through a proxy that the environment may name.
_http = urllib.request.build_opener(urllib.request.ProxyHandler({}))


class PromQLError(RuntimeError):
    """Prometheus refused a query (bad syntax, bad types) or its API failed."""


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen
    workdir: Path
    job: str = JOB

    def query(self, expr: str, at: float | None = None) -> list:
        """Instant query; the `result` list (vector samples, or [time, value] for a scalar)."""
        form = {"query": expr}
        if at is not None:
            form["time"] = f"{at:.3f}"
        data = self._api("/api/v1/query", form)
        return data["result"]

    def alerts(self) -> list[dict]:
        """Alerts pending or firing now, as /api/v1/alerts lists them."""
        return self._api("/api/v1/alerts")["alerts"]

    def rule_groups(self) -> list[dict]:
        """Loaded rule groups with each rule's health and last error."""
        return self._api("/api/v1/rules")["groups"]

    def targets(self) -> dict:
        """{"activeTargets": [...], "droppedTargets": [...]} after relabelling."""
        return self._api("/api/v1/targets")

    def wait_for_scrapes(self, n: int, timeout: float = 30.0, job: str | None = None) -> None:
        """Wait until every target of `job` (the static job by default) was scraped n times.

        Counts `up` samples, which exist whether a scrape succeeded or not; check `up` itself
        when the target must be healthy.
        """
        job = job or self.job
        expr = f'count_over_time(up{{job="{job}"}}[1h])'
        deadline = time.monotonic() + timeout
        while True:
            counts = [float(sample["value"][1]) for sample in self.query(expr)]
            expected = self._target_count(job)
            if expected and len(counts) >= expected and min(counts) >= n:
                return
            if time.monotonic() > deadline:
                raise TimeoutError(
                    f"{job}: {expected} targets, scrapes per target {counts} after {timeout:.0f} s;"
                    f" wanted {n} each\n{self.log_tail()}"
                )
            time.sleep(0.2)

    def log_tail(self, lines: int = 20) -> str:
        log = self.workdir / "prometheus.log"
        text = log.read_text(errors="replace") if log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def _target_count(self, job: str) -> int:
        return sum(1 for t in self.targets()["activeTargets"] if t["labels"].get("job") == job)

    def _api(self, path: str, form: dict[str, str] | None = None) -> dict:
        body = urllib.parse.urlencode(form).encode() if form is not None else None
        try:
            with _http.open(self.url + path, data=body, timeout=10) as response:
                reply = json.load(response)
        except urllib.error.HTTPError as error:
            try:
                reply = json.load(error)
            except ValueError:
                raise PromQLError(f"{path}: HTTP {error.code}") from error
        if reply.get("status") != "success":
            query = form.get("query") if form else None
            raise PromQLError(f"{path} {query!r}: {reply.get('errorType')}: {reply.get('error')}")
        return reply["data"]


@contextlib.contextmanager
def start_prometheus(
    scrape_targets: Sequence[str],
    scrape_interval: str = "1s",
    rule_files: Iterable[str | Path] = (),
    *,
    extra_scrape_configs: Iterable[dict] = (),
    startup_timeout: float = 30.0,
) -> Iterator[Prometheus]:
    """Run Debian's prometheus on 127.0.0.1 with a fresh storage dir; stop it on exit.

    `scrape_targets` ("127.0.0.1:PORT") are scraped as job "thread-observer", the job name the
    alert rules expect. `extra_scrape_configs` are appended as they are (dicts in Prometheus'
    scrape_config format).
    """
    if PROMETHEUS is None:
        raise FileNotFoundError("prometheus is not installed (Debian package: prometheus)")
    scrape_configs = []
    if scrape_targets:
        scrape_configs.append(
            {"job_name": JOB, "static_configs": [{"targets": list(scrape_targets)}]}
        )
    scrape_configs.extend(extra_scrape_configs)
    config = {
        "global": {
            "scrape_interval": scrape_interval,
            # Prometheus rejects a timeout longer than the interval (its default is 10 s).
            "scrape_timeout": scrape_interval,
            "evaluation_interval": scrape_interval,
        },
        "rule_files": [str(Path(f).resolve()) for f in rule_files],
        "scrape_configs": scrape_configs,
    }
    with tempfile.TemporaryDirectory(prefix="prometheus-test-") as tmp:
        workdir = Path(tmp)
        config_file = workdir / "prometheus.yml"
        config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        prom = _launch(workdir, config_file, startup_timeout)
        try:
            yield prom
        finally:
            _stop(prom.process)


def _launch(workdir: Path, config_file: Path, startup_timeout: float) -> Prometheus:
    # A free port can be taken between our probe and Prometheus binding it: try a few.
    for _ in range(3):
        port = free_port()
        log = (workdir / "prometheus.log").open("wb")
        process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config_file}",
                f"--storage.tsdb.path={workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
            ],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
        log.close()
        prom = Prometheus(url=f"http://127.0.0.1:{port}", process=process, workdir=workdir)
        if _wait_ready(prom, startup_timeout):
            return prom
        _stop(process)
        if "address already in use" not in prom.log_tail(50):
            raise RuntimeError(f"prometheus did not start:\n{prom.log_tail()}")
    raise RuntimeError(f"prometheus found no free port:\n{prom.log_tail()}")


def _wait_ready(prom: Prometheus, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if prom.process.poll() is not None:
            return False
        try:
            with _http.open(prom.url + "/-/ready", timeout=2) as response:
                if response.status == 200:
                    return True
        except OSError:
            pass
        time.sleep(0.05)
    return False


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
    process.wait()


def _die_with_parent() -> None:
    # Runs in the child before exec: if the test process dies without cleaning up (SIGKILL,
    # a CI timeout), the kernel sends Prometheus SIGTERM instead of leaving it running.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)


def dashboard_queries(path: str | Path) -> list[tuple[str, str]]:
    """(panel title, PromQL) for every query of a Grafana dashboard, variables filled in.

    A multi-value variable with "All" becomes its allValue (".*" when unset), which is what
    Grafana sends for All; other variables become their current value. An unknown variable is
    an error: it would reach Prometheus as a literal `$name`.
    """
    dashboard = json.loads(Path(path).read_text())
    values = dict(GRAFANA_BUILTINS)
    for variable in dashboard.get("templating", {}).get("list", []):
        values[variable["name"]] = _variable_value(variable)
    queries = []
    for panel in _panels(dashboard.get("panels", [])):
        for target in panel.get("targets", []):
            if target.get("expr"):
                queries.append((panel.get("title", ""), _substitute(target["expr"], values)))
    return queries


def alert_rules(path: str | Path) -> list[tuple[str, str]]:
    """(alert name, PromQL) for every alerting rule of a Prometheus rule file."""
    document = yaml.safe_load(Path(path).read_text())
    return [
        (rule["alert"], rule["expr"].strip())
        for group in document.get("groups", [])
        for rule in group.get("rules", [])
        if "alert" in rule
    ]


def _panels(panels: list[dict]) -> Iterator[dict]:
    # Collapsed rows hold their panels inside the row; open rows are followed by them.
    for panel in panels:
        yield panel
        yield from _panels(panel.get("panels", []))


def _variable_value(variable: dict) -> str:
    if variable.get("includeAll"):
        return variable.get("allValue") or ".*"
    if variable.get("type") == "datasource":
        return variable["name"]
    current = variable.get("current", {}).get("value")
    if isinstance(current, list):
        current = "|".join(current)
    if current in (None, "", "$__all"):
        return ".*"
    return str(current)


def _substitute(expr: str, values: dict[str, str]) -> str:
    def replace(match: re.Match) -> str:
        name = next(group for group in match.groups() if group)
        if name not in values:
            raise KeyError(f"unknown dashboard variable ${name} in {expr!r}")
        return values[name]

    return _VARIABLE.sub(replace, expr)
