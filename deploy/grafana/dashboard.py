"""Generates deploy/grafana/herald.json, Herald's Grafana dashboard, with the Grafana
Foundation SDK (``grafana-foundation-sdk``, in setup.cfg's ``test`` extra).

    .venv/bin/python deploy/grafana/dashboard.py          # rewrite herald.json
    .venv/bin/python deploy/grafana/dashboard.py --check  # exit 1 if herald.json is stale

The JSON is committed so an operator imports it without Python (docs/operations.md);
tests/test_prometheus.py checks it is what this file generates and that every query in
it returns data from a real Prometheus scraping a real Herald.

Aggregation follows core/health.py: queue depth and executions ended are the same in
every process (``max``); workers, connections and counters are per process (``sum``).
"""

from __future__ import annotations

import json
import os
import sys

from grafana_foundation_sdk.builders import dashboard, prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models.dashboard import DataSourceRef, VariableRefresh

HERE = os.path.dirname(os.path.abspath(__file__))
OUTPUT = os.path.join(HERE, "herald.json")
DATASOURCE = DataSourceRef(type_val="prometheus", uid="${datasource}")
#: Every panel's selector: the job and the processes picked at the top of the dashboard.
SEL = 'job="$job", instance=~"$instance"'


def rate(metric: str, by: str = "") -> str:
    """Per-second rate of a counter over the panel's interval, summed over processes."""
    group = f" by ({by})" if by else ""
    return f"sum{group} (rate({metric}{{{SEL}}}[$__rate_interval]))"


def quantile(q: float, histogram: str, by: str = "") -> str:
    """The ``q`` quantile of a histogram across processes (and per ``by``)."""
    group = ", ".join(["le", by] if by else ["le"])
    return f"histogram_quantile({q}, sum by ({group}) (rate({histogram}_bucket{{{SEL}}}[$__rate_interval])))"


#: (title, unit, [(PromQL, legend)], description) per time-series panel, in reading order.
TIMESERIES: list[tuple[str, str, list[tuple[str, str]], str]] = [
    (
        "Open connections by transport",
        "short",
        [(f"sum by (transport) (herald_connections{{{SEL}}})", "{{transport}}")],
        "Streams, feeds and worker sockets open now, all processes together.",
    ),
    (
        "Events published and delivered per second",
        "ops",
        [
            (rate("herald_events_published_total"), "published"),
            (rate("herald_events_delivered_total", "transport"), "delivered {{transport}}"),
        ],
        "Published: events stored. Delivered: events written to subscribers (one per subscriber).",
    ),
    (
        "Store-ack to client write, p50 and p99",
        "s",
        [
            (quantile(0.5, "herald_publish_to_deliver_seconds", "transport"), "p50 {{transport}}"),
            (quantile(0.99, "herald_publish_to_deliver_seconds", "transport"), "p99 {{transport}}"),
        ],
        "From the store's timestamp of an event to the write to the last subscriber of a fan-out. "
        "Alert: p99 over 500 ms.",
    ),
    (
        "Connections opened, refused and closed",
        "ops",
        [
            (rate("herald_connections_opened_total", "transport"), "opened {{transport}}"),
            (rate("herald_connections_refused_total", "reason"), "refused {{reason}}"),
            (rate("herald_connections_closed_total", "reason"), "closed {{reason}}"),
        ],
        "Refusal reasons: unauthorized, forbidden, not_found, bad_request, too_many_connections, subject_limit, "
        "draining. Close reasons: normal, client, slow, expired, heartbeat, drain, error.",
    ),
    (
        "Resumes and replay",
        "s",
        [
            (quantile(0.99, "herald_replay_seconds"), "replay p99"),
            (rate("herald_resumes_total", "outcome"), "resumes/s {{outcome}}"),
        ],
        "A resume catches up from memory, from the store, or with a reset (retention dropped what it missed).",
    ),
    (
        "Events per resume, p50 and p99",
        "short",
        [
            (quantile(0.5, "herald_replay_events"), "p50"),
            (quantile(0.99, "herald_replay_events"), "p99"),
        ],
        "How much a reconnecting client had missed.",
    ),
    (
        "Auth check time, p99",
        "s",
        [(quantile(0.99, "herald_auth_check_seconds"), "p99")],
        "Time to verify a token and authorise a request or connection.",
    ),
    (
        "Publishes refused",
        "ops",
        [(rate("herald_publish_refused_total", "reason"), "{{reason}}")],
        "By error code: rate_limited, event_too_large, stream_closed, ...",
    ),
    (
        "Queues: waiting executions and workers",
        "short",
        [
            (f"max by (queue) (herald_queue_depth{{{SEL}}})", "waiting {{queue}}"),
            (f"sum by (queue) (herald_queue_workers{{{SEL}}})", "workers {{queue}}"),
        ],
        "Alert: executions waiting on a queue with no worker for 2 minutes.",
    ),
    (
        "Store and broker round-trip time",
        "s",
        [
            (f"herald_store_rtt_seconds{{{SEL}}}", "store {{instance}}"),
            (f"herald_broker_rtt_seconds{{{SEL}}}", "broker {{instance}}"),
        ],
        "The probe's ping every 2 s. No point: the ping failed (see the up panels).",
    ),
    (
        "Executions ended",
        "ops",
        [
            (
                f"max without (instance) (rate(herald_executions_ended_total{{{SEL}}}[$__rate_interval]))",
                "{{outcome}} {{error_type}}",
            )
        ],
        "Every process counts every execution's end, so this takes the max across processes.",
    ),
]

#: (title, PromQL, unit) per stat panel along the top.
STATS: list[tuple[str, str, str]] = [
    ("Processes up", f"sum(up{{{SEL}}})", "short"),
    ("Store up", f"min(herald_store_up{{{SEL}}})", "bool_yes_no"),
    ("Broker up", f"min(herald_broker_up{{{SEL}}})", "bool_yes_no"),
    ("Open connections", f"sum(herald_connections{{{SEL}}})", "short"),
    ("Delivered / s", rate("herald_events_delivered_total"), "ops"),
    ("p99 deliver", quantile(0.99, "herald_publish_to_deliver_seconds"), "s"),
]


def build() -> dict:
    """The dashboard as Grafana's JSON model (a dict)."""
    board = (
        dashboard.Dashboard("Herald")
        .uid("herald")
        .description("Herald: connections, throughput, delivery latency, resumes, queues, store and broker")
        .tags(["herald"])
        .refresh("30s")
        .time("now-1h", "now")
        .timezone("browser")
        .with_variable(dashboard.DatasourceVariable("datasource").label("Prometheus").type("prometheus"))
        .with_variable(
            dashboard.QueryVariable("job")
            .label("Job")
            .datasource(DATASOURCE)
            .query("label_values(herald_build_info, job)")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
        .with_variable(
            dashboard.QueryVariable("instance")
            .label("Process")
            .datasource(DATASOURCE)
            .query('label_values(herald_build_info{job="$job"}, instance)')
            .multi(True)
            .include_all(True)
            .all_value(".*")
            .refresh(VariableRefresh.ON_TIME_RANGE_CHANGED)
        )
    )
    for title, expr, unit in STATS:
        board = board.with_panel(
            stat.Panel()
            .title(title)
            .datasource(DATASOURCE)
            .unit(unit)
            .height(4)
            .span(4)
            .with_target(prometheus.Dataquery().expr(expr).instant().ref_id("A"))
        )
    for title, unit, queries, description in TIMESERIES:
        panel = (
            timeseries.Panel()
            .title(title)
            .description(description)
            .datasource(DATASOURCE)
            .unit(unit)
            .min(0)
            .height(8)
            .span(12)
            .fill_opacity(10)
        )
        for ref, (expr, legend) in zip("ABCDEFGH", queries, strict=False):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        board = board.with_panel(panel)
    return json.loads(json.dumps(board.build(), cls=JSONEncoder))


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        with open(OUTPUT) as fh:
            if fh.read() != text:
                print(f"{OUTPUT} is stale: run deploy/grafana/dashboard.py", file=sys.stderr)
                return 1
        return 0
    with open(OUTPUT, "w") as fh:
        fh.write(text)
    print("wrote", OUTPUT)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
