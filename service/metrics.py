"""Prometheus metrics read from the database at scrape time, so every process reports the same truth."""
from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from .db import utcnow
from .models import MESSAGE_STATUSES, SUBSCRIBER_STATUSES, Enrollment, Message, Subscriber
from .sending import paused_reason


class _DatabaseCollector:
    def __init__(self, session: Session) -> None:
        self.session = session

    def collect(self):  # noqa: ANN201
        s = self.session
        messages = GaugeMetricFamily("drip_messages", "Messages by status", labels=["status"])
        counts = dict(s.execute(select(Message.status, func.count()).group_by(Message.status)).all())
        for status in MESSAGE_STATUSES:
            messages.add_metric([status], counts.get(status, 0))
        yield messages
        subs = GaugeMetricFamily("drip_subscribers", "Subscribers by status", labels=["status"])
        counts = dict(s.execute(select(Subscriber.status, func.count()).group_by(Subscriber.status)).all())
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


def render_metrics(session: Session) -> tuple[bytes, str]:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_DatabaseCollector(session))
    return generate_latest(registry), CONTENT_TYPE_LATEST
