"""Renders the deploy files from the monitoring mixin in deploy/mixin, and adapts the rules.

    .venv/bin/python deploy/render.py            # rewrite the rendered files
    .venv/bin/python deploy/render.py --check    # exit 1 when one is out of date
    .venv/bin/python deploy/render.py --job-selector 'job=~"thread-observer|agents"' \\
        --runbook-url-base https://git.example.com/you/thread-observer/blob/main/ \\
        --rules-out my-alerts.yml --prometheus-rule-out my-prometheusrule.yaml

Source: deploy/mixin/mixin.libsonnet, the rules (prometheusAlerts) and the dashboard
(grafanaDashboards) with what a deployment changes in _config, evaluated by Debian's `jsonnet`
(apt-get install jsonnet; deploy/setup.sh installs it). Rendered from it, with the _config
defaults: deploy/prometheus/alerts.yml (the rules, for plain Prometheus),
deploy/grafana/thread-observer.json (the dashboard), and from those a PrometheusRule and a
ConfigMap the Grafana sidecar loads (label grafana_dashboard: "1"). --job-selector and
--runbook-url-base set _config.jobSelector and _config.runbookURLBase.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import yaml

DEPLOY = Path(__file__).resolve().parent
MIXIN = DEPLOY / "mixin"
RULES_SOURCE = MIXIN / "alerts.libsonnet"
DASHBOARD_SOURCES = MIXIN / "dashboards"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARDS = DEPLOY / "grafana"
DASHBOARD = DASHBOARDS / "thread-observer.json"
BASE = DEPLOY / "kubernetes" / "base"
PROMETHEUS_RULE = BASE / "prometheusrule.yaml"
DASHBOARD_CONFIG_MAP = BASE / "grafana-dashboard.yaml"
HEADER = """\
# Made by deploy/render.py from deploy/mixin/{source}: edit it, then run
#   .venv/bin/python deploy/render.py
"""
RULES_HEADER = """\
# Alert rules for thread-observer; unit tests: promtool test rules alerts_test.yml
#
# Made by deploy/render.py from the monitoring mixin in deploy/mixin/ (the rules in
# alerts.libsonnet, the job selector, runbook base and thresholds in config.libsonnet): edit
# those, then run
#   .venv/bin/python deploy/render.py
# which renders the PrometheusRule in deploy/kubernetes/base/ from the same rules. For another
# job selector or runbook location, see docs/runbook.md, "Changing the job selector and the
# runbook links".
#
"""
# Evaluates the mixin with config merged into its _config. prometheusAlerts manifests without
# the hidden fields alerts.yml shows (each rule's comment::, the lines of each description):
# `layout` carries them, group by group and rule by rule.
WRAPPER = """
function(config={})
  local mixin = (import 'mixin.libsonnet') + { _config+:: config };
  local hidden(object, field) = if std.objectHasAll(object, field) then object[field];
  {
    alerts: mixin.prometheusAlerts,
    layout: [
      [
        {
          comment: hidden(rule, 'comment'),
          descriptionLines: if std.objectHas(rule, 'annotations')
          then hidden(rule.annotations, 'descriptionLines'),
        }
        for rule in group.rules
      ]
      for group in mixin.prometheusAlerts.groups
    ],
    dashboards: mixin.grafanaDashboards,
  }
"""
# Keys in the order the rule files of Prometheus's documentation write them; others follow,
# sorted.
GROUP_KEYS = ("name", "interval", "limit", "rules")
RULE_KEYS = ("alert", "record", "expr", "for", "keep_firing_for", "labels", "annotations")
ANNOTATION_KEYS = ("summary", "description", "runbook_url")
WIDTH = 100


class RenderError(RuntimeError):
    """jsonnet is missing or refused the mixin, or a rendered file would not read back."""


def evaluate(config: dict | None = None) -> dict:
    """The mixin evaluated with config merged into its _config: {alerts, layout, dashboards}."""
    jsonnet = shutil.which("jsonnet")
    if jsonnet is None:
        raise RenderError(
            "jsonnet is not on PATH: apt-get install jsonnet (deploy/setup.sh installs it)"
        )
    result = subprocess.run(
        [
            jsonnet,
            "--jpath",
            str(MIXIN),
            "--tla-code",
            f"config={json.dumps(config or {})}",
            "--exec",
            WRAPPER,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if result.returncode != 0:
        raise RenderError(f"jsonnet failed on deploy/mixin:\n{result.stderr}")
    return json.loads(result.stdout)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PromQL, descriptions, the dashboard) as literal blocks."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump(document: dict) -> str:
    return yaml.dump(document, Dumper=_Dumper, sort_keys=False, width=100)


# The rule file, written as a person would: comments, blank lines between rules, expressions
# as literal blocks, descriptions folded. Every scalar is checked to read back as it is, and
# the whole file is compared with the rules once written.


def _ordered(mapping: dict, first: tuple[str, ...]) -> dict:
    return {k: mapping[k] for k in first if k in mapping} | {
        k: mapping[k] for k in sorted(mapping) if k not in first
    }


def _inline(value: object) -> str:
    """value on one line: plain where that reads back as value, else quoted (JSON's quoting
    is YAML's double-quoted style)."""
    if isinstance(value, str) and value and value == value.strip() and "\n" not in value:
        try:
            if yaml.safe_load(f"k: {value}") == {"k": value}:
                return value
        except yaml.YAMLError:
            pass
    return json.dumps(value, ensure_ascii=False)


def _entry(key: str, value: object, indent: str, lines: list[str] | None = None) -> list[str]:
    """`key: value` at indent. Given lines (an annotation), a string is folded (`>-`) at
    those line breaks when they join into it, else where textwrap breaks it if it is longer
    than a line."""
    if isinstance(value, dict):
        if not value:
            return [f"{indent}{key}: {{}}"]
        inner = indent + "  "
        return [f"{indent}{key}:"] + [
            line for k, v in value.items() for line in _entry(k, _ordered_value(k, v), inner)
        ]
    if isinstance(value, str) and "\n" in value:
        body = value[:-1].split("\n")
        if value.endswith("\n") and not value.endswith("\n\n") and not body[0].startswith(" "):
            return [f"{indent}{key}: |"] + [f"{indent}  {line}" if line else "" for line in body]
    elif isinstance(value, str) and lines is not None:
        if not lines or " ".join(lines) != value:
            lines = textwrap.wrap(
                value,
                WIDTH - len(indent) - 2,
                break_long_words=False,
                break_on_hyphens=False,
            )
            lines = lines if len(lines) > 1 else []
        if (
            lines
            and " ".join(lines) == value
            and all(line and line == line.strip() for line in lines)
        ):
            return [f"{indent}{key}: >-"] + [f"{indent}  {line}" for line in lines]
    return [f"{indent}{key}: {_inline(value)}"]


def _ordered_value(key: str, value: object) -> object:
    return _ordered(value, ANNOTATION_KEYS) if key == "annotations" else value


def _rule(rule: dict, layout: dict) -> list[str]:
    """A rule of a group's list; its comment follows the first line (`- alert: ...`)."""
    indent = "        "
    out = []
    for position, (key, value) in enumerate(_ordered(rule, RULE_KEYS).items()):
        if key == "annotations" and isinstance(value, dict):
            lines = [f"{indent}annotations:"]
            for name, text in _ordered(value, ANNOTATION_KEYS).items():
                breaks = layout.get("descriptionLines") if name == "description" else None
                lines += _entry(name, text, indent + "  ", breaks or [])
        else:
            lines = _entry(key, value, indent)
        if position == 0:
            lines[0] = "      - " + lines[0].lstrip()
            if layout.get("comment"):
                comment = layout["comment"].rstrip("\n").split("\n")
                lines[1:1] = [f"{indent}# {line}".rstrip() for line in comment]
        out += lines
    return out


def conventions() -> str:
    """The comment block alerts.libsonnet starts with, as YAML comments."""
    block = []
    for line in RULES_SOURCE.read_text(encoding="utf-8").splitlines():
        if not line.startswith("//"):
            break
        block.append("#" + line[2:])
    return "".join(f"{line}\n" for line in block)


def rules(rendered: dict) -> str:
    """The rule file for plain Prometheus: deploy/prometheus/alerts.yml."""
    alerts, layout = rendered["alerts"], rendered["layout"]
    out = ["groups:"]
    for index, (group, notes) in enumerate(zip(alerts["groups"], layout, strict=True)):
        if index:
            out.append("")
        for position, (key, value) in enumerate(_ordered(group, GROUP_KEYS).items()):
            prefix = "  - " if position == 0 else "    "
            if key == "rules" and value:
                out.append(f"{prefix}rules:")
                for number, (rule, note) in enumerate(zip(value, notes, strict=True)):
                    if number:
                        out.append("")
                    out += _rule(rule, note)
            else:
                lines = _entry(key, value, "    ")
                out += [prefix + lines[0].lstrip(), *lines[1:]]
    text = RULES_HEADER + conventions() + "\n".join(out) + "\n"
    if yaml.safe_load(text) != alerts:
        raise RenderError("the rule file would not read back as the mixin's rules")
    return text


def _like(value: object, model: object) -> object:
    """value with the keys of each object in the order model has them: jsonnet sorts them, the
    dashboard's source keeps Grafana's. Keys model lacks follow, sorted."""
    if isinstance(value, dict):
        model = model if isinstance(model, dict) else {}
        keys = [k for k in model if k in value] + [k for k in value if k not in model]
        return {k: _like(value[k], model.get(k)) for k in keys}
    if isinstance(value, list):
        model = model if isinstance(model, list) else []
        return [_like(v, model[i] if i < len(model) else None) for i, v in enumerate(value)]
    return value


def dashboards(rendered: dict) -> dict[str, str]:
    """File name: JSON of each dashboard, laid out as its source in deploy/mixin/dashboards."""
    texts = {}
    for name, board in rendered["dashboards"].items():
        source = DASHBOARD_SOURCES / name
        model = json.loads(source.read_text(encoding="utf-8")) if source.exists() else None
        texts[name] = json.dumps(_like(board, model), indent=2, ensure_ascii=False) + "\n"
    return texts


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
    return HEADER.format(source="alerts.libsonnet") + dump(document)


def dashboard_config_map(dashboard_text: str) -> str:
    document = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "thread-observer-dashboard",
            # The Grafana sidecar (kube-prometheus-stack, the grafana chart) loads every
            # ConfigMap with this label from the namespaces it searches.
            "labels": {"app.kubernetes.io/name": "thread-observer", "grafana_dashboard": "1"},
        },
        "data": {DASHBOARD.name: dashboard_text},
    }
    return HEADER.format(source=f"dashboards/{DASHBOARD.name}") + dump(document)


def outputs(config: dict | None = None) -> dict[Path, str]:
    """Every rendered file and its text, with config merged into the mixin's _config."""
    rendered = evaluate(config)
    rules_text = rules(rendered)
    boards = dashboards(rendered)
    return {
        ALERTS: rules_text,
        **{DASHBOARDS / name: text for name, text in boards.items()},
        PROMETHEUS_RULE: prometheus_rule(rules_text),
        DASHBOARD_CONFIG_MAP: dashboard_config_map(boards[DASHBOARD.name]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--check",
        action="store_true",
        help="only say whether the rendered files in deploy/ are up to date",
    )
    parser.add_argument(
        "--job-selector",
        metavar="MATCHER",
        help="label matcher every rule selects the observers with (_config.jobSelector; the "
        'mixin\'s is job="thread-observer")',
    )
    parser.add_argument(
        "--runbook-url-base",
        metavar="URL",
        help="where docs/runbook.md is served, in place of the mixin's placeholder base in "
        "every runbook_url (_config.runbookURLBase; ends with /: BASE + "
        "docs/runbook.md#alertname)",
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
    config = {}
    if args.job_selector is not None:
        config["jobSelector"] = args.job_selector
    if args.runbook_url_base is not None:
        config["runbookURLBase"] = args.runbook_url_base
    adapting = args.rules_out or args.prometheus_rule_out
    if config and not adapting:
        parser.error(
            "the files in deploy/ are rendered with the mixin's defaults: give --rules-out or "
            "--prometheus-rule-out for rules with another job selector or runbook base"
        )
    try:
        if adapting:
            adapted = rules(evaluate(config))
            if args.rules_out:
                args.rules_out.write_text(adapted, encoding="utf-8")
            if args.prometheus_rule_out:
                args.prometheus_rule_out.write_text(prometheus_rule(adapted), encoding="utf-8")
            return 0
        rendered = outputs()
    except RenderError as error:
        print(f"render: {error}", file=sys.stderr)
        return 2
    stale = [
        path
        for path, text in rendered.items()
        if not path.exists() or path.read_text(encoding="utf-8") != text
    ]
    if args.check:
        for path in stale:
            print(
                f"render: {path.relative_to(DEPLOY.parent)} is out of date: run deploy/render.py",
                file=sys.stderr,
            )
        return 1 if stale else 0
    for path in stale:
        path.write_text(rendered[path], encoding="utf-8")
        print(f"render: wrote {path.relative_to(DEPLOY.parent)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
