// Conventions (those of the monitoring mixins):
// - Every selector names the job: _config.jobSelector, job="thread-observer" by default.
// - Aggregations drop only what must go (`sum without (pid, ...)`), so cluster, namespace, pod,
//   container, instance, job and target stay and each alert names what it is about: in node
//   mode (the DaemonSet, --pod-labels) the watched pod, in sidecar mode the pod scraped.
// - A `pid` label exists only with --label-pid: every rule sums or maxes it away.
// - Summaries are static; descriptions say which target, pod and observer.
// - runbook_url points at a section of docs/runbook.md: what the alert means, what to do. The
//   links are absolute, since Alertmanager and Grafana resolve a relative one against their own
//   address. Every link starts with the same base, _config.runbookURLBase, a placeholder as the
//   manifests' registry is: put where your copy of docs/runbook.md is served in its place
//   (deploy/render.py --runbook-url-base does).
// - A single event never fires an alert: `for` is at least as long as the window of the rate
//   it judges, so one burst has left the window before the alert may fire; and a ratio of
//   rates is taken only above a floor of what it divides by.
// - Only ThreadObserverGone is critical: with no observer left, no other alert can fire.

// The alert rules of the thread-observer mixin, as prometheusAlerts. deploy/render.py renders
// them as deploy/prometheus/alerts.yml (the comment block above is its head, copied) and as the
// PrometheusRule in deploy/kubernetes/base/.
//
// Two hidden fields are for render.py, not part of the rules (prometheusAlerts manifests
// without them): each rule's comment::, why the rule is as it is, which alerts.yml shows above
// its expr; and the lines of each description, which description() joins with spaces as
// YAML's `>-` folds them, so that alerts.yml breaks them where they break here.
local description(text) = {
  local lines = std.split(std.rstripChars(text, '\n'), '\n'),
  description: std.join(' ', lines),
  descriptionLines:: lines,
};

{
  // What the watched processes do.
  local targets = {
    name: 'thread-observer-targets',
    rules: [
      {
        alert: 'PythonExecutorThreadsGrowing',
        comment:: |||
          A default-executor worker lives until the executor shuts down, so Python-started
          threads that keep coming while the live count keeps rising is the pool growing with
          the number of concurrent lookups (or to_thread calls) towards its cap.
        |||,
        expr: |||
          sum without (pid, creator) (
            increase(thread_observer_threads_created_total{%(jobSelector)s,creator="python"}[15m])
          ) > 0
          and
          sum without (pid) (delta(thread_observer_threads{%(jobSelector)s}[15m])) > 0
        ||| % $._config,
        'for': '30m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'A Python process keeps adding threads.',
        } + description(|||
          {{ $labels.target }}{{ with $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }}
          has been starting Python threads for 45 minutes while its live thread count rose.
        |||),
      },
      {
        alert: 'PythonThreadsNearExecutorCap',
        comment:: |||
          The saturation ratio is the fullest process's default executor: its busy workers
          over its max_workers, read from the executor; max, not average, so one full process
          is not hidden by idle replicas. It fires only while work waits in the default
          executors' queues too: a pool at its cap with nothing queued (a process with many
          threads of its own, a full but idle pool) costs no one latency. Both carry the
          executor label: the executor at its cap is the one with work waiting.
        |||,
        expr: |||
          max without (pid) (
            thread_observer_executor_saturation_ratio{%(jobSelector)s,pool="default"}
          ) >= %(executorSaturationThreshold)g
          and
          sum without (pid) (
            thread_observer_executor_queued_work{%(jobSelector)s,pool="default"}
          ) > 0
        ||| % $._config,
        'for': '15m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'A Python default executor is near its thread cap.',
        } + description(|||
          The fullest default ThreadPoolExecutor of {{ $labels.target }}{{ with $labels.pod }}
          in pod {{ $labels.namespace }}/{{ . }}{{ end }} has {{ $value | humanizePercentage }}
          of its max_workers threads busy.
        |||),
      },
      {
        alert: 'GetaddrinfoOnEventLoop',
        comment:: |||
          A blocking lookup on a loop thread stalls every coroutine of that loop for the
          length of the lookup, up to the resolver timeout when DNS is slow. One now and then
          (a client resolving once per new connection, at start or on a reconnect) is not worth
          a page; a lookup per request or per message is. So, as the mixins judge error
          counters (the prometheus-operator mixin's reconcile errors: a 5-minute rate above a
          floor, held 10 minutes): more than 3 a minute over 5 minutes (more than 15 lookups),
          held for 15 minutes, three times the window, so that a burst of any size, gone from
          the window after 5 minutes, never fires. The value is lookups a minute.
        |||,
        expr: |||
          sum without (pid, caller) (
            rate(thread_observer_getaddrinfo_calls_total{%(jobSelector)s,caller="event_loop"}[5m])
          ) * 60 > %(eventLoopLookupsPerMinute)g
        ||| % $._config,
        'for': '15m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'A Python event loop keeps calling the blocking getaddrinfo.',
        } + description(|||
          {{ $labels.target }}{{ with $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }}
          resolves host names with a blocking getaddrinfo on an event-loop thread
          {{ printf "%.0f" $value }} times a minute.
        |||),
      },
      {
        alert: 'GetaddrinfoFailing',
        comment:: |||
          The failed share of the lookups, where there are more than 0.1 lookups a second (60
          in the 10-minute window, the floor of DNSQueriesPerLookupRising too): below it a
          handful of lookups makes the ratio jump (2 lookups, 1 failed, is 50 %). The floor
          filters the denominator, so a quiet target has no ratio rather than 0/0. A single
          failure leaves the window after 10 minutes, the length of `for`: it never fires.
        |||,
        expr: |||
          sum without (pid, error) (
            rate(thread_observer_getaddrinfo_failures_total{%(jobSelector)s}[10m])
          )
            / (
              sum without (pid, caller) (
                rate(thread_observer_getaddrinfo_calls_total{%(jobSelector)s}[10m])
              ) > 0.1
            )
          > %(getaddrinfoFailingRatio)g
        ||| % config,
        'for': '10m',
        labels: { severity: 'warning' },
        annotations: {
          summary:
            'More than %(getaddrinfoFailingPercent)g%% of getaddrinfo calls fail.' % $._config,
        } + description(|||
          {{ $value | humanizePercentage }} of the getaddrinfo calls of {{ $labels.target
          }}{{ with $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }} fail.
        |||),
      },
      {
        alert: 'GetaddrinfoSlow',
        comment:: |||
          Lookups answered from a local cache or /etc/hosts take microseconds; a p99 in the
          half-second range means the resolver waits on timeouts or retries.
        |||,
        expr: |||
          histogram_quantile(0.99,
            sum without (pid) (
              rate(thread_observer_getaddrinfo_duration_seconds_bucket{%(jobSelector)s}[10m])
            )
          ) > %(getaddrinfoSlowSeconds)g
        ||| % $._config,
        'for': '10m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'getaddrinfo p99 latency is above %(getaddrinfoSlowSeconds)g s.' % $._config,
        } + description(|||
          The 99th percentile of getaddrinfo latency in {{ $labels.target }}{{ with
          $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }} is {{ $value |
          humanizeDuration }}.
        |||),
      },
      {
        alert: 'DNSQueriesPerLookupRising',
        comment:: |||
          DNS queries on the wire per libc resolver call, now and an hour before: a lookup
          answered from /etc/hosts or a cache costs none, a cold one two (A and AAAA) or more
          (search domains, retries), so the ratio doubling means a cache went away or the
          resolver configuration changed. Lookups below 0.1/s (now or then) are left out: a
          few lookups make the ratio jump, and a zero denominator is no ratio at all. The
          queries must also exceed 0.5/s, so that a ratio going from 0.001 to 0.003 is not
          worth a page.
        |||,
        expr: |||
          (
            sum without (pid, transport) (
              rate(thread_observer_dns_queries_total{%(jobSelector)s}[15m])
            )
            / (
              sum without (pid, function, caller) (
                rate(thread_observer_resolver_calls_total{%(jobSelector)s}[15m])
              ) > 0.1
            )
          )
          > 2 * (
            sum without (pid, transport) (
              rate(thread_observer_dns_queries_total{%(jobSelector)s}[15m] offset 1h)
            )
            / (
              sum without (pid, function, caller) (
                rate(thread_observer_resolver_calls_total{%(jobSelector)s}[15m] offset 1h)
              ) > 0.1
            )
          )
          and
          sum without (pid, transport) (
            rate(thread_observer_dns_queries_total{%(jobSelector)s}[15m])
          ) > 0.5
        ||| % $._config,
        'for': '15m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'Each name lookup costs more than twice the DNS queries it did an hour ago.',
        } + description(|||
          {{ $labels.target }}{{ with $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }}
          sends {{ printf "%.1f" $value }} DNS queries per libc lookup, more than twice as
          many as an hour before.
        |||),
      },
      {
        alert: 'DNSFallingBackToTCP',
        comment:: |||
          Resolvers use UDP and retry over TCP when an answer comes back truncated (too large
          for 512 bytes or the EDNS size): TCP queries that keep coming are answers that keep
          being too large, each lookup paying a UDP round trip and a TCP handshake more.
        |||,
        expr: |||
          sum without (pid, transport) (
            rate(thread_observer_dns_queries_total{%(jobSelector)s,transport="tcp"}[5m])
          ) > 0
        ||| % $._config,
        'for': '10m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'DNS queries go over TCP.',
        } + description(|||
          {{ $labels.target }}{{ with $labels.pod }} in pod {{ $labels.namespace }}/{{ . }}{{ end }}
          has sent DNS queries over TCP for 10 minutes: its answers come back truncated
          over UDP.
        |||),
      },
    ],
  },

  // How the observers themselves fare.
  local observers = {
    name: 'thread-observer-self',
    rules: [
      {
        alert: 'ThreadObserverDown',
        comment:: |||
          One observer that cannot be scraped: the pods of its node (or its pod, as a sidecar)
          are not watched, the rest of the fleet is. A warning: ThreadObserverGone pages when
          none is left.
        |||,
        expr: 'up{%(jobSelector)s} == 0' % $._config,
        'for': '5m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'thread-observer cannot be scraped.',
        } + description(|||
          Prometheus cannot scrape thread-observer on {{ $labels.instance }}: thread and
          getaddrinfo metrics of the pods it watches are missing.
        |||),
      },
      {
        alert: 'ThreadObserverGone',
        comment:: |||
          No observer answers: none discovered (the DaemonSet deleted, the scrape config or
          the PodMonitor's selection broken) or every one down, as the kubernetes mixin's
          KubeletDown and KubeSchedulerDown say it, absent(up == 1). Critical, the one alert
          here that is: every other rule reads the observers' series, so with none left they
          all stay silent while nothing is watched, and only this one says so.
        |||,
        expr: 'absent(up{%(jobSelector)s} == 1)' % $._config,
        'for': '10m',
        labels: { severity: 'critical' },
        annotations: {
          summary: 'No thread-observer is scraped.',
        } + description(|||
          Prometheus has scraped no thread-observer for 10 minutes: no thread or
          getaddrinfo metric is collected, and no other thread-observer alert can fire.
        |||),
      },
      {
        alert: 'ThreadObserverProbeDetached',
        comment:: |||
          Every probe is exported, at 0 when it has no attach point: the tracepoints from the
          start, the uprobes on libc's pthread_create and getaddrinfo (entry and return) once a
          watched process's libc is found. epoll_pwait2 is left out: kernels before 5.11 lack
          it, and epoll_wait and epoll_pwait still tell event-loop threads (where the kernel
          allows, one sched_switch probe replaces the three, and sock_send_length and
          tcp_sendmsg_locked the send syscalls' tracepoints). The proc backend
          attaches nothing by design and has its own alert.
        |||,
        expr: |||
          (
            thread_observer_probes_attached{%(jobSelector)s,probe!="epoll_pwait2"} == 0
            and on (cluster, job, instance)
            sum by (cluster, job, instance) (thread_observer_processes{%(jobSelector)s}) > 0
          )
          unless on (cluster, job, instance)
          thread_observer_build_info{%(jobSelector)s,backend="proc"}
        ||| % $._config,
        'for': '5m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'A thread-observer probe is not attached.',
        } + description(|||
          Probe {{ $labels.probe }} has no attach point on {{ $labels.instance }} although
          processes are being watched, so the metrics it feeds are missing.
        |||),
      },
      {
        alert: 'ThreadObserverAttachErrors',
        comment:: |||
          A process that exits before its probes are in place makes an occasional error, and a
          tracepoint the kernel lacks (epoll_pwait2 before 5.11) one error at start. Only errors
          that keep coming for longer than the window are a probe that cannot attach.
        |||,
        expr: 'increase(thread_observer_attach_errors_total{%(jobSelector)s}[10m]) > 0' % $._config,
        'for': '15m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'thread-observer keeps failing to attach a probe.',
        } + description(|||
          Attaching probe {{ $labels.probe }} keeps failing on {{ $labels.instance }}.
        |||),
      },
      {
        alert: 'ThreadObserverProcBackend',
        comment:: |||
          Without eBPF the observer falls back to reading /proc: live thread counts remain, but
          thread creations and every getaddrinfo metric are absent (not zero), so the alerts
          above can no longer fire.
        |||,
        expr: 'thread_observer_build_info{%(jobSelector)s,backend="proc"} == 1' % $._config,
        'for': '10m',
        labels: { severity: 'warning' },
        annotations: {
          summary: 'thread-observer runs without eBPF.',
        } + description(|||
          thread-observer on {{ $labels.instance }} uses the proc backend: thread creations
          and getaddrinfo calls are not observed.
        |||),
      },
      {
        alert: 'ThreadObserverUnnamedPods',
        comment:: |||
          Node mode names pods from the kubelet's log directories; processes whose pod or
          container it cannot name are counted in one series without their pod's labels.
        |||,
        expr: |||
          max_over_time(thread_observer_unnamed_pod_processes{%(jobSelector)s}[10m]) > 0
        ||| % $._config,
        'for': '30m',
        labels: { severity: 'info' },
        annotations: {
          summary: 'thread-observer cannot name the pods of some processes.',
        } + description(|||
          {{ $value }} watched processes on {{ $labels.instance }} run in pods that the
          kubelet's log directories do not name; their series carry empty namespace, pod or
          container labels.
        |||),
      },
      {
        alert: 'ThreadObserverDNSSendsUncounted',
        comment:: |||
          Writes to a TCP stream to port 53 that was written before its process was watched
          have no known message boundary and are left out of dns_queries_total. One burst at
          start is expected; writes that keep coming are a long-lived DNS-over-TCP connection
          whose queries the target's counts will keep missing.
        |||,
        expr: |||
          increase(thread_observer_dns_unknown_socket_sends_total{%(jobSelector)s}[10m]) > 0
        ||| % $._config,
        'for': '15m',
        labels: { severity: 'info' },
        annotations: {
          summary: 'thread-observer sees DNS sends it cannot count.',
        } + description(|||
          {{ printf "%.0f" $value }} sends to port 53 in 10 minutes on {{ $labels.instance }} went
          out on TCP streams written before their process was watched: dns_queries_total of
          its targets is low.
        |||),
      },
    ],
  },

  local config = $._config {
    getaddrinfoFailingRatio: $._config.getaddrinfoFailingPercent / 100,
  },
  // Each alert's section of docs/runbook.md: its name in lower case is the anchor.
  local withRunbook(rule) = rule {
    annotations+: {
      runbook_url: '%s%s#%s' % [
        $._config.runbookURLBase,
        $._config.runbookPath,
        std.asciiLower(rule.alert),
      ],
    },
  },

  prometheusAlerts+:: {
    groups+: [
      group { rules: std.map(withRunbook, group.rules) }
      for group in [targets, observers]
    ],
  },
}
