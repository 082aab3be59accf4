// The dashboard of the thread-observer mixin, as grafanaDashboards.
//
// Its panels are not written in jsonnet (grafonnet): dashboards/thread-observer.json is the
// dashboard as Grafana's JSON model, imported here as data, and _config patches what a
// deployment changes: the tags, refresh and time zone, and with dashboardSelector the
// selector of every panel and variable query. Edit the panels in that file (or in Grafana,
// then export it there); deploy/render.py renders deploy/grafana/thread-observer.json and the
// ConfigMap in deploy/kubernetes/base/ from this.
//
// Every selector of the dashboard starts with cluster=~"$cluster" but the cluster variable's,
// which has none: dashboardSelector goes in front of each.
local dashboard = import 'dashboards/thread-observer.json';

{
  local selector = $._config.dashboardSelector,
  local narrowed(query) =
    if selector == '' then query
    else std.strReplace(
      std.strReplace(query, '{cluster=~"$cluster"', '{%s, cluster=~"$cluster"' % selector),
      'label_values(thread_observer_build_info, ',
      'label_values(thread_observer_build_info{%s}, ' % selector,
    ),
  local patchPanel(panel) = panel + (
    if std.objectHas(panel, 'targets') then {
      targets: [
        target + (if std.objectHas(target, 'expr') then { expr: narrowed(target.expr) } else {})
        for target in panel.targets
      ],
    } else {}
  ) + (
    if std.objectHas(panel, 'panels') then { panels: std.map(patchPanel, panel.panels) } else {}
  ),
  local patchVariable(variable) = variable + (
    if variable.type == 'query' then {
      definition: narrowed(variable.definition),
      query: narrowed(variable.query),
    } else {}
  ),

  grafanaDashboards+:: {
    'thread-observer.json': dashboard {
      tags: $._config.dashboardTags,
      refresh: $._config.dashboardRefresh,
      timezone: $._config.dashboardTimezone,
      panels: std.map(patchPanel, dashboard.panels),
      templating+: { list: std.map(patchVariable, dashboard.templating.list) },
    },
  },
}
