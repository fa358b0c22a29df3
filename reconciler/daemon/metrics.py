"""Prometheus metrics of the daemon, served on ``GET /metrics``.

Every daemon owns its registry (no process-global default registry), so two daemons in one
process - the tests do that - keep separate numbers. Labels stay low-cardinality: kinds,
actions, results, services, methods and codes; never resource names. The one exception by
design is ``headwater_revision_info{revision}``, which has exactly one series at a time.

==========================================  ==============================================
``headwater_reconcile_total{result}``        sync passes by result: converged, blocked,
                                             failed, interrupted, invalid, refused,
                                             observe_only, suspended, error
``headwater_reconcile_duration_seconds``     histogram of sync passes that planned
``headwater_drift_checks_total{result}``     drift passes: in_sync, drifted, healed, error
``headwater_resources{kind,state}``          declared resources by state: in_sync, drifted,
                                             missing, blocked (last observation)
``headwater_drift_resources{kind}``          drifted + missing, per kind (last observation)
``headwater_apply_operations_total``         ``{kind,action,result}``: every change applied
``headwater_api_requests_total``             ``{service,method,code}``: every GCP API attempt
``headwater_plans_total{mode}``               plans made: full (every kind observed),
                                             incremental (only what a commit touches read),
                                             recheck (after an apply: what was applied read)
``headwater_observe_calls_total{call}``       provider calls of those plans: observe (a kind,
                                             listed whole), read (a kind's resources by name)
``headwater_last_sync_timestamp_seconds``    end of the last successful sync (unix time)
``headwater_revision_info{revision}``        1 for the revision being served
``headwater_head_valid``                     0 while the branch head is an invalid revision
``headwater_lock_held``                      1 while this daemon holds the applier lease
``headwater_ready``                          1 after the first successful observe
``headwater_alerts_total{target,result}``    alert deliveries
``headwater_webhook_requests_total{result}`` accepted, ignored, replayed, unauthorized,
                                             bad_request, too_large, timeout, busy
``headwater_source_health{source,state}``    1 for the source's health state, 0 for the others
                                             (healthy, progressing, degraded, missing, unknown)
``headwater_source_freshness_seconds``       ``{source}``: age of the newest ingested record
``headwater_source_last_record_timestamp_seconds``  ``{source}``: when it was ingested
``headwater_source_sla_seconds{source}``     the source's freshness SLA (sources with one)
``headwater_source_dead_letters{source}``    dead letters held by ``<source>-dlq-hold``
==========================================  ==============================================
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from reconciler.resources import Kind

RESOURCE_STATES = ("in_sync", "drifted", "missing", "blocked")
HEALTH_STATES = ("healthy", "progressing", "degraded", "missing", "unknown")
DURATION_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        self.reconcile = Counter("headwater_reconcile_total", "Sync passes by result", ["result"], registry=r)
        self.reconcile_duration = Histogram("headwater_reconcile_duration_seconds",
                                            "Duration of sync passes that planned (fetch, validate, plan, apply)",
                                            buckets=DURATION_BUCKETS, registry=r)
        self.drift_checks = Counter("headwater_drift_checks_total", "Drift passes by result", ["result"], registry=r)
        self.resources = Gauge("headwater_resources", "Declared resources by state at the last observation",
                               ["kind", "state"], registry=r)
        self.drift_resources = Gauge("headwater_drift_resources",
                                     "Declared resources drifted or missing at the last observation", ["kind"],
                                     registry=r)
        self.apply_operations = Counter("headwater_apply_operations_total", "Changes applied",
                                        ["kind", "action", "result"], registry=r)
        self.api_requests = Counter("headwater_api_requests_total", "GCP API attempts",
                                    ["service", "method", "code"], registry=r)
        # Incremental convergence (issue 14, reconciler/incremental.py).
        self.plans = Counter("headwater_plans_total", "Plans by mode: full, incremental, recheck", ["mode"],
                             registry=r)
        self.observe_calls = Counter("headwater_observe_calls_total",
                                     "Provider calls of plans: observe (a kind whole), read (by name)", ["call"],
                                     registry=r)
        self.last_sync = Gauge("headwater_last_sync_timestamp_seconds",
                               "Unix time of the end of the last successful sync", registry=r)
        self.revision_info = Gauge("headwater_revision_info", "The revision being served (value 1)",
                                   ["revision"], registry=r)
        self.head_valid = Gauge("headwater_head_valid", "0 while the branch head is an invalid revision",
                                registry=r)
        self.lock_held = Gauge("headwater_lock_held", "1 while this daemon holds the applier lease", registry=r)
        self.ready = Gauge("headwater_ready", "1 after the first successful observe", registry=r)
        self.alerts = Counter("headwater_alerts_total", "Alert deliveries", ["target", "result"], registry=r)
        self.webhook_requests = Counter("headwater_webhook_requests_total", "POST /webhook requests by result",
                                        ["result"], registry=r)
        # Health (issue 11, reconciler/daemon/health_loop.py): one series per source (and state),
        # never per resource or error text; a source that is gone loses its series.
        self.source_health = Gauge("headwater_source_health", "1 for the source's health state (one-hot)",
                                   ["source", "state"], registry=r)
        self.source_freshness = Gauge("headwater_source_freshness_seconds",
                                      "Age of the source's newest ingested record", ["source"], registry=r)
        self.source_last_record = Gauge("headwater_source_last_record_timestamp_seconds",
                                        "Unix time the source's newest record was ingested", ["source"], registry=r)
        self.source_sla = Gauge("headwater_source_sla_seconds", "The source's freshness SLA", ["source"], registry=r)
        self.source_dead_letters = Gauge("headwater_source_dead_letters",
                                         "Dead letters held by the source's dead-letter subscription", ["source"],
                                         registry=r)
        self.head_valid.set(1)
        for kind in Kind:
            self.drift_resources.labels(str(kind)).set(0)
            for state in RESOURCE_STATES:
                self.resources.labels(str(kind), state).set(0)

    def set_resources(self, counts: dict[tuple[str, str], int], drift: dict[str, int]) -> None:
        """Replace the resource gauges with one observation (every kind and state, zeros included)."""
        for kind in Kind:
            self.drift_resources.labels(str(kind)).set(drift.get(str(kind), 0))
            for state in RESOURCE_STATES:
                self.resources.labels(str(kind), state).set(counts.get((str(kind), state), 0))

    def set_source_health(self, sources: Iterable[Any]) -> None:
        """Replace the per-source gauges with one health check (`reconciler.health.SourceHealth`
        values). A value that could not be observed has no sample."""
        for gauge in (self.source_health, self.source_freshness, self.source_last_record, self.source_sla,
                      self.source_dead_letters):
            gauge.clear()
        for source in sources:
            sid = source.source_id
            for state in HEALTH_STATES:
                self.source_health.labels(sid, state).set(1 if str(source.health).lower() == state else 0)
            freshness, dead = source.freshness, source.dead_letters
            if freshness.age_seconds is not None:
                self.source_freshness.labels(sid).set(freshness.age_seconds)
            if freshness.last_record_at is not None:
                self.source_last_record.labels(sid).set(freshness.last_record_at)
            if freshness.sla_seconds is not None:
                self.source_sla.labels(sid).set(freshness.sla_seconds)
            if dead.backlog is not None:
                self.source_dead_letters.labels(sid).set(dead.backlog)

    def set_revision(self, revision: str | None) -> None:
        self.revision_info.clear()
        if revision:
            self.revision_info.labels(revision).set(1)

    def api_request(self, service: str, method: str, code: str) -> None:
        self.api_requests.labels(service, method, code).inc()

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
