// The thread-observer monitoring mixin: prometheusAlerts (the alert rules) and
// grafanaDashboards (the dashboard), with what a deployment changes in _config
// (config.libsonnet). deploy/render.py renders the files in deploy/ from it; docs/runbook.md,
// "Changing the job selector and the runbook links", says how to use it from your own jsonnet.
(import 'config.libsonnet') +
(import 'alerts.libsonnet') +
(import 'dashboards.libsonnet')
