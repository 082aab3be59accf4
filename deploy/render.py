"""Makes the operator-native objects from their one source each, and adapts the rules.

    .venv/bin/python deploy/render.py            # rewrite deploy/kubernetes/base/*.yaml
    .venv/bin/python deploy/render.py --check    # exit 1 when they are out of date
    .venv/bin/python deploy/render.py --job-selector 'job=~"thread-observer|agents"' \\
        --runbook-url-base https://git.example.com/you/thread-observer/blob/main/ \\
        --rules-out my-alerts.yml --prometheus-rule-out my-prometheusrule.yaml

Sources: deploy/prometheus/alerts.yml (the rules, for plain Prometheus) and
deploy/grafana/thread-observer.json (the dashboard). Made from them: a PrometheusRule and a
ConfigMap the Grafana sidecar loads (label grafana_dashboard: "1").
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "thread-observer.json"
BASE = DEPLOY / "kubernetes" / "base"
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"
DASHBOARD_CONFIG_MAP = BASE / "grafana-dashboard.yaml"
JOB_SELECTOR = 'job="thread-observer"'
RUNBOOK = "docs/runbook.md"
RUNBOOK_URL = re.compile(rf"^\s*runbook_url: (\S*){re.escape(RUNBOOK)}#", re.MULTILINE)
HEADER = """\
# Made by deploy/render.py from {source}: edit that file, then run
#   .venv/bin/python deploy/render.py
"""


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions, the dashboard) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


def runbook_links_base(text: str) -> str:
    """The base every runbook_url of a rule file starts with: alerts.yml keeps one, a
    placeholder until --runbook-url-base gives yours."""
    bases = set(RUNBOOK_URL.findall(text))
    if len(bases) != 1:
        raise ValueError(f"{ALERTS.name}: the runbook links have {len(bases)} bases, not one")
    return bases.pop()


def rules(job_selector: str = JOB_SELECTOR, runbook_url_base: str = "") -> str:
    """alerts.yml, with another job selector and runbook location when asked."""
    text = ALERTS.read_text()
    if job_selector != JOB_SELECTOR:
        text = text.replace(JOB_SELECTOR, job_selector)
    if runbook_url_base:
        default = f"runbook_url: {runbook_links_base(text)}{RUNBOOK}#"
        text = text.replace(default, f"runbook_url: {runbook_url_base}{RUNBOOK}#")
    return text


def prometheus_rule(rules_text: str) -> str:
    document = {
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "thread-observer",
            "labels": {
                "app.kubernetes.io/name": "thread-observer",
                # kube-prometheus's Prometheus selects rules with these labels;
                # kube-prometheus-stack wants release: <its release name> (add it with a
                # kustomize patch or commonLabels).
                "prometheus": "k8s",
                "role": "alert-rules",
            },
        },
        "spec": {"groups": yaml.safe_load(rules_text)["groups"]},
    }
    return HEADER.format(source="deploy/prometheus/alerts.yml") + dump(document)


def dashboard_config_map() -> str:
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "thread-observer-dashboard",
            # The Grafana sidecar (kube-prometheus-stack, the grafana chart) loads every
            # ConfigMap with this label from the namespaces it searches.
            "labels": {"app.kubernetes.io/name": "thread-observer", "grafana_dashboard": "1"},
        },
        "data": {DASHBOARD.name: DASHBOARD.read_text()},
    }
    return HEADER.format(source="deploy/grafana/thread-observer.json") + dump(document)


def outputs() -> dict[Path, str]:
    return {PROMETHEUS_RULE: prometheus_rule(rules()), DASHBOARD_CONFIG_MAP: dashboard_config_map()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="only say whether the files in deploy/kubernetes/base are up to date",
    )
    parser.add_argument(
        "--job-selector",
        default=JOB_SELECTOR,
        metavar="MATCHER",
        help="label matcher that replaces %(default)s in every rule",
    )
    parser.add_argument(
        "--runbook-url-base",
        default="",
        metavar="URL",
        help="where docs/runbook.md is served, in place of the rule file's placeholder base "
        "in every runbook_url (ends with /: BASE + docs/runbook.md#alertname)",
    )
    parser.add_argument(
        "--rules-out",
        type=Path,
        metavar="FILE",
        help="write the adapted rule file (for plain Prometheus) here",
    )
    parser.add_argument(
        "--prometheus-rule-out",
        type=Path,
        metavar="FILE",
        help="write the adapted PrometheusRule here",
    )
    args = parser.parse_args(argv)
    if args.rules_out or args.prometheus_rule_out:
        adapted = rules(args.job_selector, args.runbook_url_base)
        if args.rules_out:
            args.rules_out.write_text(adapted)
        if args.prometheus_rule_out:
            args.prometheus_rule_out.write_text(prometheus_rule(adapted))
        return 0
    stale = [
        path for path, text in outputs().items() if not path.exists() or path.read_text() != text
    ]
    if args.check:
        for path in stale:
            print(
                f"render: {path.relative_to(DEPLOY.parent)} is out of date: run deploy/render.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(outputs()[path])
        print(f"render: wrote {path.relative_to(DEPLOY.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
