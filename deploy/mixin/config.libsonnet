// What a deployment changes, as the monitoring mixins' _config. Override any of it where you
// import the mixin:
//
//   (import 'thread-observer-mixin/mixin.libsonnet') + {
//     _config+:: { jobSelector: 'job=~"thread-observer|node-agents"' },
//   }
//
// deploy/render.py sets jobSelector and runbookURLBase from --job-selector and
// --runbook-url-base. The defaults render the files committed in deploy/.
{
  _config+:: {
    // The label matcher every rule selects the observers' series with: the job name that
    // deploy/prometheus/prometheus.yml and the PodMonitors give every observer.
    jobSelector: 'job="thread-observer"',

    // Each rule's runbook_url is runbookURLBase + runbookPath + '#' + the alert's name in
    // lower case (its section of docs/runbook.md). Absolute, since Alertmanager and Grafana
    // resolve a relative link against their own address; the base is a placeholder, as the
    // manifests' image registry is: put where your copy of docs/runbook.md is served (ending
    // with /).
    runbookURLBase: 'https://git.example.com/thread-observer/blob/main/',
    runbookPath: 'docs/runbook.md',

    // Thresholds. Each rule's `for` is not a knob: it is tied to the window of the rate the
    // rule judges (at least as long, so that a single burst never fires) and to the text of
    // its description; to change one, override the rule (see docs/runbook.md).
    //
    // PythonThreadsNearExecutorCap: the fullest default executor's live workers over its
    // max_workers.
    executorSaturationThreshold: 0.9,
    // GetaddrinfoOnEventLoop: blocking lookups a minute on an event-loop thread.
    eventLoopLookupsPerMinute: 3,
    // GetaddrinfoFailing: the failed share of the lookups, in per cent.
    getaddrinfoFailingPercent: 5,
    // GetaddrinfoSlow: the p99 of getaddrinfo latency, in seconds.
    getaddrinfoSlowSeconds: 0.5,

    // The dashboard (grafanaDashboards['thread-observer.json']).
    dashboardTags: ['thread-observer', 'python', 'asyncio', 'ebpf'],
    dashboardRefresh: '30s',
    // '' is the browser's time zone; 'utc' is another choice.
    dashboardTimezone: '',
    // Matchers put in front of every selector of every panel and variable query, e.g.
    // self.jobSelector to show only the jobs the rules watch. Empty: every job that exports
    // thread_observer_* series, picked with the Job variable.
    dashboardSelector: '',
  },
}
