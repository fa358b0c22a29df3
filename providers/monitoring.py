"""Cloud Monitoring, read only: the latest value of a metric for many resources in one request.

What a plan quotes when it gates the deletion or replacement of a data-holding resource
(`providers.base.LossReporter`): a subscription's backlog is not part of the Pub/Sub admin API,
only of its metrics (``pubsub.googleapis.com/subscription/num_undelivered_messages``, sampled
every 60 s and visible up to ~2 minutes later, so the number is "about").

One ``projects.timeSeries.list`` per metric for up to `MAX_IDS` resources (``one_of`` in the
filter), over the last `WINDOW_S` seconds, through the REST API with Application Default
Credentials (``google.auth``: no client library; this module imports no ``google.cloud``).
It only ever enriches a message: any failure (no permission ``monitoring.timeSeries.list``,
API disabled, a timeout) is logged and reported as "no value", never raised into a plan.

Verified here against a local HTTP endpoint that answers as the REST reference documents
(tests/providers/test_pubsub_backlog.py); verified only on the real service: the filter syntax
accepted, and how soon after publishing a backlog shows.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection
from typing import Any

log = logging.getLogger(__name__)

ENDPOINT = "https://monitoring.googleapis.com/v3"
WINDOW_S = 10 * 60  # metrics are sampled every minute and may lag a few: look back ten
MAX_IDS = 100  # values of one one_of(...) in a filter
TIMEOUT_S = 20.0


class CloudMonitoring:
    """Latest metric values of one project. ``session`` is a requests-like session (default: an
    ``AuthorizedSession`` with Application Default Credentials); ``endpoint`` for tests."""

    def __init__(self, project: str, *, endpoint: str = ENDPOINT, session: Any = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)) -> None:
        self.project = project
        self.endpoint = endpoint.rstrip("/")
        self._session = session
        self._clock = clock
        self.requests = 0

    def latest(self, metric: str, resource_type: str, label: str, ids: Collection[str]) -> dict[str, int]:
        """``{resource id: latest value}`` of ``metric`` for the resources of ``resource_type`` whose
        ``label`` is one of ``ids``; ids without a recent point are left out (also on any error)."""
        values: dict[str, int] = {}
        wanted = sorted(set(ids))
        for start in range(0, len(wanted), MAX_IDS):
            chunk = wanted[start:start + MAX_IDS]
            try:
                values.update(self._query(metric, resource_type, label, chunk))
            except Exception as exc:  # noqa: BLE001 - enrichment only: never fail a plan on it
                log.warning("cloud monitoring: cannot read %s (%s: %s); reported as unknown", metric,
                            type(exc).__name__, str(exc)[:200])
        return values

    def _query(self, metric: str, resource_type: str, label: str, ids: list[str]) -> dict[str, int]:
        end = self._clock()
        begin = end - dt.timedelta(seconds=WINDOW_S)
        quoted = ", ".join(f'"{value}"' for value in ids)
        params: dict[str, str] = {
            "filter": (f'metric.type = "{metric}" AND resource.type = "{resource_type}" '
                       f"AND resource.label.{label} = one_of({quoted})"),
            "interval.startTime": begin.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "interval.endTime": end.isoformat(timespec="seconds").replace("+00:00", "Z"),
            "view": "FULL",
        }
        values: dict[str, int] = {}
        url = f"{self.endpoint}/projects/{self.project}/timeSeries"
        while True:
            self.requests += 1
            response = self._http().get(url, params=params, timeout=TIMEOUT_S)
            response.raise_for_status()
            body = response.json()
            for series in body.get("timeSeries", []):
                resource_id = (series.get("resource", {}).get("labels") or {}).get(label)
                points = series.get("points") or []
                if resource_id is None or not points:
                    continue
                value = points[0].get("value", {})  # points are newest first
                number = value.get("int64Value", value.get("doubleValue"))
                if number is not None:
                    values[resource_id] = int(float(number))
            token = body.get("nextPageToken")
            if not token:
                return values
            params["pageToken"] = token

    def _http(self) -> Any:
        if self._session is None:
            import google.auth
            from google.auth.transport.requests import AuthorizedSession

            credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/monitoring.read"])
            self._session = AuthorizedSession(credentials)
        return self._session
