"""The tables. Typed SQLAlchemy 2.0 models with a constraint naming convention.

Invariants held by the database itself:
- one subscriber per normalised address (`uq_subscribers_email`);
- one enrollment per (subscriber, campaign);
- one message per (enrollment, step) (`uq_messages_enrollment_id_step_key`): a step is never queued twice;
- one suppression per address hash; provider event ids are unique, so a replayed webhook applies once.
"""
from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    CheckConstraint,
    Date,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

MESSAGE_STATUSES = (
    "queued", "sending", "sent", "deferred", "failed", "bounced", "suppressed", "delivered", "complained",
)
SUBSCRIBER_STATUSES = ("active", "unsubscribed", "bounced", "complained")
ENROLLMENT_STATUSES = ("active", "completed", "stopped")


# The largest id a BIGINT holds: ids from URLs or arguments above it are not looked up (PostgreSQL would raise).
MAX_ID = 2**63 - 1


class UTCDateTime(TypeDecorator):
    """Timezone-aware UTC in Python on every backend (SQLite stores naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; Drip stores UTC-aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value, dialect):
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


_PENDING = "status IN ('queued', 'deferred', 'sending')"
_DUE = "status = 'active' AND next_due_at IS NOT NULL"
_LEFT = "unsubscribed_after_step IS NOT NULL"
_CONTINUED = "origin_campaign IS NOT NULL"
_NOT_NULL_MESSAGE_ID = text("message_id IS NOT NULL")
_UNSUBSCRIBED_EVENT = text("type = 'unsubscribed'")
_NOT_NULL_PROVIDER_EVENT_ID = text("provider_event_id IS NOT NULL")
_NOT_NULL_PROVIDER_ID = text("provider_message_id IS NOT NULL")


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {datetime: UTCDateTime()}


class Subscriber(Base):
    __tablename__ = "subscribers"
    __table_args__ = (
        CheckConstraint(_in("status", SUBSCRIBER_STATUSES), name="status"),
        # The few snoozed readers, for dispatch.not_snoozed without a scan of the whole list
        Index("ix_subscribers_snoozed", "snoozed_until", postgresql_where=text("snoozed_until IS NOT NULL"),
              sqlite_where=text("snoozed_until IS NOT NULL")),
        # PostgreSQL: an address prefix (the console's address search) as an index range under any collation
        # (migration 0017_console_counts). SQLite needs none (the unique index on email_key is in binary
        # order and serves the same range), so there it is a partial index that can never hold an entry:
        # no page written per signup, and the schema is the same on both databases.
        Index("ix_subscribers_email_key_pattern", "email_key", postgresql_ops={"email_key": "text_pattern_ops"},
              sqlite_where=text("email_key IS NULL")),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    public_id: Mapped[str] = mapped_column(String(32), unique=True)
    email: Mapped[str] = mapped_column(String(320))
    # The address folded to lower case: mailbox providers ignore case, so one person is one subscriber.
    email_key: Mapped[str] = mapped_column(String(320), unique=True)
    name: Mapped[str] = mapped_column(String(200), default="")
    timezone: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    unsubscribed_at: Mapped[datetime | None]
    # The reader paused all their email until this moment (the dispatcher neither queues nor
    # claims their mail before it); None when not snoozed.
    snoozed_until: Mapped[datetime | None]

    enrollments: Mapped[list[Enrollment]] = relationship(back_populates="subscriber")


class Consent(Base):
    """Append-only evidence of how and when the reader agreed (GDPR art. 7(1))."""

    __tablename__ = "consents"
    # "Signups in the last 24 hours" on /metrics (migration 0017_console_counts).
    __table_args__ = (Index("ix_consents_created_at", "created_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    campaign: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    # "form", "json", "confirmed", "continuation" or "import:<file name>" (100 characters: room for a file name)
    source: Mapped[str] = mapped_column(String(100))
    source_url: Mapped[str | None] = mapped_column(String(2000))
    user_agent: Mapped[str | None] = mapped_column(String(500))
    ip: Mapped[str | None] = mapped_column(String(64))
    wording: Mapped[str] = mapped_column(Text)


class Enrollment(Base):
    """A subscriber's place in one campaign. `next_due_at` is set while the next step waits to be queued."""

    __tablename__ = "enrollments"
    __table_args__ = (
        UniqueConstraint("subscriber_id", "campaign"),
        CheckConstraint(_in("status", ENROLLMENT_STATUSES), name="status"),
        # What a pass reads: only active enrollments with a due time, in its ORDER BY (migration 0006_issue6). The
        # full (status, next_due_at) index it replaced is gone since migration 0013_lean_indexes.
        Index("ix_enrollments_due_active", "next_due_at", "id", postgresql_where=text(_DUE), sqlite_where=text(_DUE)),
        # The campaign page's "unsubscribed after this step": only readers who left (migration 0017_console_counts).
        Index("ix_enrollments_unsubscribed_after", "campaign", "unsubscribed_after_step",
              postgresql_where=text(_LEFT), sqlite_where=text(_LEFT)),
        # The home page's "joined from another lead magnet": only readers a continuation brought in, so it
        # does not read every enrollment once per campaign (migration 0019_forecast_store).
        Index("ix_enrollments_continued", "campaign", "id", postgresql_where=text(_CONTINUED),
              sqlite_where=text(_CONTINUED)),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    campaign: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="active")
    next_step: Mapped[int] = mapped_column(Integer, default=0)
    next_due_at: Mapped[datetime | None]
    # The moment `next_due_at` counts from (the previous step's send, or when the reader joined, continued,
    # switched or came back), so a time-zone change can recompute it by the same rule. None when the due
    # time is not a step's schedule (due at once after an operator's action, or a retry).
    due_from: Mapped[datetime | None]
    last_sent_at: Mapped[datetime | None]
    stopped_reason: Mapped[str | None] = mapped_column(String(64))
    # Set when the reader arrived here by continuing from another campaign (a lead magnet);
    # the footer's "why" names that campaign, which is the one they actually signed up for.
    origin_campaign: Mapped[str | None] = mapped_column(String(64))
    # The key of the step `next_step` pointed at when it was set, so `drip campaigns diff` can tell
    # a reader whose next step was removed or moved from the file (None: the campaign's first step).
    next_step_key: Mapped[str | None] = mapped_column(String(64))
    # Set when the reader unsubscribes: the index of the last step of this campaign they had been sent by
    # then (None: nothing sent yet, or not unsubscribed); cleared when they are resubscribed. The
    # campaign page counts these instead of reading every unsubscribed reader's messages.
    unsubscribed_after_step: Mapped[int | None] = mapped_column(Integer)
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]

    subscriber: Mapped[Subscriber] = relationship(back_populates="enrollments")


class Message(Base):
    """One email: one row per (enrollment, step), written before it is sent."""

    __tablename__ = "messages"
    __table_args__ = (
        UniqueConstraint("enrollment_id", "step_key"),
        CheckConstraint(_in("status", MESSAGE_STATUSES), name="status"),
        Index("ix_messages_work", "status", "next_attempt_at"),
        Index("ix_messages_created", "created_at", "id"),
        # The send log and its CSV export for one campaign's step, in id order (migration 0017_console_counts).
        Index("ix_messages_campaign_step", "campaign", "step_key", "id"),
        # Unfinished messages only: the claim query never walks sent history (migration 0006_issue6).
        Index("ix_messages_pending", "next_attempt_at", "id", postgresql_where=text(_PENDING),
              sqlite_where=text(_PENDING)),
        # Read by `= value` only (provider webhooks); an SMTP email has none (migration 0013_lean_indexes).
        Index("ix_messages_provider_message_id", "provider_message_id", postgresql_where=_NOT_NULL_PROVIDER_ID,
              sqlite_where=_NOT_NULL_PROVIDER_ID),
    )

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    enrollment_id: Mapped[int] = mapped_column(ForeignKey("enrollments.id", ondelete="CASCADE"))
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"), index=True)
    campaign: Mapped[str] = mapped_column(String(64))
    step_key: Mapped[str] = mapped_column(String(64))
    step_index: Mapped[int] = mapped_column(Integer)
    to_email: Mapped[str] = mapped_column(String(320))
    subject: Mapped[str | None] = mapped_column(String(300))
    status: Mapped[str] = mapped_column(String(16), default="queued")
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None]
    lease_until: Mapped[datetime | None]
    claimed_by: Mapped[str | None] = mapped_column(String(80))
    last_error: Mapped[str | None] = mapped_column(Text)
    message_id: Mapped[str | None] = mapped_column(String(255), unique=True)
    provider_message_id: Mapped[str | None] = mapped_column(String(255))  # ix_ partial, NOT NULL only
    created_at: Mapped[datetime]
    updated_at: Mapped[datetime]
    first_attempt_at: Mapped[datetime | None]
    sent_at: Mapped[datetime | None]
    # When the email was first opened / first clicked (tracking). Set once, by the statement that records
    # the first such event, so the count triggers count each email once (migration 0020_engagement_counts).
    opened_at: Mapped[datetime | None]
    clicked_at: Mapped[datetime | None]


class Event(Base):
    """Append-only history: one row per attempt, outcome, signup, unsubscribe or provider event."""

    __tablename__ = "events"
    __table_args__ = (Index("ix_events_subscriber", "subscriber_id", "created_at"),
                      Index("ix_events_created", "created_at"),  # retention pruning (DRIP_EVENT_RETENTION_DAYS)
                      # A message's history, and deletes cascading from messages; a signup's event has no
                      # message and no entry here (migration 0013_lean_indexes).
                      Index("ix_events_message_id", "message_id", postgresql_where=_NOT_NULL_MESSAGE_ID,
                            sqlite_where=_NOT_NULL_MESSAGE_ID),
                      # The home page's "unsubscribed in the last 7 days": the few unsubscribes, not a week of
                      # every event (migration 0019_forecast_store).
                      Index("ix_events_unsubscribed", "created_at", "id", postgresql_where=_UNSUBSCRIBED_EVENT,
                            sqlite_where=_UNSUBSCRIBED_EVENT),
                      # Only provider webhooks set it: no entry for every other event (0015_lean_signup_pages).
                      Index("uq_events_provider_event_id", "provider_event_id", unique=True,
                            postgresql_where=_NOT_NULL_PROVIDER_EVENT_ID, sqlite_where=_NOT_NULL_PROVIDER_EVENT_ID))

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscriber_id: Mapped[int | None] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    message_id: Mapped[int | None] = mapped_column(ForeignKey("messages.id", ondelete="CASCADE"))  # ix_ partial
    type: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    data: Mapped[dict | None] = mapped_column(JSON)
    provider_event_id: Mapped[str | None] = mapped_column(String(255))  # unique where set: uq_ partial
    created_at: Mapped[datetime]


class Suppression(Base):
    """Addresses that must never be mailed again; kept as a SHA-256 so an erased person leaves no address."""

    __tablename__ = "suppressions"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    email_hash: Mapped[str] = mapped_column(String(64), unique=True)
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime]


class SendingState(Base):
    """One row (id 1) saying whether sending is paused, e.g. after a provider refused our API key."""

    __tablename__ = "sending_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    reason: Mapped[str | None] = mapped_column(Text)
    changed_at: Mapped[datetime]


class WebhookToken(Base):
    """Webhook tokens already seen (Mailgun signs only timestamp + token, so a token must be used once)."""

    __tablename__ = "webhook_tokens"

    token: Mapped[str] = mapped_column(String(200), primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    email: Mapped[str] = mapped_column(String(320), unique=True)
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[datetime]
    last_login_at: Mapped[datetime | None]
    # Carried in every console session; logout and a password change raise it, ending every session
    # made before, copies of the cookie included.
    session_version: Mapped[int] = mapped_column(Integer, server_default="0", default=0)
    # The zone the console shows this operator's times in (IANA name); None: UTC.
    timezone: Mapped[str | None] = mapped_column(String(64))
    # A disabled operator cannot log in and their open sessions stop working; the row stays for the record.
    disabled_at: Mapped[datetime | None]


class ApiToken(Base):
    """Only the SHA-256 of a token is kept; the token itself is shown once, at creation."""

    __tablename__ = "api_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(100))
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime]
    last_used_at: Mapped[datetime | None]
    revoked_at: Mapped[datetime | None]
    # Space-separated: "read" (GET routes) or "read write" (also add, unsubscribe and erase subscribers).
    scopes: Mapped[str] = mapped_column(String(40), server_default="read", default="read")


class LoginAttempt(Base):
    """Failed logins per key (address or client IP) in a window; shared by every web process."""

    __tablename__ = "login_attempts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(String(400), index=True)
    created_at: Mapped[datetime]


class RateHit(Base):
    """Signup rate-limit counters, in the database so they hold across gunicorn workers and machines."""

    __tablename__ = "rate_hits"
    # One b-tree entry per counter on SQLite (migration 0015_lean_signup_pages).
    __table_args__ = {"sqlite_with_rowid": False}

    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class SendCounter(Base):
    """Sends per sending domain per clock hour / UTC day (for send limits and the warm-up ramp), counted at
    claim time in the claim's transaction, so every worker shares one allowance."""

    __tablename__ = "send_counters"

    domain: Mapped[str] = mapped_column(String(253), primary_key=True)
    window: Mapped[str] = mapped_column(String(4), primary_key=True)  # "hour" or "day"
    window_start: Mapped[datetime] = mapped_column(primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)


class MessageContent(Base):
    """The email exactly as it was handed to the transport (RFC 5322 bytes), for the operator's "as sent" view.

    Written with the outcome of each attempt (the last attempt wins); erased with the message. `raw` holds
    the bytes, or a layout: the email's own pieces and references to `content_chunks`, behind a
    prefix no email starts with; read it with `as_sent.read`.
    """

    __tablename__ = "message_contents"

    message_id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("messages.id", ondelete="CASCADE"), primary_key=True)
    raw: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class ContentChunk(Base):
    """A piece of email shared by many "as sent" copies (a step's lines holding no reader's value), stored
    once and named by its SHA-256. No personal data: erasing a reader leaves these."""

    __tablename__ = "content_chunks"

    digest: Mapped[str] = mapped_column(String(64), primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime]


class CampaignState(Base):
    """Operator switches per campaign. A paused campaign queues no new step and claims none of its messages."""

    __tablename__ = "campaign_states"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    paused: Mapped[bool] = mapped_column(Boolean, default=False)
    paused_at: Mapped[datetime | None]
    updated_at: Mapped[datetime]
    # SHA-256 of the campaign's step keys in order, as the workers last checked them: a worker looks for
    # completed readers to reactivate (live_edits.reactivate_grown) only when the file's steps differ from
    # it, not at every start (migration 0017_console_counts).
    steps_digest: Mapped[str | None] = mapped_column(String(64))
    # The digest of the campaign's files (and the composer's code) whose step templates last compiled at the
    # start of a command that sends: a later start with the same ones skips compiling them (migration
    # 0021_templates_checked). A template that fails is never recorded, so every start refuses it.
    templates_checked: Mapped[str | None] = mapped_column(String(64))


class DispatchPass(Base):
    """One row per dispatch pass (any worker), kept for an hour: the source of the pass-duration metrics."""

    __tablename__ = "dispatch_passes"
    __table_args__ = (Index("ix_dispatch_passes_started", "started_at"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    worker: Mapped[str] = mapped_column(String(80))
    started_at: Mapped[datetime]
    duration_seconds: Mapped[float] = mapped_column(Float)
    sent: Mapped[int] = mapped_column(Integer, default=0)


class PendingConfirmation(Base):
    """Double opt-in: a signup waiting for its confirm link to be clicked. One per (subscriber,
    campaign); the enrollment is created only on confirmation. `requested_at` is when a confirmation
    email was last granted (the cooldown counts from it); `send_pending` is set until that email is sent."""

    __tablename__ = "pending_confirmations"
    __table_args__ = (UniqueConstraint("subscriber_id", "campaign"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    subscriber_id: Mapped[int] = mapped_column(ForeignKey("subscribers.id", ondelete="CASCADE"))
    campaign: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[datetime]
    requested_at: Mapped[datetime]
    send_pending: Mapped[bool]
    sending_until: Mapped[datetime | None]  # a worker's lease on sending it
    sends: Mapped[int] = mapped_column(Integer, default=0)


class CampaignVersion(Base):
    """One published version of a campaign: its files ({"campaign.toml": ..., "week-05.md": ...}) exactly as
    they were published, with who and when. Append-only: a restore publishes an old version's files again
    as a new version. The newest version of a campaign is what workers and web processes send."""

    __tablename__ = "campaign_versions"
    __table_args__ = (UniqueConstraint("campaign", "version"),)

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64))
    version: Mapped[int] = mapped_column(Integer)
    files: Mapped[dict] = mapped_column(JSON)
    digest: Mapped[str] = mapped_column(String(64))  # sha256 of the files, to compare with a folder
    # "files" (published from the folder at start-up), "import" (drip campaigns import), "console", "restore"
    source: Mapped[str] = mapped_column(String(16))
    published_by: Mapped[str] = mapped_column(String(255))
    published_at: Mapped[datetime]
    note: Mapped[str | None] = mapped_column(Text)


class CampaignDraft(Base):
    """The console's unpublished edits of one campaign (one draft per campaign, shared by operators):
    the files as they would be published, and the version they started from."""

    __tablename__ = "campaign_drafts"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    files: Mapped[dict] = mapped_column(JSON)
    base_version: Mapped[int] = mapped_column(Integer)  # 0: started from the folder, never published
    note: Mapped[str | None] = mapped_column(Text)  # "restores version 3": said again in that version's note
    updated_by: Mapped[str] = mapped_column(String(255))
    updated_at: Mapped[datetime]


# -- maintained counts -----------------------------------------------------------------------------------
# The operator's numbers (campaign health, the charts, /metrics) read these small tables instead of
# counting millions of rows. Database triggers keep them (migration 0017_console_counts), so every
# statement that inserts, updates or deletes a message, enrollment, subscriber or consent also moves its
# count in the same transaction, whichever code wrote it. service/core/counts.py reads, folds and rebuilds
# them. A count whose rows are all gone stays as a zero row.


class MessageCount(Base):
    """Messages per campaign, step and status; `n_sent` of them have been handed to the transport,
    `n_opened` / `n_clicked` opened / clicked at least once (migration 0020_engagement_counts)."""

    __tablename__ = "message_counts"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_index: Mapped[int] = mapped_column(Integer, primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    n_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    n_opened: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    n_clicked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")


class MessageDay(Base):
    """Messages handed to the transport per campaign and UTC day of `sent_at` (the "sent per day" chart)."""

    __tablename__ = "message_days"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class EnrollmentCount(Base):
    __tablename__ = "enrollment_counts"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class SubscriberCount(Base):
    __tablename__ = "subscriber_counts"

    status: Mapped[str] = mapped_column(String(16), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class SignupCount(Base):
    """Consent records (signups) per campaign."""

    __tablename__ = "signup_counts"

    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(BigInteger, default=0)


class ForecastRun(Base):
    """The forecast the worker last stored (one row, id 1): when, up to when, and its notes. Replaying the
    dispatcher's rules reader by reader takes about 130 microseconds each, about a minute at a million readers, so a
    large list's console home page reads the stored result instead of replaying it (operator/forecast.py)."""

    __tablename__ = "forecast_runs"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    computed_at: Mapped[datetime]
    until: Mapped[datetime]
    snoozed_readers: Mapped[int] = mapped_column(Integer, default=0)
    held_by_cap: Mapped[int] = mapped_column(Integer, default=0)
    seconds: Mapped[float] = mapped_column(Float, default=0.0)  # how long the replay took


class ForecastCount(Base):
    """The stored forecast: emails per quarter hour (UTC start), campaign and step. Every time zone's offset is a
    whole number of quarter hours, so any operator's days can be counted from these exactly."""

    __tablename__ = "forecast_counts"

    slot_at: Mapped[datetime] = mapped_column(primary_key=True)
    campaign: Mapped[str] = mapped_column(String(64), primary_key=True)
    step_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, default=0)


class CountDelta(Base):
    """PostgreSQL only: what each statement changed, appended by its trigger and later folded into the
    tables above (`counts.fold`). Appending never waits for another transaction: updating one hot count
    row in place would queue every worker and webhook behind each other's commit, and two transactions
    taking count rows in different orders would deadlock. Readers add the unfolded rows, so a count is
    exact at any moment. (SQLite has one writer at a time; its triggers update the counts directly.)"""

    __tablename__ = "count_deltas"

    id: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    counter: Mapped[str] = mapped_column(String(16))  # "step", "day", "enrollment", "subscriber" or "signup"
    campaign: Mapped[str] = mapped_column(String(64), server_default="")
    step_key: Mapped[str] = mapped_column(String(64), server_default="")
    step_index: Mapped[int] = mapped_column(Integer, server_default="0")
    status: Mapped[str] = mapped_column(String(16), server_default="")
    day: Mapped[date | None] = mapped_column(Date)
    n: Mapped[int] = mapped_column(BigInteger, default=0)
    n_sent: Mapped[int] = mapped_column(BigInteger, default=0)
    n_opened: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    n_clicked: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
