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


class _DatabaseCollector:
    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self):
        s = self.session
        messages = GaugeMetricFamily("drip_messages", "Messages by status", labels=["status"])
        counts = maintained.message_status_counts(s)
        for status in MESSAGE_STATUSES:
            messages.add_metric([status], counts.get(status, 0))
        yield messages
        subs = GaugeMetricFamily("drip_subscribers", "Subscribers by status", labels=["status"])
        counts = maintained.subscriber_counts(s)
        for status in SUBSCRIBER_STATUSES:
            subs.add_metric([status], counts.get(status, 0))
        yield subs
        due = s.scalar(select(func.count()).select_from(Enrollment).where(
            Enrollment.status == "active", Enrollment.next_due_at <= utcnow())) or 0
        yield GaugeMetricFamily("drip_enrollments_due", "Enrollments whose next step is due now", value=due)
        paused = 1 if paused_reason(s) else 0
        yield GaugeMetricFamily("drip_sending_paused", "1 while sending is paused (drip sending resume)", value=paused)
        oldest = s.scalar(select(func.min(Message.next_attempt_at)).where(Message.status.in_(("queued", "deferred"))))
        lag = max(0.0, (utcnow() - oldest).total_seconds()) if oldest else 0.0
        yield GaugeMetricFamily("drip_queue_lag_seconds", "Age of the oldest message waiting to be sent", value=lag)
        yield from self._signups_queue_and_passes(s)

    def _signups_queue_and_passes(self, s: Session):
        """Signups, queue depth and pass durations, all read from the database."""
        now = utcnow()
        signups = GaugeMetricFamily("drip_signups", "Signups recorded (consent records), by campaign",
                                    labels=["campaign"])
        for campaign, n in sorted(maintained.signup_counts(s).items()):
            signups.add_metric([campaign], n)
        yield signups
        recent = s.scalar(select(func.count()).select_from(Consent).where(
            Consent.created_at > now - timedelta(hours=24))) or 0
        yield GaugeMetricFamily("drip_signups_last_24h", "Signups in the last 24 hours", value=recent)
        depth = GaugeMetricFamily("drip_queue_depth", "Messages waiting: ready to send now, or waiting for a retry",
                                  labels=["state"])
        pending = (Message.status.in_(("queued", "deferred")))
        ready = s.scalar(select(func.count()).select_from(Message).where(pending, Message.next_attempt_at <= now)) or 0
        total = s.scalar(select(func.count()).select_from(Message).where(pending)) or 0
        depth.add_metric(["ready"], ready)
        depth.add_metric(["waiting"], total - ready)
        yield depth
        yield from self._passes(s, now)

    def _passes(self, s: Session, now):
        since = now - timedelta(hours=1)
        count, total, peak = s.execute(select(func.count(), func.sum(DispatchPass.duration_seconds),
                                              func.max(DispatchPass.duration_seconds))
                                       .where(DispatchPass.started_at > since)).one()
        last = s.execute(select(DispatchPass.started_at, DispatchPass.duration_seconds)
                         .order_by(DispatchPass.started_at.desc(), DispatchPass.id.desc()).limit(1)).first()
        yield GaugeMetricFamily("drip_passes_last_hour", "Dispatch passes finished in the last hour (all workers)",
                                value=count or 0)
        yield GaugeMetricFamily("drip_pass_duration_seconds_sum_last_hour",
                                "Total time spent in dispatch passes in the last hour", value=float(total or 0.0))
        yield GaugeMetricFamily("drip_pass_duration_seconds_max_last_hour",
                                "Longest dispatch pass in the last hour", value=float(peak or 0.0))
        yield GaugeMetricFamily("drip_last_pass_duration_seconds", "Duration of the most recent pass (any worker)",
                                value=float(last[1]) if last else 0.0)
        yield GaugeMetricFamily("drip_last_pass_age_seconds", "Seconds since the most recent pass started",
                                value=max(0.0, (now - last[0]).total_seconds()) if last else 0.0)


def render_metrics(session: Session) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(session))
    return generate_latest(registry), CONTENT_TYPE_LATEST
