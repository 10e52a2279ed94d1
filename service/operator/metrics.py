"""Prometheus metrics read from the database at scrape time, so every process reports the same truth.

A scrape stays cheap on a large database: totals come from the maintained counts (service/core/counts.py),
and the rest are index ranges over small sets (due enrollments, waiting messages, the last day's signups,
the last hour's passes)."""
from __future__ import annotations

from datetime import timedelta

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.core import counts as maintained
from service.core.db import utcnow
from service.core.models import (
    MESSAGE_STATUSES,
    SUBSCRIBER_STATUSES,
    Consent,
    DispatchPass,
    Enrollment,
    Message,
)
from service.dispatch.sending_pause import paused_reason


def _scalars(s: Session, now):
    """Every single-number figure in one round trip (scalar subqueries), each an index range."""
    pending = Message.status.in_(("queued", "deferred"))
    since = now - timedelta(hours=1)
    last = select(DispatchPass).order_by(DispatchPass.started_at.desc(), DispatchPass.id.desc()).limit(1).subquery()
    figures = {
        "due": select(func.count()).select_from(Enrollment).where(Enrollment.status == "active",
                                                                  Enrollment.next_due_at <= now),
        "oldest": select(func.min(Message.next_attempt_at)).where(pending),
        "ready": select(func.count()).select_from(Message).where(pending, Message.next_attempt_at <= now),
        "waiting": select(func.count()).select_from(Message).where(pending),
        "signups_24h": select(func.count()).select_from(Consent).where(
            Consent.created_at > now - timedelta(hours=24)),
        "passes": select(func.count()).select_from(DispatchPass).where(DispatchPass.started_at > since),
        "pass_sum": select(func.sum(DispatchPass.duration_seconds)).where(DispatchPass.started_at > since),
        "pass_max": select(func.max(DispatchPass.duration_seconds)).where(DispatchPass.started_at > since),
        "last_started": select(last.c.started_at),
        "last_duration": select(last.c.duration_seconds),
    }
    return s.execute(select(*(q.scalar_subquery().label(name) for name, q in figures.items()))).one()


class _DatabaseCollector:
    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self):
        s = self.session
        now = utcnow()
        one = _scalars(s, now)
        totals = maintained.totals(s)
        messages = GaugeMetricFamily("drip_messages", "Messages by status", labels=["status"])
        counts = totals["messages"]
        for status in MESSAGE_STATUSES:
            messages.add_metric([status], counts.get(status, 0))
        yield messages
        subs = GaugeMetricFamily("drip_subscribers", "Subscribers by status", labels=["status"])
        counts = totals["subscribers"]
        for status in SUBSCRIBER_STATUSES:
            subs.add_metric([status], counts.get(status, 0))
        yield subs
        yield GaugeMetricFamily("drip_enrollments_due", "Enrollments whose next step is due now", value=one.due or 0)
        paused = 1 if paused_reason(s) else 0
        yield GaugeMetricFamily("drip_sending_paused", "1 while sending is paused (drip sending resume)", value=paused)
        oldest = one.oldest
        lag = max(0.0, (now - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily("drip_queue_lag_seconds", "Age of the oldest message waiting to be sent", value=lag)
        signups = GaugeMetricFamily("drip_signups", "Signups recorded (consent records), by campaign",
                                    labels=["campaign"])
        for campaign, n in sorted(totals["signups"].items()):
            signups.add_metric([campaign], n)
        yield signups
        yield GaugeMetricFamily("drip_signups_last_24h", "Signups in the last 24 hours", value=one.signups_24h or 0)
        depth = GaugeMetricFamily("drip_queue_depth", "Messages waiting: ready to send now, or waiting for a retry",
                                  labels=["state"])
        depth.add_metric(["ready"], one.ready or 0)
        depth.add_metric(["waiting"], (one.waiting or 0) - (one.ready or 0))
        yield depth
        yield GaugeMetricFamily("drip_passes_last_hour", "Dispatch passes finished in the last hour (all workers)",
                                value=one.passes or 0)
        yield GaugeMetricFamily("drip_pass_duration_seconds_sum_last_hour",
                                "Total time spent in dispatch passes in the last hour",
                                value=float(one.pass_sum or 0.0))
        yield GaugeMetricFamily("drip_pass_duration_seconds_max_last_hour",
                                "Longest dispatch pass in the last hour", value=float(one.pass_max or 0.0))
        yield GaugeMetricFamily("drip_last_pass_duration_seconds", "Duration of the most recent pass (any worker)",
                                value=float(one.last_duration or 0.0))
        started = one.last_started
        yield GaugeMetricFamily("drip_last_pass_age_seconds", "Seconds since the most recent pass started",
                                value=max(0.0, (now - started).total_seconds()) if started else 0.0)


def render_metrics(session: Session) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(session))
    return generate_latest(registry), CONTENT_TYPE_LATEST
