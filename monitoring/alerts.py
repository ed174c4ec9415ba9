"""An Alertmanager-compatible alert receiver: what Prometheus sends, kept for the dashboard and
forwarded to a webhook.

Prometheus posts batches of alerts to ``POST /api/v2/alerts`` of each configured Alertmanager
(``alerting.alertmanagers``; the dashboard listens there): a JSON list of objects with
``labels``, ``annotations``, ``startsAt``, ``endsAt`` and ``generatorURL``. Prometheus re-sends
a firing alert periodically with ``endsAt`` a few minutes ahead and sends it once more with
``endsAt`` in the past when it resolves, so an alert is *firing* while ``endsAt`` is in the future
(or unset) and *resolved* after. Alerts are identified by their label set.

:class:`AlertStore` keeps the most recent alerts (bounded); :class:`WebhookForwarder` POSTs each
received batch, as an Alertmanager-style webhook payload (``version`` 4), to
``monitoring.alert_webhook`` from its own thread with a timeout: a slow or dead webhook never
blocks the HTTP server, and errors are logged and counted.
"""

from __future__ import annotations

import logging
import queue
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

log = logging.getLogger(__name__)

FIRING = "firing"
RESOLVED = "resolved"
# Go's zero time: what Alertmanager clients send for "no end yet"
_ZERO_TIME_PREFIX = "0001-01-01"
_RFC3339 = re.compile(
    r"^(\d{4}-\d{2}-\d{2}[T ]\d{2}:\d{2}:\d{2})(?:\.(\d+))?(Z|[+-]\d{2}:?\d{2})?$", re.IGNORECASE
)


class AlertPayloadError(ValueError):
    """The body of ``POST /api/v2/alerts`` is not a list of alerts."""


def parse_time(value: str) -> float | None:
    """RFC 3339 (nanosecond fractions allowed, as Go writes them) -> epoch seconds; None when
    empty, Go's zero time or unparsable."""
    if not value or value.startswith(_ZERO_TIME_PREFIX):
        return None
    match = _RFC3339.match(value.strip())
    if match is None:
        return None
    base, fraction, zone = match.groups()
    text = base.replace(" ", "T")
    if fraction:
        text += "." + fraction[:6].ljust(6, "0")
    if zone is None or zone.upper() == "Z":
        text += "+00:00"
    elif ":" not in zone:
        text += f"{zone[:3]}:{zone[3:]}"
    else:
        text += zone
    try:
        return datetime.fromisoformat(text).timestamp()
    except ValueError:
        return None


def format_time(epoch_s: float) -> str:
    return (
        datetime.fromtimestamp(epoch_s, UTC)
        .isoformat(timespec="milliseconds")
        .replace("+00:00", "Z")
    )


def _string_map(value: object, what: str) -> dict[str, str]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise AlertPayloadError(f"{what} must be an object of strings")
    return {str(k): "" if v is None else str(v) for k, v in value.items()}


@dataclass(frozen=True)
class Alert:
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    starts_at: str
    ends_at: str
    generator_url: str
    received_at: float  # epoch seconds, when this version of the alert arrived
    source: str = "receiver"  # receiver (pushed by Prometheus) | prometheus (its alerts API)
    state: str = ""  # the state Prometheus' API reports (firing | pending); "" from the receiver

    @property
    def fingerprint(self) -> str:
        return ",".join(f"{k}={v}" for k, v in sorted(self.labels.items()))

    @property
    def name(self) -> str:
        return self.labels.get("alertname", "")

    def status(self, now: float | None = None) -> str:
        if self.state:
            return self.state
        ends = parse_time(self.ends_at)
        now = time.time() if now is None else now
        return FIRING if ends is None or ends > now else RESOLVED

    def to_json(self, now: float | None = None) -> dict[str, Any]:
        return {
            "source": self.source,
            "status": self.status(now),
            "name": self.name,
            "severity": self.labels.get("severity", ""),
            "summary": self.annotations.get("summary") or self.annotations.get("description", ""),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "generatorURL": self.generator_url,
            "receivedAt": format_time(self.received_at),
        }

    def to_webhook(self, now: float | None = None) -> dict[str, Any]:
        """One entry of an Alertmanager webhook payload."""
        return {
            "status": self.status(now),
            "labels": dict(self.labels),
            "annotations": dict(self.annotations),
            "startsAt": self.starts_at,
            "endsAt": self.ends_at,
            "generatorURL": self.generator_url,
            "fingerprint": self.fingerprint,
        }


def parse_alerts(body: bytes, received_at: float | None = None) -> list[Alert]:
    """The alerts of one ``POST /api/v2/alerts`` body; AlertPayloadError when malformed."""
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as e:
        raise AlertPayloadError(f"not JSON: {e}") from None
    if not isinstance(data, list):
        raise AlertPayloadError("expected a JSON list of alerts")
    now = time.time() if received_at is None else received_at
    alerts = []
    for i, item in enumerate(data):
        if not isinstance(item, Mapping):
            raise AlertPayloadError(f"alert {i} is not an object")
        labels = _string_map(item.get("labels"), f"alert {i} labels")
        if not labels:
            raise AlertPayloadError(f"alert {i} has no labels")
        alerts.append(
            Alert(
                labels=labels,
                annotations=_string_map(item.get("annotations"), f"alert {i} annotations"),
                starts_at=str(item.get("startsAt") or ""),
                ends_at=str(item.get("endsAt") or ""),
                generator_url=str(item.get("generatorURL") or ""),
                received_at=now,
            )
        )
    return alerts


def from_prometheus_api(item: Mapping[str, Any], now: float | None = None) -> Alert:
    """One alert of Prometheus' ``GET /api/v1/alerts`` (``state``: pending | firing)."""
    return Alert(
        labels=_string_map(item.get("labels"), "labels"),
        annotations=_string_map(item.get("annotations"), "annotations"),
        starts_at=str(item.get("activeAt") or ""),
        ends_at="",
        generator_url="",
        received_at=time.time() if now is None else now,
        source="prometheus",
        state=str(item.get("state") or FIRING),
    )


class AlertStore:
    """The most recent alerts, one per label set, newest version wins; thread-safe."""

    def __init__(self, capacity: int = 200) -> None:
        self.capacity = capacity
        self._alerts: OrderedDict[str, Alert] = OrderedDict()
        self._lock = threading.Lock()
        self.received = 0  # alerts received in total (every version)

    def add(self, alerts: Sequence[Alert]) -> None:
        with self._lock:
            for alert in alerts:
                self._alerts.pop(alert.fingerprint, None)
                self._alerts[alert.fingerprint] = alert
                self.received += 1
            while len(self._alerts) > self.capacity:
                self._alerts.popitem(last=False)

    def recent(self, limit: int = 50, now: float | None = None) -> list[Alert]:
        """Firing first, then resolved; newest first within each."""
        now = time.time() if now is None else now
        with self._lock:
            alerts = list(reversed(self._alerts.values()))
        alerts.sort(key=lambda a: a.status(now) != FIRING)  # stable: keeps newest first
        return alerts[:limit]


class WebhookForwarder:
    """POSTs alert batches to a URL from a background thread (bounded queue, timeout)."""

    def __init__(self, url: str, timeout_s: float = 5.0, max_pending: int = 100) -> None:
        self.url = url
        self.timeout_s = timeout_s
        self.sent = 0
        self.failed = 0
        self.dropped = 0
        self._queue: queue.Queue[dict[str, Any] | None] = queue.Queue(maxsize=max_pending)
        self._thread = threading.Thread(target=self._run, name="alert-webhook", daemon=True)
        self._thread.start()

    @staticmethod
    def payload(alerts: Sequence[Alert], now: float | None = None) -> dict[str, Any]:
        """An Alertmanager webhook body (``version`` 4) for one received batch."""
        now = time.time() if now is None else now
        entries = [a.to_webhook(now) for a in alerts]
        firing = any(e["status"] == FIRING for e in entries)
        common: dict[str, str] = {}
        if alerts:
            common = dict(alerts[0].labels)
            for alert in alerts[1:]:
                common = {k: v for k, v in common.items() if alert.labels.get(k) == v}
        return {
            "version": "4",
            "receiver": "tickflow-dashboard",
            "status": FIRING if firing else RESOLVED,
            "alerts": entries,
            "groupLabels": {},
            "commonLabels": common,
            "commonAnnotations": {},
            "externalURL": "",
            "truncatedAlerts": 0,
        }

    def submit(self, alerts: Sequence[Alert]) -> bool:
        """Queue one batch; False (logged, counted) when the queue is full."""
        if not alerts:
            return True
        try:
            self._queue.put_nowait(self.payload(alerts))
            return True
        except queue.Full:
            self.dropped += 1
            log.warning("alert webhook %s is behind: dropped a batch of %d", self.url, len(alerts))
            return False

    def _post(self, body: dict[str, Any]) -> None:
        request = urllib.request.Request(
            self.url,
            data=orjson.dumps(body),
            headers={"Content-Type": "application/json", "User-Agent": "tickflow-dashboard"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=self.timeout_s) as response:
            response.read()

    def _run(self) -> None:
        while True:
            body = self._queue.get()
            try:
                if body is None:
                    return
                self._post(body)
                self.sent += 1
            except Exception as e:  # the webhook's failure must never stop the receiver
                self.failed += 1
                log.error("alert webhook %s failed: %s", self.url, e)
            finally:
                self._queue.task_done()

    def flush(self, timeout_s: float = 10.0) -> bool:
        """Wait until every queued batch was tried; False on timeout."""
        deadline = time.monotonic() + timeout_s
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout_s: float = 2.0) -> None:
        try:
            self._queue.put(None, timeout=timeout_s)
        except queue.Full:
            return
        self._thread.join(timeout_s)


class AlertReceiver:
    """``POST /api/v2/alerts``: store the batch and forward it."""

    def __init__(self, store: AlertStore, forwarder: WebhookForwarder | None = None) -> None:
        self.store = store
        self.forwarder = forwarder

    def receive(self, body: bytes) -> list[Alert]:
        alerts = parse_alerts(body)
        self.store.add(alerts)
        if self.forwarder is not None:
            self.forwarder.submit(alerts)
        for alert in alerts:
            log.info(
                "alert %s %s %s",
                alert.name,
                alert.status(),
                alert.annotations.get("summary", ""),
            )
        return alerts

    def close(self) -> None:
        if self.forwarder is not None:
            self.forwarder.close()
