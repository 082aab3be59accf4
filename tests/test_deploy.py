"""The deploy files: Kubernetes manifests, image, Prometheus config and rules, Grafana dashboard.

None of this needs root or a cluster. Manifests are checked against the Kubernetes API schemas
(kubernetes-validate), rules with promtool, and every dashboard and alert query against a real
Prometheus on 127.0.0.1, both with no data and scraping a page of made-up metrics that follows
the observer's contract.
"""

from __future__ import annotations

import argparse
import ast
import copy
import http.server
import importlib.util
import json
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import jsonschema
import kubernetes_validate
import pytest
import yaml

from tests.promtools import (
    PROMETHEUS,
    PROMTOOL,
    PromQLError,
    alert_rules,
    dashboard_queries,
    start_prometheus,
)
from thread_observer import __version__
from thread_observer.arguments import parse_listen
from thread_observer.cli import build_parser
from thread_observer.targets import parse_regex_target

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
KUBERNETES = DEPLOY / "kubernetes"
PROMETHEUS_DIR = DEPLOY / "prometheus"
ALERTS = PROMETHEUS_DIR / "alerts.yml"
ALERTS_TEST = PROMETHEUS_DIR / "alerts_test.yml"
PROMETHEUS_CONFIG = PROMETHEUS_DIR / "prometheus.yml"
DASHBOARD = DEPLOY / "grafana" / "thread-observer.json"
DOCKERFILE = DEPLOY / "Dockerfile"
MIXIN = DEPLOY / "mixin"

VERSION = __version__
METRICS_PORT = 9097
VENV = "/opt/thread-observer/venv"
# What the observer's containers may add to an empty capability set, and no more.
CAPABILITIES = {"SYS_ADMIN", "SYS_PTRACE"}
# The oldest Kubernetes minor the manifests promise to fit, and the newest the validator knows.
KUBERNETES_VERSIONS = ["1.28.0", kubernetes_validate.utils.latest_version()]

# The metrics contract (prefix thread_observer_): per-target series carry `target`, self
# metrics do not.
PER_TARGET_METRICS = {
    "thread_observer_threads",
    "thread_observer_threads_created_total",
    "thread_observer_threads_exited_total",
    "thread_observer_getaddrinfo_calls_total",
    "thread_observer_getaddrinfo_failures_total",
    "thread_observer_getaddrinfo_duration_seconds_bucket",
    "thread_observer_getaddrinfo_duration_seconds_sum",
    "thread_observer_getaddrinfo_duration_seconds_count",
    "thread_observer_processes",
    "thread_observer_executor_default_max_workers",
    # The fullest executor of a pool: busy workers / max_workers.
    "thread_observer_executor_saturation_ratio",
    "thread_observer_executor_threads",
    "thread_observer_executor_busy_threads",
    "thread_observer_executor_max_workers",
    "thread_observer_executor_queued_work",
    "thread_observer_threads_created_by_site_total",
    "thread_observer_getaddrinfo_calls_by_site_total",
    "thread_observer_dns_queries_total",
    "thread_observer_resolver_calls_total",
    "thread_observer_target_info",
}
# Node mode adds these to every per-target series (--pod-labels).
POD_LABELS = ("namespace", "pod", "container")
SELF_METRICS = {
    "thread_observer_build_info",
    "thread_observer_probes_attached",
    "thread_observer_attach_errors_total",
    "thread_observer_scrape_duration_seconds",
    "thread_observer_bpf_available",
    "thread_observer_unnamed_pod_processes",
    "thread_observer_dns_unknown_socket_sends_total",
}

needs_prometheus = pytest.mark.skipif(
    PROMETHEUS is None,
    reason="Debian's prometheus binary is not on PATH (apt-get install prometheus; "
    "deploy/setup.sh installs it)",
)
KUBECTL = shutil.which("kubectl")
needs_kubectl = pytest.mark.skipif(
    KUBECTL is None,
    reason="kubectl is not on PATH (its `kubectl kustomize` renders the kustomizations offline)",
)
needs_promtool = pytest.mark.skipif(
    PROMTOOL is None,
    reason="promtool is not on PATH (it comes with Debian's prometheus package, which "
    "deploy/setup.sh installs)",
)
JSONNET = shutil.which("jsonnet")
needs_jsonnet = pytest.mark.skipif(
    JSONNET is None,
    reason="Debian's jsonnet binary is not on PATH, and the rules and dashboard are rendered "
    "from the jsonnet mixin in deploy/mixin (apt-get install jsonnet; deploy/setup.sh "
    "installs it)",
)


def load_documents(path: Path) -> list[dict]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc]


def manifest_files() -> list[Path]:
    return sorted(p for p in KUBERNETES.rglob("*.yaml") if p.name != "kustomization.yaml")


def all_documents() -> list[tuple[str, dict]]:
    return [
        (f"{path.relative_to(KUBERNETES)}:{doc['kind']}/{doc['metadata']['name']}", doc)
        for path in manifest_files()
        for doc in load_documents(path)
    ]


def workload(path: Path, kind: str) -> dict:
    (doc,) = [doc for doc in load_documents(path) if doc["kind"] == kind]
    return doc


def observer_container(pod_spec: dict) -> dict:
    (container,) = [c for c in pod_spec["containers"] if c["name"] == "thread-observer"]
    return container


def observer_arguments(container: dict) -> argparse.Namespace:
    """The container's args as the observer's own command line parses them."""
    return build_parser().parse_args(container["args"])


def target_regexes(container: dict) -> dict[str, re.Pattern]:
    targets = [parse_regex_target(t) for t in observer_arguments(container).target]
    return {target.name: target.pattern for target in targets}


WORKLOAD_FILES = {
    "sidecar": KUBERNETES / "sidecar" / "sidecar.yaml",
    "daemonset": KUBERNETES / "base" / "daemonset.yaml",
}
SIDECAR = workload(WORKLOAD_FILES["sidecar"], "Deployment")
DAEMONSET = workload(WORKLOAD_FILES["daemonset"], "DaemonSet")
WORKLOADS = {"sidecar": SIDECAR, "daemonset": DAEMONSET}
# Each kustomization and the workload it deploys.
KUSTOMIZATIONS = {"base": "daemonset", "sidecar": "sidecar"}


# Kubernetes manifests

# The Prometheus Operator's CRD is not among the Kubernetes API schemas kubernetes-validate
# ships, so a PodMonitor is checked against the part of the CRD it uses; unknown fields are
# refused, as the API server's structural schema would.
_DURATION = r"^(0|(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$"
_LABEL_SELECTOR = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "matchLabels": {"type": "object", "additionalProperties": {"type": "string"}},
        "matchExpressions": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["key", "operator"],
                "properties": {
                    "key": {"type": "string"},
                    "operator": {"enum": ["In", "NotIn", "Exists", "DoesNotExist"]},
                    "values": {"type": "array", "items": {"type": "string"}},
                },
            },
        },
    },
}
_RELABEL_CONFIG = {
    "type": "object",
    "additionalProperties": False,
    "properties": {
        "sourceLabels": {
            "type": "array",
            "items": {"type": "string", "pattern": "^[a-zA-Z_][a-zA-Z0-9_]*$"},
        },
        "separator": {"type": "string"},
        "targetLabel": {"type": "string"},
        "regex": {"type": "string"},
        "modulus": {"type": "integer"},
        "replacement": {"type": "string"},
        "action": {
            "enum": [
                "replace",
                "keep",
                "drop",
                "hashmod",
                "labelmap",
                "labeldrop",
                "labelkeep",
                "lowercase",
                "uppercase",
                "keepequal",
                "dropequal",
            ]
        },
    },
}
_METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {
        "name": {"type": "string", "pattern": "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "namespace": {"type": "string"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def operator_object_schema(kind: str, spec: dict) -> dict:
    """A monitoring.coreos.com/v1 object of this kind, unknown fields refused."""
    return {
        "type": "object",
        "additionalProperties": False,
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "monitoring.coreos.com/v1"},
            "kind": {"const": kind},
            "metadata": _METADATA,
            "spec": spec,
        },
    }


PODMONITOR_SCHEMA = operator_object_schema(
    "PodMonitor",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["selector", "podMetricsEndpoints"],
        "properties": {
            "jobLabel": {"type": "string"},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "selector": _LABEL_SELECTOR,
            "namespaceSelector": {
                "type": "object",
                "additionalProperties": False,
                "properties": {
                    "any": {"type": "boolean"},
                    "matchNames": {"type": "array", "items": {"type": "string"}},
                },
            },
            "podMetricsEndpoints": {
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "anyOf": [{"required": ["port"]}, {"required": ["portNumber"]}],
                    "properties": {
                        "port": {"type": "string"},
                        "portNumber": {"type": "integer"},
                        "path": {"type": "string", "pattern": "^/"},
                        "scheme": {"enum": ["http", "https"]},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "scrapeTimeout": {"type": "string", "pattern": _DURATION},
                        "honorLabels": {"type": "boolean"},
                        "honorTimestamps": {"type": "boolean"},
                        "relabelings": {"type": "array", "items": _RELABEL_CONFIG},
                        "metricRelabelings": {"type": "array", "items": _RELABEL_CONFIG},
                    },
                },
            },
        },
    },
)


# A PrometheusRule: the part of the operator's CRD it uses, unknown fields refused.
_RULE = {
    "type": "object",
    "additionalProperties": False,
    "required": ["expr"],
    "oneOf": [{"required": ["alert"]}, {"required": ["record"]}],
    "properties": {
        "alert": {"type": "string"},
        "record": {"type": "string"},
        "expr": {"type": "string", "minLength": 1},
        "for": {"type": "string", "pattern": _DURATION},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}
PROMETHEUSRULE_SCHEMA = operator_object_schema(
    "PrometheusRule",
    {
        "type": "object",
        "additionalProperties": False,
        "required": ["groups"],
        "properties": {
            "groups": {
                "type": "array",
                "items": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["name", "rules"],
                    "properties": {
                        "name": {"type": "string"},
                        "interval": {"type": "string", "pattern": _DURATION},
                        "rules": {"type": "array", "items": _RULE},
                    },
                },
            },
        },
    },
)
OPERATOR_SCHEMAS = {"PodMonitor": PODMONITOR_SCHEMA, "PrometheusRule": PROMETHEUSRULE_SCHEMA}


def validate(document: dict, version: str) -> None:
    """Against the Kubernetes API's schema, or the operator's CRD for its kinds."""
    if document["kind"] in OPERATOR_SCHEMAS:
        jsonschema.validate(document, OPERATOR_SCHEMAS[document["kind"]])
    else:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize(
    "name,document",
    all_documents(),
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_manifest_fits_the_kubernetes_api(name, document, version):
    validate(document, version)


def test_strict_validation_refuses_a_misspelt_field():
    broken = copy.deepcopy(SIDECAR)
    observer = observer_container(broken["spec"]["template"]["spec"])
    observer["securityContext"]["capabilites"] = observer["securityContext"].pop("capabilities")
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def kustomize(directory: str) -> list[dict]:
    """`kubectl kustomize` of deploy/kubernetes/DIRECTORY: what `kubectl apply -k` sends."""
    result = subprocess.run(
        [KUBECTL, "kustomize", str(KUBERNETES / directory)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return [doc for doc in yaml.safe_load_all(result.stdout) if doc]


@needs_kubectl
@pytest.mark.parametrize("directory", KUSTOMIZATIONS)
def test_kustomization_renders_valid_objects_with_the_image_it_sets(directory):
    documents = kustomize(directory)
    for document in documents:
        validate(document, KUBERNETES_VERSIONS[-1])
    kustomization = yaml.safe_load((KUBERNETES / directory / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    assert image["name"] == "thread-observer" and image["newTag"] == VERSION
    # Every manifest file of the directory is applied.
    rendered = {(d["kind"], d["metadata"]["name"]) for d in documents}
    listed = {
        (d["kind"], d["metadata"]["name"])
        for _, d in all_documents()
        if _.startswith(f"{directory}/")
    }
    assert listed <= rendered
    (work,) = [d for d in documents if d["kind"] in ("DaemonSet", "Deployment")]
    observer = observer_container(work["spec"]["template"]["spec"])
    assert observer["image"] == f"{image['newName']}:{VERSION}"
    namespaced = [d for d in documents if d["kind"] not in ("Namespace", "PriorityClass")]
    assert {d["metadata"]["namespace"] for d in namespaced} == {kustomization["namespace"]}
    # Prometheus may list the pods its PodMonitor selects there.
    (binding,) = [d for d in documents if d["kind"] == "RoleBinding"]
    (role,) = [d for d in documents if d["kind"] == "Role"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    (rule,) = [r for r in role["rules"] if "pods" in r["resources"]]
    assert {"list", "watch"} <= set(rule["verbs"])


@pytest.mark.parametrize("directory,workload_name", KUSTOMIZATIONS.items())
def test_each_podmonitor_selects_its_workload(directory, workload_name):
    (monitor,) = load_documents(KUBERNETES / directory / "podmonitor.yaml")
    jsonschema.validate(monitor, PODMONITOR_SCHEMA)
    # No namespaceSelector: the PodMonitor reads its own namespace, which rbac.yaml opens.
    assert "namespaceSelector" not in monitor["spec"]
    work = WORKLOADS[workload_name]
    wanted = monitor["spec"]["selector"]["matchLabels"]
    labels = work["spec"]["template"]["metadata"]["labels"]
    assert wanted.items() <= labels.items()
    ports = observer_container(work["spec"]["template"]["spec"])["ports"]
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    assert endpoint["port"] in {p["name"] for p in ports}
    relabelled = {r.get("targetLabel"): r.get("replacement") for r in endpoint["relabelings"]}
    assert relabelled["job"] == "thread-observer"
    # Node mode exports the watched pod's namespace, pod and container: they must win over
    # the observer's own pod's. A sidecar exports none and needs no honouring.
    pod_labels = observer_arguments(observer_container(work["spec"]["template"]["spec"])).pod_labels
    assert endpoint.get("honorLabels", False) is pod_labels


def test_podmonitor_schema_refuses_a_misspelt_field():
    (monitor,) = [doc for _, doc in all_documents() if doc["kind"] == "PodMonitor"][:1]
    broken = copy.deepcopy(monitor)
    broken["spec"]["podMetricsEndpoints"][0]["intreval"] = "15s"
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(broken, PODMONITOR_SCHEMA)


@needs_jsonnet
def test_generated_objects_are_up_to_date():
    result = subprocess.run(
        [sys.executable, str(DEPLOY / "render.py"), "--check"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_rule_holds_the_rule_file_and_the_configmap_the_dashboard():
    (rule,) = load_documents(KUBERNETES / "base" / "prometheusrule.yaml")
    assert rule["spec"]["groups"] == yaml.safe_load(ALERTS.read_text())["groups"]
    (config_map,) = load_documents(KUBERNETES / "base" / "grafana-dashboard.yaml")
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert json.loads(config_map["data"][DASHBOARD.name]) == dashboard()


@needs_jsonnet
def test_render_adapts_the_job_selector_and_runbook_links(tmp_path):
    rules_file, object_file = tmp_path / "alerts.yml", tmp_path / "rule.yaml"
    result = subprocess.run(
        [
            sys.executable,
            str(DEPLOY / "render.py"),
            "--job-selector",
            'job=~"a|b"',
            "--runbook-url-base",
            "https://runbooks.example/",
            "--rules-out",
            str(rules_file),
            "--prometheus-rule-out",
            str(object_file),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    for name, expr in alert_rules(rules_file):
        assert 'job="thread-observer"' not in expr and 'job=~"a|b"' in expr, name
    (rule,) = load_documents(object_file)
    assert rule["spec"]["groups"] == yaml.safe_load(rules_file.read_text())["groups"]
    links = [r["annotations"]["runbook_url"] for g in rule["spec"]["groups"] for r in g["rules"]]
    names = [r["alert"] for g in rule["spec"]["groups"] for r in g["rules"]]
    assert links == [f"https://runbooks.example/docs/runbook.md#{n.lower()}" for n in names]


# The monitoring mixin (deploy/mixin): the rules and the dashboard are rendered from it.


def jsonnet(code: str, cwd: Path = ROOT) -> object:
    """code evaluated by Debian's jsonnet with the mixin on the library path, as a jsonnet
    project that vendors it would import it."""
    result = subprocess.run(
        [JSONNET, "--jpath", str(MIXIN), "--exec", code],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def mixin_with(config: str) -> str:
    """The mixin with config merged into its _config, as docs/runbook.md shows it."""
    return f"((import 'mixin.libsonnet') + {{ _config+:: {config} }})"


@pytest.fixture(scope="module")
def render():
    """deploy/render.py as a module."""
    spec = importlib.util.spec_from_file_location("render", DEPLOY / "render.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def rendered(render) -> dict[Path, str]:
    return render.outputs()


@needs_jsonnet
@pytest.mark.parametrize(
    "path",
    [
        ALERTS,
        DASHBOARD,
        KUBERNETES / "base" / "prometheusrule.yaml",
        KUBERNETES / "base" / "grafana-dashboard.yaml",
    ],
    ids=lambda path: path.name,
)
def test_committed_file_is_what_the_mixin_renders(rendered, path):
    assert path in rendered
    assert path.read_text(encoding="utf-8") == rendered[path], (
        f"{path.relative_to(ROOT)} is not what deploy/mixin renders: run deploy/render.py"
    )


@needs_jsonnet
def test_render_makes_exactly_the_committed_files(rendered):
    assert set(rendered) == {
        ALERTS,
        DASHBOARD,
        KUBERNETES / "base" / "prometheusrule.yaml",
        KUBERNETES / "base" / "grafana-dashboard.yaml",
    }


@needs_jsonnet
def test_mixin_alone_evaluates_to_the_committed_rules_and_dashboard():
    """What a jsonnet project importing the mixin gets, without render.py's layout: the same
    rules and the same dashboard as the committed files."""
    mixin = jsonnet(
        "local m = import 'mixin.libsonnet';"
        " { alerts: m.prometheusAlerts, dashboards: m.grafanaDashboards }"
    )
    assert mixin["alerts"] == yaml.safe_load(ALERTS.read_text())
    assert mixin["dashboards"] == {DASHBOARD.name: dashboard()}
    # Hidden fields (each rule's comment::, the description lines) stay out of the rules.
    for group in mixin["alerts"]["groups"]:
        for rule in group["rules"]:
            assert "comment" not in rule, rule["alert"]
            assert "descriptionLines" not in rule["annotations"], rule["alert"]


@needs_jsonnet
def test_alerts_yml_keeps_each_rules_comment_and_the_conventions():
    text = ALERTS.read_text()
    assert text.startswith("# Alert rules for thread-observer")
    assert "deploy/mixin/" in text.split("groups:")[0]
    assert "# Conventions (those of the monitoring mixins):" in text
    comments = jsonnet(
        "[r.comment for g in (import 'mixin.libsonnet').prometheusAlerts.groups for r in g.rules]"
    )
    assert len(comments) == len(rule_documents())
    for comment in comments:
        assert comment.strip(), "every rule says why it is as it is"
        quoted = "".join(f"        # {line}".rstrip() + "\n" for line in comment.splitlines())
        assert quoted in text


@needs_jsonnet
@needs_promtool
def test_mixin_config_changes_every_selector_and_runbook_link(render, tmp_path):
    """Another job selector and runbook base set in _config, as docs/runbook.md shows it: every
    selector of every rule and every runbook_url change, nothing else does, and promtool takes
    the rules as the mixin gives them and as render.py writes them."""
    selector, base = 'job=~"thread-observer|node-agents"', "https://runbooks.example/ops/"
    project = tmp_path / "monitoring.jsonnet"
    project.write_text(
        mixin_with(f"{{ jobSelector: {json.dumps(selector)}, runbookURLBase: '{base}' }}")
        + ".prometheusAlerts\n"
    )
    adapted = jsonnet(f"import '{project}'")
    rules_file, rendered_file = tmp_path / "alerts.yml", tmp_path / "rendered.yml"
    rules_file.write_text(yaml.safe_dump(adapted))
    rendered_file.write_text(
        render.rules(render.evaluate({"jobSelector": selector, "runbookURLBase": base}))
    )
    assert yaml.safe_load(rendered_file.read_text()) == adapted
    for path in (rules_file, rendered_file):
        result = promtool("check", "rules", str(path))
        assert result.returncode == 0, result.stdout + result.stderr
    committed = yaml.safe_load(ALERTS.read_text())
    assert [g["name"] for g in adapted["groups"]] == [g["name"] for g in committed["groups"]]
    for group, original in zip(adapted["groups"], committed["groups"], strict=True):
        for rule, before in zip(group["rules"], original["rules"], strict=True):
            name, expr = rule["alert"], rule["expr"]
            for metric, matchers in re.findall(r"\b(thread_observer_\w+|up)(\{[^}]*\})?", expr):
                assert selector in matchers and 'job="thread-observer"' not in matchers, (
                    name,
                    metric,
                )
            link = rule["annotations"]["runbook_url"]
            assert link == f"{base}docs/runbook.md#{name.lower()}", name
            # Put back, the rule is the committed one.
            rule["expr"] = expr.replace(selector, 'job="thread-observer"')
            rule["annotations"]["runbook_url"] = before["annotations"]["runbook_url"]
            assert rule == before, name


@needs_jsonnet
@needs_promtool
def test_mixin_thresholds_change_exprs_and_summaries(tmp_path):
    adapted = jsonnet(
        mixin_with(
            "{ executorSaturationThreshold: 0.8, eventLoopLookupsPerMinute: 6,"
            " getaddrinfoFailingPercent: 10, getaddrinfoSlowSeconds: 1.5 }"
        )
        + ".prometheusAlerts"
    )
    rules = {r["alert"]: r for g in adapted["groups"] for r in g["rules"]}
    assert ") >= 0.8\nand\n" in rules["PythonThreadsNearExecutorCap"]["expr"]
    assert rules["GetaddrinfoOnEventLoop"]["expr"].endswith(") * 60 > 6\n")
    assert rules["GetaddrinfoFailing"]["expr"].endswith("\n> 0.1\n")
    assert rules["GetaddrinfoFailing"]["annotations"]["summary"] == (
        "More than 10% of getaddrinfo calls fail."
    )
    assert rules["GetaddrinfoSlow"]["expr"].endswith(") > 1.5\n")
    assert rules["GetaddrinfoSlow"]["annotations"]["summary"] == (
        "getaddrinfo p99 latency is above 1.5 s."
    )
    rules_file = tmp_path / "alerts.yml"
    rules_file.write_text(yaml.safe_dump(adapted))
    result = promtool("check", "rules", str(rules_file))
    assert result.returncode == 0, result.stdout + result.stderr


@needs_jsonnet
def test_mixin_dashboard_selector_narrows_every_query():
    selector = 'job=~"thread-observer|node-agents"'
    board = jsonnet(
        mixin_with(f"{{ dashboardSelector: {json.dumps(selector)}, dashboardRefresh: '1m' }}")
        + ".grafanaDashboards['thread-observer.json']"
    )
    queries = [t["expr"] for p in query_panels(board) for t in p["targets"]]
    queries += [v["query"] for v in board["templating"]["list"] if v["type"] == "query"]
    selectors = [s for q in queries for s in re.findall(r"\bthread_observer_\w+(\{[^}]*\})", q)]
    assert len(selectors) > len(queries)
    for matchers in selectors:
        assert matchers == f"{{{selector}}}" or matchers.startswith(f"{{{selector}, "), matchers
    assert board["refresh"] == "1m"
    # Put back, it is the committed dashboard.
    quoted = json.dumps(selector)[1:-1]
    text = json.dumps(board).replace("{" + quoted + "}", "").replace(quoted + ", ", "")
    assert json.loads(text) | {"refresh": "30s"} == dashboard()


@needs_jsonnet
def test_mixin_is_formatted_as_jsonnetfmt_formats_it():
    sources = sorted(MIXIN.glob("*.libsonnet"))
    assert {p.name for p in sources} >= {
        "mixin.libsonnet",
        "config.libsonnet",
        "alerts.libsonnet",
        "dashboards.libsonnet",
    }
    jsonnetfmt = shutil.which("jsonnetfmt")  # Debian's jsonnet package has both
    result = subprocess.run(
        [jsonnetfmt, "--test", *map(str, sources)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, f"run jsonnetfmt -i deploy/mixin/*.libsonnet\n{result.stderr}"


@needs_jsonnet
def test_render_check_says_which_file_is_stale(render, tmp_path, monkeypatch, capsys):
    deploy = tmp_path / "deploy"
    copies = {}
    for name in ("ALERTS", "DASHBOARD", "PROMETHEUS_RULE", "DASHBOARD_CONFIG_MAP"):
        path = getattr(render, name)
        copy_path = deploy / path.relative_to(DEPLOY)
        copy_path.parent.mkdir(parents=True, exist_ok=True)
        copy_path.write_text(path.read_text(encoding="utf-8"), encoding="utf-8")
        copies[name] = copy_path
        monkeypatch.setattr(render, name, copy_path)
    monkeypatch.setattr(render, "DASHBOARDS", copies["DASHBOARD"].parent)
    monkeypatch.setattr(render, "DEPLOY", deploy)
    assert render.main(["--check"]) == 0
    stale = copies["ALERTS"]
    stale.write_text(stale.read_text().replace(">= 0.9", ">= 0.8"))
    assert render.main(["--check"]) == 1
    assert capsys.readouterr().err == (
        "render: deploy/prometheus/alerts.yml is out of date: run deploy/render.py\n"
    )
    assert render.main([]) == 0
    assert render.main(["--check"]) == 0
    assert stale.read_text() == ALERTS.read_text()


@pytest.mark.parametrize("name", WORKLOADS)
def test_observer_runs_with_two_capabilities_each_explained(name):
    path = WORKLOAD_FILES[name]
    observer = observer_container(WORKLOADS[name]["spec"]["template"]["spec"])
    context = observer["securityContext"]
    assert context["capabilities"]["drop"] == ["ALL"]
    assert set(context["capabilities"]["add"]) == CAPABILITIES
    assert context["privileged"] is False
    # false would promise a bound that SYS_ADMIN does not keep (and the API server refuses it
    # next to CAP_SYS_ADMIN): the manifest says true, with the reason above it.
    assert context["allowPrivilegeEscalation"] is True
    assert "no_new_privs" in path.read_text()
    assert context["readOnlyRootFilesystem"] is True
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    # Each added capability sits right under a comment that starts with its name.
    lines = path.read_text().splitlines()
    for capability in context["capabilities"]["add"]:
        (index,) = [i for i, line in enumerate(lines) if line.strip() == f"- {capability}"]
        comment = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            comment.insert(0, line.strip())
        assert comment and comment[0].startswith(f"# {capability}:"), (name, capability)


@pytest.mark.parametrize("name", WORKLOADS)
def test_observer_container_has_mounts_probes_resources_and_scrape_wiring(name):
    template = WORKLOADS[name]["spec"]["template"]
    spec = template["spec"]
    observer = observer_container(spec)
    assert observer["image"] == f"thread-observer:{VERSION}"
    arguments = observer_arguments(observer)
    assert arguments.command == "run"
    assert parse_listen(arguments.listen) == ("0.0.0.0", METRICS_PORT)
    assert arguments.target and not arguments.label_pid
    assert {"name": "metrics", "containerPort": METRICS_PORT} in observer["ports"]

    # Liveness: the poll loop runs. Readiness: the probes are attached and eBPF works, which
    # a sidecar must not make its service's readiness wait on.
    for probe in ("startupProbe", "livenessProbe"):
        assert observer[probe]["httpGet"] == {"path": "/healthz", "port": "metrics"}, probe
    if name == "sidecar":
        assert "readinessProbe" not in observer
    else:
        assert observer["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "metrics"}

    for container in spec["containers"]:
        for bound in ("requests", "limits"):
            assert set(container["resources"][bound]) == {"cpu", "memory"}, container["name"]

    volumes = {v["name"]: v for v in spec["volumes"]}
    host_paths = {}
    for mount in observer["volumeMounts"]:
        volume = volumes[mount["name"]]
        if "hostPath" in volume:
            assert mount.get("readOnly") is True, mount
            assert volume["hostPath"]["path"] == mount["mountPath"], mount
            host_paths[mount["mountPath"]] = volume["hostPath"]["type"]
    kernel = {
        "/sys/kernel/tracing": "Directory",
        "/lib/modules": "Directory",
        # A node without a headers package has no /usr/src: the pod must start all the same
        # (the observer then unpacks the kernel's kheaders).
        "/usr/src": "DirectoryOrCreate",
    }
    # Node mode names pods from the kubelet's log directories.
    kubelet = {"/var/log/pods": "DirectoryOrCreate", "/var/log/containers": "DirectoryOrCreate"}
    assert host_paths == (kernel | kubelet if arguments.pod_labels else kernel)
    assert arguments.pod_labels == (name == "daemonset")
    if arguments.pod_labels:
        assert {f"{arguments.kubelet_log_dir}/{d}" for d in ("pods", "containers")} == set(kubelet)
    assert "/tmp" in {m["mountPath"] for m in observer["volumeMounts"]}

    annotations = template["metadata"]["annotations"]
    assert annotations == {
        "prometheus.io/scrape": "true",
        "prometheus.io/port": str(METRICS_PORT),
        "prometheus.io/path": "/metrics",
    }
    assert spec["automountServiceAccountToken"] is False


def test_sidecar_shares_the_process_namespace_and_targets_only_the_service():
    spec = SIDECAR["spec"]["template"]["spec"]
    assert spec["shareProcessNamespace"] is True
    assert not spec.get("hostPID")
    app = next(c for c in spec["containers"] if c["name"] != "thread-observer")
    observer = observer_container(spec)
    (regex,) = target_regexes(observer).values()
    assert regex.search(" ".join(app["command"]))
    own_command = [f"{VENV}/bin/python3", f"{VENV}/bin/thread-observer", *observer["args"]]
    assert not regex.search(" ".join(own_command))


def test_sidecar_service_script_is_valid_python():
    config_map = workload(WORKLOAD_FILES["sidecar"], "ConfigMap")
    app = next(c for c in SIDECAR["spec"]["template"]["spec"]["containers"] if c["name"] == "app")
    script = Path(app["command"][-1])
    volume = next(m for m in app["volumeMounts"] if script.is_relative_to(m["mountPath"]))
    ast.parse(config_map["data"][script.name], filename=str(script))
    assert volume["readOnly"] is True


def test_daemonset_sees_the_node_and_targets_python_processes():
    spec = DAEMONSET["spec"]["template"]["spec"]
    assert spec["hostPID"] is True
    assert {"operator": "Exists"} in spec["tolerations"]
    observer = observer_container(spec)
    (regex,) = target_regexes(observer).values()
    for command in [
        "python3 app.py",
        "python -m uvicorn main:app",
        "/usr/local/bin/python3.11 /usr/local/bin/gunicorn -k uvicorn.workers.UvicornWorker",
        "/usr/bin/python3",
    ]:
        assert regex.search(command), command
    for command in [
        "/usr/sbin/nginx -g daemon off;",
        "/bin/sh -c python3 app.py",
        "/usr/bin/python3-config --cflags",
    ]:
        assert not regex.search(command), command


def test_observer_namespaces_allow_privileged_pods():
    namespaces = {
        doc["metadata"]["name"]: doc for _, doc in all_documents() if doc["kind"] == "Namespace"
    }
    for name, work in WORKLOADS.items():
        labels = namespaces[work["metadata"]["namespace"]]["metadata"]["labels"]
        assert labels["pod-security.kubernetes.io/enforce"] == "privileged", name


# Image


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            instructions.append((keyword.upper(), rest.strip()))
    return instructions


def stages() -> list[list[tuple[str, str]]]:
    """The Dockerfile's instructions, one list per FROM."""
    found: list[list[tuple[str, str]]] = []
    for keyword, rest in dockerfile_instructions():
        if keyword == "FROM":
            found.append([])
        found[-1].append((keyword, rest))
    return found


def test_image_runs_from_a_final_stage_made_by_setup_sh_runtime():
    build, final = stages()
    for stage in (build, final):
        assert re.fullmatch(r"debian:(12|bookworm)(-slim)?( AS \w+)?", stage[0][1])
    runs = [rest for keyword, rest in final if keyword == "RUN"]
    (install,) = [run for run in runs if "setup.sh" in run]
    assert f"--runtime --venv {VENV}" in install and "--install" in install
    # The final stage gets the wheel from the build stage, and no source tree.
    copies = [rest.split()[:-1] for keyword, rest in final if keyword == "COPY"]
    assert ["--from=build", "/wheels/"] in copies
    assert ["deploy/setup.sh"] in copies and len(copies) == 2
    (entrypoint,) = [json.loads(rest) for keyword, rest in final if keyword == "ENTRYPOINT"]
    assert entrypoint == [f"{VENV}/bin/thread-observer"]
    (command,) = [json.loads(rest) for keyword, rest in final if keyword == "CMD"]
    assert command[0] == "run"
    assert ("EXPOSE", str(METRICS_PORT)) in final


def test_build_stage_copies_everything_the_package_build_reads():
    build, _ = stages()
    copied = []
    for keyword, rest in build:
        if keyword == "COPY":
            *sources, _ = rest.split()
            copied += [s.rstrip("/") for s in sources]
    for source in copied:
        assert (ROOT / source).exists(), source
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {project["project"]["readme"], "pyproject.toml"}
    needed |= set(project["project"]["license-files"])
    needed |= set(project["tool"]["setuptools"]["package-dir"].values())
    assert needed <= set(copied)


def setup_packages(*args: str) -> set[str]:
    """The Debian packages deploy/setup.sh would install with these options, on amd64."""
    script = (DEPLOY / "setup.sh").read_text()
    packages = script[: script.index("install_packages() {")]
    options = " ".join(args)
    result = subprocess.run(
        [
            "bash",
            "-c",
            f"dpkg() {{ echo amd64; }}; set -- {options}; "
            f'RUNTIME=0; [ "${{1:-}}" = --runtime ] && RUNTIME=1\n'
            + packages[packages.index("ARCH=$(dpkg") :]
            + '\necho "$PACKAGES"',
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    return set(result.stdout.split())


def test_runtime_packages_are_bcc_and_python_only():
    development = setup_packages()
    assert {"linux-headers-amd64", "prometheus", "redis-server", "musl-tools"} <= development
    assert setup_packages("--runtime") == {"python3-bpfcc", "python3-venv"}


def test_run_imports_none_of_the_extras():
    """`run` and `check` work with the package's own dependencies: the extras (timeline,
    workloads, top's rich) and the test tools are refused on import here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {re.split(r"[<>=\[]", d)[0] for d in project["dependencies"]}
    assert names == {"aiohttp", "prometheus-client", "psutil", "pyelftools"}
    extras = project["optional-dependencies"]
    assert "thread-observer[timeline,workloads,top]" in extras["test"]
    code = """
import sys
REFUSED = {"matplotlib", "uvloop", "redis", "yaml", "pytest", "kubernetes_validate", "rich"}
class Refuse:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in REFUSED:
            raise ImportError("extra imported by run: " + name)
sys.meta_path.insert(0, Refuse())
import thread_observer.server, thread_observer.check, thread_observer.observers
from thread_observer.cli import build_parser
build_parser().parse_args(["run", "--target", "a=b", "--pod-labels"])
# top and demo say what to install instead of a traceback.
from thread_observer.errors import UsageError
from thread_observer.top import run as top
try:
    top(build_parser().parse_args(["top", "--url", "http://127.0.0.1:1/metrics"]))
except UsageError as err:
    assert "pip install 'thread-observer[top]'" in str(err), err
else:
    raise AssertionError("top ran without rich")
"""
    result = subprocess.run(
        [sys.executable, "-c", code],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


# Prometheus: config and rules


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


@needs_promtool
def test_promtool_check_rules():
    result = promtool("check", "rules", ALERTS.name)
    assert result.returncode == 0, result.stdout + result.stderr


@needs_promtool
def test_promtool_rule_unit_tests():
    result = promtool("test", "rules", ALERTS_TEST.name)
    assert result.returncode == 0, result.stdout + result.stderr


def without_kubernetes_discovery(config: dict, pods_file: Path) -> dict:
    """The config with each kubernetes_sd_configs swapped for file_sd_configs reading pods_file.

    Debian builds Prometheus 2.42 without Kubernetes service discovery (its Go dependencies are
    not packaged), so its promtool refuses the key and its prometheus cannot run that job. The
    swap keeps the relabelling, which is what the job is about, checkable here.
    """
    config = copy.deepcopy(config)
    for job in config["scrape_configs"]:
        if job.pop("kubernetes_sd_configs", None) is not None:
            job["file_sd_configs"] = [{"files": [str(pods_file)]}]
    config["rule_files"] = [str(PROMETHEUS_DIR / f) for f in config.get("rule_files", [])]
    return config


@needs_promtool
def test_promtool_check_config(tmp_path):
    result = promtool("check", "config", PROMETHEUS_CONFIG.name)
    if "field kubernetes_sd_configs not found" in result.stdout + result.stderr:
        config = yaml.safe_load(PROMETHEUS_CONFIG.read_text())
        pods_file = tmp_path / "pods.json"
        pods_file.write_text("[]")
        derived = tmp_path / "prometheus.yml"
        derived.write_text(yaml.safe_dump(without_kubernetes_discovery(config, pods_file)))
        result = promtool("check", "config", str(derived))
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_has_tests_that_fire_it_and_tests_that_must_not():
    tests = yaml.safe_load(ALERTS_TEST.read_text())
    assert tests["rule_files"] == [ALERTS.name]
    fired, quiet = set(), set()
    for group in tests["tests"]:
        for case in group["alert_rule_test"]:
            (fired if case.get("exp_alerts") else quiet).add(case["alertname"])
    names = {name for name, _ in alert_rules(ALERTS)}
    assert len(names) == len(alert_rules(ALERTS)), "duplicate alert names"
    assert names - fired == set(), "alerts no test fires"
    assert names - quiet == set(), "alerts no test keeps quiet"
    assert (fired | quiet) <= names, "tests of alerts that do not exist"


def rule_documents() -> list[dict]:
    return [
        rule for group in yaml.safe_load(ALERTS.read_text())["groups"] for rule in group["rules"]
    ]


def runbook_links_base() -> str:
    """The one base every runbook link of alerts.yml starts with."""
    bases = {
        rule["annotations"]["runbook_url"].partition("docs/runbook.md#")[0]
        for rule in rule_documents()
    }
    (base,) = bases
    return base


def test_runbook_links_are_absolute_with_one_base():
    base = runbook_links_base()
    # Alertmanager and Grafana resolve a relative link against their own address.
    assert re.fullmatch(r"https://[^/\s]+/\S*/", base), base
    # The base is said once per link in the rule file, nowhere else there.
    assert ALERTS.read_text().count(base) == len(rule_documents())


def test_only_the_alert_that_no_observer_is_left_pages():
    critical = {
        rule["alert"]: rule["expr"].strip()
        for rule in rule_documents()
        if rule["labels"]["severity"] == "critical"
    }
    # Every observer down or none discovered: the other rules have no series to fire on.
    assert critical == {"ThreadObserverGone": 'absent(up{job="thread-observer"} == 1)'}


def test_rules_follow_the_mixin_conventions():
    runbook = (ROOT / "docs" / "runbook.md").read_text()
    anchors = {
        line[3:].strip().lower().replace(" ", "-")
        for line in runbook.splitlines()
        if line.startswith("## ")
    }
    base = runbook_links_base()
    for rule in rule_documents():
        name, expr = rule["alert"], rule["expr"]
        # Every selector of every metric names the job, so that render.py can change it.
        for metric, selector in re.findall(r"\b(thread_observer_\w+|up)(\{[^}]*\})?", expr):
            assert 'job="thread-observer"' in selector, (name, metric)
        # Aggregations keep cluster, namespace, pod, instance...: only `without`, or `by`
        # lists that keep cluster, job and instance.
        for clause in re.findall(r"\bby\s*\(([^)]*)\)", expr):
            kept = set(re.split(r"\s*,\s*", clause.strip()))
            assert {"cluster", "job", "instance"} <= kept, (name, clause)
        annotations = rule["annotations"]
        assert "{{" not in annotations["summary"], name
        assert annotations["runbook_url"] == f"{base}docs/runbook.md#{name.lower()}", name
        assert name.lower() in anchors, name
        assert rule["labels"]["severity"] in {"info", "warning", "critical"}, name


def test_detached_rule_covers_every_probe():
    from thread_observer.bpf_backend import PROBE_NAMES

    (rule,) = [r for r in rule_documents() if r["alert"] == "ThreadObserverProbeDetached"]
    # Every probe the observer exports, but for the one older kernels lack, is judged.
    excluded = set(re.findall(r'probe!="(\w+)"', rule["expr"]))
    assert excluded == {"epoll_pwait2"}
    assert {"getaddrinfo", "getaddrinfo_return", "pthread_create"} <= set(PROBE_NAMES)


def metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\bthread_observer_\w+", expr))


def test_rules_use_contract_metrics_and_never_group_by_pid():
    contract = PER_TARGET_METRICS | SELF_METRICS
    for name, expr in alert_rules(ALERTS):
        assert metric_names(expr) <= contract, (name, metric_names(expr) - contract)
        assert not re.search(r"\b(by|on)\s*\([^)]*\bpid\b", expr), name
        assert not re.search(r"\bpid\s*=", expr), name


# Grafana dashboard


def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def query_panels(board: dict) -> list[dict]:
    panels = []
    for panel in board["panels"]:
        panels += [panel, *panel.get("panels", [])]
    return [p for p in panels if p["type"] != "row"]


# Variables narrowing everything, in this order; each query is narrowed by those before it.
DASHBOARD_VARIABLES = ["datasource", "cluster", "job", "instance", "namespace", "pod", "target"]
# What per-target and self metrics are selected by.
TARGET_SELECTOR = (
    'cluster=~"$cluster", job=~"$job", instance=~"$instance", '
    'namespace=~"$namespace", pod=~"$pod", target=~"$target"'
)
SELF_SELECTOR = 'cluster=~"$cluster", job=~"$job", instance=~"$instance"'
LABEL_VALUES = re.compile(r"^label_values\((\w+)(\{[^}]*\})?, (\w+)\)$")


def variable_queries() -> list[tuple[str, str]]:
    """(variable, PromQL) for each query variable: label_values(M{S}, L) is the values of L
    in group by (L) (M{S}), with the variables before it at "All"."""
    board = dashboard()
    values = {v["name"]: v.get("allValue", ".*") for v in board["templating"]["list"]}
    queries = []
    for variable in board["templating"]["list"]:
        if variable["type"] != "query":
            continue
        metric, selector, label = LABEL_VALUES.match(variable["query"]).groups()
        expr = f"group by ({label}) ({metric}{selector or ''})"
        for name, value in values.items():
            expr = expr.replace(f"${name}", value)
        queries.append((variable["name"], expr))
    return queries


def test_dashboard_variables():
    variables = {v["name"]: v for v in dashboard()["templating"]["list"]}
    assert list(variables) == DASHBOARD_VARIABLES
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for name in DASHBOARD_VARIABLES[1:]:
        variable = variables[name]
        assert variable["type"] == "query", name
        assert variable["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, name
        assert variable["multi"] is True, name
        assert variable["includeAll"] is True, name
        assert variable["allValue"] == ".*", name
        earlier = DASHBOARD_VARIABLES[1 : DASHBOARD_VARIABLES.index(name)]
        assert all(f'{e}=~"${e}"' in variable["query"] for e in earlier), name
    assert variables["target"]["query"].endswith(", target)")


def test_every_panel_queries_the_chosen_datasource():
    board = dashboard()
    panels = query_panels(board)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in panels:
        title = panel["title"]
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, title
        exprs = [t.get("expr") for t in panel["targets"]]
        assert exprs and all(exprs), title
        for target in panel["targets"]:
            assert target["datasource"] == panel["datasource"], title
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), title


def test_dashboard_panels_do_not_overlap():
    taken = {}
    for panel in dashboard()["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        for x in range(grid["x"], grid["x"] + grid["w"]):
            for y in range(grid["y"], grid["y"] + grid["h"]):
                assert (x, y) not in taken, (panel["title"], taken.get((x, y)))
                taken[(x, y)] = panel["title"]


def test_dashboard_queries_filter_by_target_and_use_the_rate_interval():
    for panel in query_panels(dashboard()):
        for target in panel["targets"]:
            expr = target["expr"]
            assert metric_names(expr) <= PER_TARGET_METRICS | SELF_METRICS, expr
            for name, selector in re.findall(r"\b(thread_observer_\w+)(\{[^}]*\})?", expr):
                wanted = TARGET_SELECTOR if name in PER_TARGET_METRICS else SELF_SELECTOR
                assert selector == "{" + wanted + "}", (panel["title"], name)
            # Self metrics have no target: they must still be narrowed to the observers
            # that watch a selected target.
            if metric_names(expr) & SELF_METRICS:
                assert f"thread_observer_processes{{{TARGET_SELECTOR}}}" in expr, panel["title"]
            for window in re.findall(r"\[([^\]]*)\]", expr):
                assert window == "$__rate_interval", (panel["title"], window)
            # pid is part of what target_info identifies; elsewhere it exists only with
            # --label-pid, so grouping by it would split or lose series.
            if "thread_observer_target_info" not in expr:
                for clause in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
                    assert "pid" not in re.split(r"\s*,\s*", clause.strip()), expr


def test_dashboard_covers_the_contract():
    queries = [expr for _, expr in dashboard_queries(DASHBOARD)]
    used = set().union(*(metric_names(e) for e in queries))
    assert used >= (PER_TARGET_METRICS | SELF_METRICS) - {
        "thread_observer_getaddrinfo_duration_seconds_sum",
        "thread_observer_getaddrinfo_duration_seconds_count",
        # Node mode only; its alert says when pods go unnamed.
        "thread_observer_unnamed_pod_processes",
    }
    assert any("histogram_quantile(0.5," in e for e in queries)
    assert any("histogram_quantile(0.99," in e for e in queries)
    # The observer's own cost, from client_python's process metrics.
    assert any("process_cpu_seconds_total" in e for e in queries)
    assert any("process_resident_memory_bytes" in e for e in queries)
    heatmaps = [p for p in query_panels(dashboard()) if p["type"] == "heatmap"]
    assert [t["format"] for p in heatmaps for t in p["targets"]] == ["heatmap"]


def test_dashboard_queries_have_every_variable_filled_in():
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) >= 10
    for title, expr in queries:
        assert "$" not in expr, (title, expr)
        assert 'target=~".*"' in expr, (title, expr)


# Against a real Prometheus


@needs_prometheus
def test_dashboard_and_alert_queries_are_valid_promql():
    with start_prometheus([], rule_files=[ALERTS]) as prom:
        # query() raises PromQLError for anything Prometheus refuses; no data is needed.
        for _, expr in dashboard_queries(DASHBOARD) + alert_rules(ALERTS) + variable_queries():
            prom.query(expr)
        loaded = {r["name"] for g in prom.rule_groups() for r in g["rules"]}
        assert loaded == {name for name, _ in alert_rules(ALERTS)}
        with pytest.raises(PromQLError, match="parse error"):
            prom.query("sum by (target) (thread_observer_threads")


@needs_prometheus
def test_prometheus_leaves_no_process_or_files_behind(tmp_path):
    with start_prometheus([]) as prom:
        assert prom.url.startswith("http://127.0.0.1:")
        assert prom.process.poll() is None
    assert prom.process.poll() is not None
    assert not prom.workdir.exists()

    broken = tmp_path / "broken.yml"
    broken.write_text("groups:\n  - name: x\n    rules:\n      - alert: A\n        expr: sum(\n")
    with pytest.raises(RuntimeError, match="did not start"):
        with start_prometheus([], rule_files=[broken]):
            pass


class ContractMetrics(http.server.BaseHTTPRequestHandler):
    """A /metrics page shaped like the observer's, whose counters move at every scrape."""

    scrapes = 0
    lock = threading.Lock()
    # Log2 bucket bounds: 2^14, 2^20, 2^26 and 2^30 nanoseconds, in seconds.
    BUCKETS = [2**14 / 1e9, 2**20 / 1e9, 2**26 / 1e9, 2**30 / 1e9]

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        with self.lock:
            type(self).scrapes += 1
            n = type(self).scrapes
        body = self.page(n).encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass

    @classmethod
    def page(cls, n: int) -> str:
        lines = []
        uvloop = "loop.cpython-311-x86_64-linux-gnu.so"
        # "web" as node mode exports it (--pod-labels), "fast" as a sidecar does.
        node_mode = 'namespace="shop",pod="checkout-0",container="app"'
        for target, creator, pod in [("web", "python", node_mode), ("fast", uvloop, "")]:
            t = f'target="{target}",{pod}'.rstrip(",")
            lines += [
                f"thread_observer_threads{{{t}}} {4 + n}",
                f"thread_observer_processes{{{t}}} 1",
                f"thread_observer_executor_default_max_workers{{{t}}} 8",
                f'thread_observer_executor_saturation_ratio{{{t},pool="default"}} 0.5',
                f'thread_observer_target_info{{{t},pid="{100 + len(target)}",container_id="c0ffee",'
                f'pod_uid="6f1c1c4e-0000-4000-8000-000000000000"}} 1',
                f'thread_observer_threads_created_total{{{t},creator="{creator}"}} {3 * n}',
                f"thread_observer_threads_exited_total{{{t}}} {n}",
                f'thread_observer_getaddrinfo_calls_total{{{t},caller="other"}} {10 * n}',
                f'thread_observer_getaddrinfo_calls_total{{{t},caller="event_loop"}} {n}',
                f'thread_observer_getaddrinfo_failures_total{{{t},error="EAI_NONAME"}} {n}',
                f'thread_observer_dns_queries_total{{{t},transport="udp"}} {22 * n}',
                f'thread_observer_dns_queries_total{{{t},transport="tcp"}} {n}',
                f'thread_observer_resolver_calls_total{{{t},function="getaddrinfo",'
                f'caller="other"}} {10 * n}',
                f'thread_observer_resolver_calls_total{{{t},function="getaddrinfo",'
                f'caller="event_loop"}} {n}',
                f'thread_observer_resolver_calls_total{{{t},function="gethostbyname_r",'
                f'caller="other"}} {n}',
                f'thread_observer_executor_threads{{{t},pool="default"}} 4',
                f'thread_observer_executor_busy_threads{{{t},pool="default"}} 3',
                f'thread_observer_executor_max_workers{{{t},pool="default"}} 6',
                f'thread_observer_executor_queued_work{{{t},pool="default"}} {n % 3}',
                f'thread_observer_threads_created_by_site_total{{{t},site="app.py:main"}} {n}',
                f'thread_observer_getaddrinfo_calls_by_site_total{{{t},site="app.py:fetch",'
                f'caller="event_loop"}} {n}',
            ]
            cumulative = 0
            for i, bound in enumerate(cls.BUCKETS):
                cumulative += (i + 1) * n
                lines.append(
                    f'thread_observer_getaddrinfo_duration_seconds_bucket{{{t},le="{bound!r}"}} '
                    f"{cumulative}"
                )
            lines += [
                f'thread_observer_getaddrinfo_duration_seconds_bucket{{{t},le="+Inf"}} '
                f"{cumulative}",
                f"thread_observer_getaddrinfo_duration_seconds_sum{{{t}}} {0.001 * n}",
                f"thread_observer_getaddrinfo_duration_seconds_count{{{t}}} {cumulative}",
            ]
        for probe in ["task_newtask", "sched_process_exit", "pthread_create", "getaddrinfo"]:
            lines.append(f'thread_observer_probes_attached{{probe="{probe}"}} 1')
        lines += [
            f'thread_observer_attach_errors_total{{probe="pthread_create"}} {n}',
            f'thread_observer_build_info{{version="{VERSION}",backend="bpf"}} 1',
            "thread_observer_scrape_duration_seconds 0.002",
            "thread_observer_bpf_available 1",
            "thread_observer_unnamed_pod_processes 0",
            f"thread_observer_dns_unknown_socket_sends_total {n}",
            # client_python's own, which the observer's panels show.
            f"process_cpu_seconds_total {0.05 * n}",
            "process_resident_memory_bytes 1.5e+08",
        ]
        return "\n".join(lines) + "\n"


@pytest.fixture
def contract_metrics():
    ContractMetrics.scrapes = 0
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), ContractMetrics)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@needs_prometheus
def test_every_panel_returns_data_from_contract_shaped_metrics(contract_metrics):
    with start_prometheus([contract_metrics], rule_files=[ALERTS]) as prom:
        prom.wait_for_scrapes(3)
        assert prom.query('up{job="thread-observer"}')[0]["value"][1] == "1"
        queries = dashboard_queries(DASHBOARD) + variable_queries()
        assert [(title, expr) for title, expr in queries if not prom.query(expr)] == []
        # Both modes: "web" is named by pod as node mode does, "fast" is not.
        pods = {
            (s["metric"]["target"], s["metric"].get("pod", ""))
            for s in prom.query("thread_observer_threads")
        }
        assert pods == {("web", "checkout-0"), ("fast", "")}
        # Every rule evaluates without error against these series (rules run once a second).
        for _ in range(50):
            rules = [r for g in prom.rule_groups() for r in g["rules"]]
            if all(r["health"] != "unknown" for r in rules):
                break
            time.sleep(0.1)
        assert {(r["name"], r["health"], r.get("lastError") or "") for r in rules} == {
            (name, "ok", "") for name, _ in alert_rules(ALERTS)
        }


def pod_target_groups(namespace: str, pod: str, node: str, template: dict) -> list[dict]:
    """What role: pod discovery makes of a pod: one target per container port."""

    def meta(name: str) -> str:
        return re.sub(r"[^a-zA-Z0-9_]", "_", name)

    common = {
        "__meta_kubernetes_namespace": namespace,
        "__meta_kubernetes_pod_name": pod,
        "__meta_kubernetes_pod_node_name": node,
        "__meta_kubernetes_pod_ip": "127.0.0.1",
    }
    for key, value in template["metadata"].get("labels", {}).items():
        common[f"__meta_kubernetes_pod_label_{meta(key)}"] = value
    for key, value in template["metadata"].get("annotations", {}).items():
        common[f"__meta_kubernetes_pod_annotation_{meta(key)}"] = value
    groups = []
    for container in template["spec"]["containers"]:
        for port in container.get("ports", []):
            groups.append(
                {
                    "targets": [f"127.0.0.1:{port['containerPort']}"],
                    "labels": common
                    | {
                        "__meta_kubernetes_pod_container_name": container["name"],
                        "__meta_kubernetes_pod_container_port_name": port.get("name", ""),
                        "__meta_kubernetes_pod_container_port_number": str(port["containerPort"]),
                    },
                }
            )
    return groups


@needs_prometheus
def test_kubernetes_pod_job_scrapes_the_observer_port_of_annotated_pods(tmp_path):
    sidecar = SIDECAR["spec"]["template"]
    daemonset = DAEMONSET["spec"]["template"]
    # An annotated pod without an observer must be left to whatever else scrapes it.
    other = copy.deepcopy(sidecar)
    other["spec"]["containers"] = [c for c in other["spec"]["containers"] if c["name"] == "app"]
    groups = (
        pod_target_groups("resolver-demo", "resolver-demo-7d4f9-abcde", "node-a", sidecar)
        + pod_target_groups("thread-observer", "thread-observer-x2k8p", "node-b", daemonset)
        + pod_target_groups("shop", "shop-5c6d7-fghij", "node-a", other)
    )
    pods_file = tmp_path / "pods.json"
    pods_file.write_text(json.dumps(groups))
    config = without_kubernetes_discovery(yaml.safe_load(PROMETHEUS_CONFIG.read_text()), pods_file)
    (job,) = [j for j in config["scrape_configs"] if "file_sd_configs" in j]
    assert job["honor_labels"] is True  # node mode's pod labels win over the observer pod's
    job["scrape_interval"] = job["scrape_timeout"] = "1s"

    with start_prometheus([], extra_scrape_configs=[job]) as prom:
        targets = prom.targets()
        deadline = 20 / 0.2
        while len(targets["activeTargets"]) + len(targets["droppedTargets"]) < len(groups):
            deadline -= 1
            assert deadline > 0, f"discovery never finished: {targets}\n{prom.log_tail()}"
            time.sleep(0.2)
            targets = prom.targets()

    active = sorted(
        (
            t["labels"]["namespace"],
            t["labels"]["pod"],
            t["labels"]["node"],
            t["labels"]["job"],
            t["scrapeUrl"],
        )
        for t in targets["activeTargets"]
    )
    url = f"http://127.0.0.1:{METRICS_PORT}/metrics"
    assert active == [
        ("resolver-demo", "resolver-demo-7d4f9-abcde", "node-a", "thread-observer", url),
        ("thread-observer", "thread-observer-x2k8p", "node-b", "thread-observer", url),
    ]


class NodeModePage(http.server.BaseHTTPRequestHandler):
    """What a node-mode observer exports: a pod's series, a host process's (pod labels empty,
    as the collector writes them) and a self metric."""

    BODY = (
        b'thread_observer_threads{target="python",namespace="shop",pod="checkout-0",'
        b'container="app"} 3\n'
        b'thread_observer_threads{target="python",namespace="",pod="",container=""} 1\n'
        b'thread_observer_build_info{version="0.1.0",backend="bpf"} 1\n'
    )

    def do_GET(self):  # noqa: N802 (the name http.server calls)
        self.send_response(200)
        self.send_header("Content-Type", "text/plain; version=0.0.4")
        self.send_header("Content-Length", str(len(self.BODY)))
        self.end_headers()
        self.wfile.write(self.BODY)

    def log_message(self, *args):
        pass


@needs_prometheus
def test_honor_labels_keeps_the_watched_pod_and_leaves_host_processes_unnamed():
    """The PodMonitor of node mode honours labels: check what Prometheus makes of them, with
    the labels the operator gives the DaemonSet pod's target."""
    (monitor,) = load_documents(KUBERNETES / "base" / "podmonitor.yaml")
    (endpoint,) = monitor["spec"]["podMetricsEndpoints"]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), NodeModePage)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    observer_pod = {
        "namespace": "thread-observer",
        "pod": "thread-observer-x2k8p",
        "container": "thread-observer",
    }
    job = {
        "job_name": "thread-observer",
        "honor_labels": endpoint["honorLabels"],
        "static_configs": [
            {"targets": [f"127.0.0.1:{server.server_address[1]}"], "labels": observer_pod}
        ],
    }
    try:
        with start_prometheus([], extra_scrape_configs=[job]) as prom:
            prom.wait_for_scrapes(2)
            threads = {
                tuple(s["metric"].get(k, "") for k in ("namespace", "pod", "container")): s[
                    "value"
                ][1]
                for s in prom.query("thread_observer_threads")
            }
            (info,) = prom.query("thread_observer_build_info")
    finally:
        server.shutdown()
        server.server_close()
        thread.join()
    assert threads == {("shop", "checkout-0", "app"): "3", ("", "", ""): "1"}
    assert {k: info["metric"][k] for k in observer_pod} == observer_pod
