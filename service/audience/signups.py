"""Signups: validate the input, upsert subscriber + enrollment, store the consent. Never sends mail.

Idempotent under concurrency: the subscriber and the enrollment are inserted with ON CONFLICT DO
NOTHING against their unique keys, so thirty simultaneous posts of one address make one subscriber,
one enrollment and one consent record; exactly one caller learns it was new.

Speed: a new address, the common case, takes one statement on PostgreSQL (the four inserts
chained by data-modifying CTEs: one round trip) and four cheap ones on SQLite, written once as plain SQL
and run on the driver's cursor (db.DriverSQL). Anything else (a known address, a suppressed one, double
opt-in) takes the general path, which reads what it needs.
"""
from __future__ import annotations

import logging
import re
import secrets
import unicodedata
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import cache

from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
from email_validator.rfc_constants import CASE_INSENSITIVE_MAILBOX_NAMES
from sqlalchemy import select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection
from sqlalchemy.orm import Session

from service.audience import optin, ratelimit
from service.campaigns.model import Campaign
from service.campaigns.schedule import valid_timezone
from service.core import events
from service.core.addresses import new_message_id
from service.core.db import DriverSQL, DriverTransaction, driver_time, flushed_connection
from service.core.errors import FieldError
from service.core.models import Consent, Enrollment, Message, Subscriber
from service.enrollment import start as enrollment_start
from service.enrollment.suppression import email_hash, is_suppressed

log = logging.getLogger(__name__)

MAX_NAME = 100
MAX_EMAIL_INPUT = 320
MAX_URL = 2000
MAX_USER_AGENT = 500
# C0/C1 controls, plus Unicode format characters (bidi overrides, zero-width joiners) in names.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class SignupError(FieldError):
    """Bad input. `field` names the offending field; the web layer maps this to a 4xx."""


@dataclass(frozen=True)
class SignupInput:
    email: str
    email_key: str
    name: str
    campaign: str
    timezone: str | None


@dataclass(frozen=True)
class ConsentMeta:
    source: str  # "form" or "json"
    source_url: str | None = None
    user_agent: str | None = None
    ip: str | None = None


@dataclass(frozen=True)
class SignupResult:
    # "created", "existing", "inactive" (unsubscribed/bounced), "suppressed", or for a double opt-in
    # campaign "pending" (a confirmation email was granted) / "pending_cooldown" (one went out recently)
    status: str
    subscriber_id: int | None
    refused_by: int | None = None  # "rate_limited": the index of the rate-limit hit whose window is full

    @property
    def created(self) -> bool:
        return self.status == "created"


def clean_name(raw: object) -> str:
    if raw is None:
        return ""
    if not isinstance(raw, str):
        raise SignupError("invalid_name", "name must be a string", "name")
    if raw.isascii():  # fast path: ASCII is already NFC and holds no format character or surrogate
        text = _CONTROL.sub(" ", raw)
    else:
        text = _CONTROL.sub(" ", unicodedata.normalize("NFC", raw))
        # Format characters (bidi, zero-width) and lone surrogates (JSON "\ud800": not encodable as UTF-8).
        text = "".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cs"))
    text = " ".join(text.split())
    if len(text) > MAX_NAME:
        raise SignupError("name_too_long", f"name must be at most {MAX_NAME} characters", "name")
    return text


# validate_email costs ~100 us, a sixth of a signup's CPU. Most addresses are plain ASCII
# dot-atoms at an ordinary domain; for those its answer is known (the address with the domain in lower
# case), so they are checked here and only anything else goes to it. The pattern accepts only what it
# accepts unchanged: no quoting, no IDN or "--" labels, a letters-only top-level domain, no special-use
# domain, no role mailbox it would lower-case, within its length limits. tests/test_fast_paths.py
# compares both paths on generated addresses.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDRESS = re.compile(rf"({_ATEXT}(?:\.{_ATEXT})*)@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+"
                            r"[A-Za-z]{2,63})")
_SPECIAL_USE = tuple(SPECIAL_USE_DOMAIN_NAMES)
_ROLE_MAILBOXES = frozenset(CASE_INSENSITIVE_MAILBOX_NAMES)


def plain_address(address: str) -> str | None:
    """validate_email's normalized form of a plain ASCII address, or None: ask validate_email."""
    match = _PLAIN_ADDRESS.fullmatch(address)
    if match is None or len(address) > 254:
        return None
    local, domain = match.groups()
    domain = domain.lower()
    if (len(local) > 64 or len(domain) > 253 or "--" in domain or local.lower() in _ROLE_MAILBOXES
            or any(domain == d or domain.endswith("." + d) for d in _SPECIAL_USE)):
        return None
    return f"{local}@{domain}"


def normalize_email(raw: object) -> tuple[str, str]:
    """Returns (address as stored, lower-cased key). Syntax only: no DNS during a request."""
    if raw is None or (isinstance(raw, str) and not raw.strip()):
        raise SignupError("missing_email", "email is required", "email")
    if not isinstance(raw, str):
        raise SignupError("invalid_email", "email must be a string", "email")
    if len(raw) > MAX_EMAIL_INPUT:
        raise SignupError("invalid_email", "email is too long", "email")
    address = raw.strip()
    normalized = plain_address(address)
    if normalized is None:
        try:
            normalized = validate_email(address, check_deliverability=False, allow_smtputf8=False).normalized
        except EmailNotValidError as exc:
            raise SignupError("invalid_email", f"email is not valid: {exc}", "email") from None
    return normalized, normalized.lower()


def parse_signup(data: Mapping[str, object], *, campaigns: Mapping[str, Campaign], default_campaign: str,
                 campaign_in_path: str | None = None) -> SignupInput:
    email, key = normalize_email(data.get("email"))
    name = clean_name(data.get("name"))
    campaign = campaign_in_path or data.get("campaign") or default_campaign
    if not isinstance(campaign, str) or campaign not in campaigns:
        raise SignupError("unknown_campaign", f"no campaign named {str(campaign)[:64]!r}", "campaign")
    tz = data.get("timezone") or None
    if tz is not None and (not isinstance(tz, str) or not valid_timezone(tz.strip())):
        raise SignupError("invalid_timezone", "timezone must be an IANA name such as Europe/Paris", "timezone")
    return SignupInput(email=email, email_key=key, name=name, campaign=campaign,
                       timezone=tz.strip() if isinstance(tz, str) else None)


def _meta_text(value: str | None, limit: int) -> str | None:
    """Free text kept with the consent: control characters dropped (PostgreSQL refuses NUL), bounded."""
    return _CONTROL.sub("", value or "")[:limit] or None


def _insert(session: Session):
    return postgresql.insert if session.get_bind().dialect.name == "postgresql" else sqlite.insert


def signup(session: Session, data: SignupInput, *, campaign: Campaign, meta: ConsentMeta, now: datetime,
           record_ip: bool = False, confirm_cooldown: timedelta = timedelta(minutes=60),
           rate_hits: Sequence[ratelimit.PendingHit] = (), invite_back: bool = True) -> SignupResult:
    """Upsert the subscriber and enrollment; the caller commits. The welcome is due at `now`.

    `rate_hits` are counted first, in order, except the `first_is_new_subscriber` one (the per-address
    limit), counted after the subscriber row is written and only when that row was there already (a
    known or suppressed address): a new address's first signup is counted by the row it creates. The
    first hit whose window is full stops the signup ("rate_limited", nothing else written, the hits
    counted before it kept). On PostgreSQL a new address's hits and rows go in one statement."""
    if not campaign.double_opt_in:
        result = signup_new(flushed_connection(session), data, campaign=campaign, meta=meta, now=now,
                            record_ip=record_ip, rate_hits=rate_hits)
        if result is not None:
            return result
        address_hit = None
    else:
        conn = flushed_connection(session)
        address_hit = None
        for n, pending in enumerate(rate_hits):
            if pending.first_is_new_subscriber and pending.limit >= 1:
                address_hit = (n, pending)  # signup_known counts it once it knows whether the row is new
            elif not ratelimit.count_pending(conn, pending):
                return SignupResult("rate_limited", None, refused_by=n)
    return signup_known(session, data, campaign=campaign, meta=meta, now=now, record_ip=record_ip,
                        confirm_cooldown=confirm_cooldown, address_hit=address_hit, invite_back=invite_back)


def signup_new(conn: Connection | DriverTransaction, data: SignupInput, *, campaign: Campaign, meta: ConsentMeta,
               now: datetime, record_ip: bool = False,
               rate_hits: Sequence[ratelimit.PendingHit] = ()) -> SignupResult | None:
    """The common case on a bare connection, inside its transaction (the caller commits): the rate-limit
    hits, then, for an address never seen and not suppressed, the subscriber, enrollment, consent and
    event, no ORM involved (the ORM session's own begin and commit cost ~30 us a signup).
    "created" or "rate_limited"; None when the address is known or suppressed (its hits are counted
    then): `signup_known` takes it from there, with no hits. Not for double opt-in campaigns.

    A `first_is_new_subscriber` hit (the per-address limit) is counted after the insert, only when
    nothing was inserted: a new address's first signup is counted by its subscriber row."""
    if campaign.double_opt_in:
        raise ValueError("signup_new: double opt-in signups go through signup()")
    dialect = conn.dialect.name
    before = [(n, hit) for n, hit in enumerate(rate_hits) if not hit.first_is_new_subscriber]
    after = [(n, hit) for n, hit in enumerate(rate_hits) if hit.first_is_new_subscriber]
    one_statement = dialect == "postgresql" and all(hit.limit >= 1 for hit in rate_hits)
    params = _new_signup_params(data, campaign, meta, now, record_ip, dialect)
    if not one_statement:
        for n, pending in before:
            if not ratelimit.count_pending(conn, pending):
                return SignupResult("rate_limited", None, refused_by=n)
        for n, pending in after:
            if pending.limit < 1:  # not even a new address's first signup
                return SignupResult("rate_limited", None, refused_by=n)
        before = []
    subscriber_id, refused = _new_subscriber(conn, params, [pending for _n, pending in before])
    if refused is not None:
        return SignupResult("rate_limited", None, refused_by=before[refused][0])
    if subscriber_id is None:  # known or suppressed: now the per-address hit counts
        for n, pending in after:
            if not _count_address_hit(conn, data.email_key, pending):
                return SignupResult("rate_limited", None, refused_by=n)
    if rate_hits:
        ratelimit.forget_old_windows(conn, now)
    return SignupResult("created", subscriber_id) if subscriber_id is not None else None


_CREATED_IN = DriverSQL("SELECT created_at >= :window_start FROM subscribers WHERE email_key = :email_key")


def _count_address_hit(conn: Connection | DriverTransaction | Session, email_key: str,
                       pending: ratelimit.PendingHit) -> bool:
    """Counts a `first_is_new_subscriber` hit for an address whose subscriber row already exists (or a
    suppressed one without a row): the row, when made in this window, was its first hit there, so the
    window holds one hit fewer. False when the window is full."""
    if isinstance(conn, Session):
        conn = flushed_connection(conn)
    row = _CREATED_IN.first(conn, {"email_key": email_key, "window_start": driver_time(conn, pending.window_start)})
    return ratelimit.count_pending(conn, pending, used=1 if row is not None and row[0] else 0)


def signup_known(session: Session, data: SignupInput, *, campaign: Campaign, meta: ConsentMeta, now: datetime,
                 record_ip: bool = False, confirm_cooldown: timedelta = timedelta(minutes=60),
                 address_hit: tuple[int, ratelimit.PendingHit] | None = None,
                 invite_back: bool = True) -> SignupResult:
    """Known, suppressed, or double opt-in: the general path, through the ORM; the caller commits. The
    rate-limit hits are counted by the caller, but for `address_hit` (its index among them, the hit):
    counted here once the subscriber row is written, unless this signup made the row (see signup()).
    `invite_back`: a reader's own form post asks an unsubscribed reader to come back by email; the
    operator's import and API pass False and get "inactive" (they never email someone who left)."""
    if is_suppressed(session, data.email_key):
        if address_hit is not None and not _count_address_hit(session, data.email_key, address_hit[1]):
            return SignupResult("rate_limited", None, refused_by=address_hit[0])
        log.info("signup for a suppressed address ignored (campaign %s)", data.campaign)
        return SignupResult("suppressed", _note_refused_signup(session, data, meta=meta, now=now))
    insert = _insert(session)
    made = session.execute(
        insert(Subscriber)
        .values(public_id=secrets.token_urlsafe(16), email=data.email, email_key=data.email_key, name=data.name,
                timezone=data.timezone, status="active", created_at=now, updated_at=now)
        .on_conflict_do_nothing(index_elements=["email_key"])
        .returning(Subscriber.id)
    ).scalar()
    # A concurrent first signup of the same address waited above for this one's row (PostgreSQL) and,
    # finding it made, is counted here.
    if made is None and address_hit is not None and not _count_address_hit(session, data.email_key, address_hit[1]):
        return SignupResult("rate_limited", None, refused_by=address_hit[0])
    subscriber = session.scalars(select(Subscriber).where(Subscriber.email_key == data.email_key)).one()
    if subscriber.status == "unsubscribed" and invite_back:
        # Someone who left is not re-enrolled by a form post (anyone can type an address): they get an email
        # asking whether they want to come back, and only its link brings them back (optin.confirm).
        return _request_comeback(session, subscriber, data, campaign=campaign, meta=meta, now=now,
                                 record_ip=record_ip, cooldown=confirm_cooldown)
    if subscriber.status != "active":  # bounced or complained without a suppression row: nothing is sent
        if subscriber.status != "unsubscribed":
            _note_refused_signup(session, data, meta=meta, now=now)
        return SignupResult("inactive", subscriber.id)
    if campaign.double_opt_in:  # no enrollment until the emailed link is confirmed
        return _request_confirmation(session, subscriber, data, campaign=campaign, meta=meta, now=now,
                                     record_ip=record_ip, cooldown=confirm_cooldown)
    inserted = enrollment_start.start(session, subscriber_id=subscriber.id, campaign=data.campaign,
                                      step=campaign.steps[0], due=now, due_from=None,
                                      now=now)
    if inserted is None:
        _welcome_a_continued_reader(session, subscriber, campaign, meta=meta, now=now, record_ip=record_ip)
        return SignupResult("existing", subscriber.id)
    if not subscriber.name and data.name:
        subscriber.name = data.name
    if not subscriber.timezone and data.timezone:
        subscriber.timezone = data.timezone
    session.add(Consent(
        subscriber_id=subscriber.id, campaign=data.campaign, created_at=now, source=meta.source,
        source_url=_meta_text(meta.source_url, MAX_URL), user_agent=_meta_text(meta.user_agent, MAX_USER_AGENT),
        ip=meta.ip if record_ip else None, wording=campaign.consent,
    ))
    events.record(session, type="signup", now=now, subscriber_id=subscriber.id,
                  detail=f"signed up for {data.campaign} via {meta.source}")
    return SignupResult("created", subscriber.id)


# -- the new-address path ------------------------------------------------------------------------------------
# Plain SQL, written once and run as it is (db.DriverSQL): SQLAlchemy never caches the compiled form of its
# dialect INSERT ... ON CONFLICT constructs (`inherit_cache = False`), so building them per request
# compiled each one every time, about a third of a signup's CPU.
_SUBSCRIBER = """INSERT INTO subscribers (public_id, email, email_key, name, timezone, status, created_at, updated_at)
SELECT :public_id, :email, :email_key, :name, :timezone, 'active', :now, :now
WHERE NOT EXISTS (SELECT 1 FROM suppressions WHERE email_hash = :email_hash)
ON CONFLICT (email_key) DO NOTHING RETURNING id"""
# What a new subscriber gets with it: the enrollment (the welcome is due now: the row
# enrollment_start.start writes for every other way of joining), the consent, the event.
_FOLLOW_UPS = (
    """INSERT INTO enrollments (subscriber_id, campaign, status, next_step, next_step_key, next_due_at, due_from,
    created_at, updated_at)
SELECT {id}, :campaign, 'active', 0, :first_step, :now, NULL, :now, :now""",
    """INSERT INTO consents (subscriber_id, campaign, created_at, source, source_url, user_agent, ip, wording)
SELECT {id}, :campaign, :now, :source, :source_url, :user_agent, :ip, :wording""",
    """INSERT INTO events (subscriber_id, type, detail, created_at) SELECT {id}, 'signup', :detail, :now""",
)


@cache
def _new_signup_statements(dialect: str, hits: int = 0) -> tuple[DriverSQL, ...]:
    if dialect == "postgresql":
        # One statement, one round trip: the rate-limit hits (each counted only if the one before it
        # was), then each insert reads the new id from the first one's RETURNING, so for a known or
        # suppressed address, or a full window, no signup row is written. The row back: whether each hit
        # was counted, then the new id or NULL.
        hit_ctes = [ratelimit.hit_cte(n, f"hit_{n - 1}" if n else None) for n in range(hits)]
        subscriber = _SUBSCRIBER
        if hits:
            last = f"hit_{hits - 1}"  # CTE names and numbers only: no value is ever formatted into the SQL
            subscriber = subscriber.replace("WHERE NOT EXISTS", f"WHERE EXISTS (SELECT 1 FROM {last})\n"  # noqa: S608
                                            "AND NOT EXISTS", 1)
        follow = [f"new_{i} AS ({sql.format(id='new_subscriber.id')} FROM new_subscriber)"
                  for i, sql in enumerate(_FOLLOW_UPS)]
        counted = "".join(f"EXISTS (SELECT 1 FROM hit_{n}), " for n in range(hits))  # noqa: S608
        ctes = ",\n".join([*hit_ctes, f"new_subscriber AS ({subscriber})", *follow])
        return (DriverSQL(f"WITH {ctes}\nSELECT {counted}(SELECT id FROM new_subscriber)"),)  # noqa: S608
    # SQLite has no data-modifying CTEs; its statements cost no round trip (in-process, one writer).
    if hits:
        raise ValueError("rate-limit hits go in the signup statement on PostgreSQL only")
    return (DriverSQL(_SUBSCRIBER), *(DriverSQL(sql.format(id=":subscriber_id")) for sql in _FOLLOW_UPS))


def _new_signup_params(data: SignupInput, campaign: Campaign, meta: ConsentMeta, now: datetime, record_ip: bool,
                       dialect: str) -> dict[str, object]:
    return {"public_id": secrets.token_urlsafe(16), "email": data.email, "email_key": data.email_key,
            "name": data.name, "timezone": data.timezone, "now": driver_time(dialect, now),
            "email_hash": email_hash(data.email_key), "campaign": data.campaign, "first_step": campaign.steps[0].key,
            "source": meta.source,
            "source_url": _meta_text(meta.source_url, MAX_URL),
            "user_agent": _meta_text(meta.user_agent, MAX_USER_AGENT), "ip": meta.ip if record_ip else None,
            "wording": campaign.consent, "detail": f"signed up for {data.campaign} via {meta.source}"}


def _new_subscriber(conn: Connection | DriverTransaction, params: dict[str, object],
                    rate_hits: Sequence[ratelimit.PendingHit] = ()) -> tuple[int | None, int | None]:
    """Inserts subscriber, enrollment, consent and event (`_new_signup_params`) when the address is new
    and not suppressed; returns (the new subscriber's id or None: nothing written, the index of the
    refusing hit or None). `rate_hits` only on PostgreSQL."""
    first, *rest = _new_signup_statements(conn.dialect.name, len(rate_hits))
    for n, pending in enumerate(rate_hits):
        params.update({f"key_{n}": pending.key, f"window_{n}": pending.window_start, f"limit_{n}": pending.limit})
    row = first.first(conn, params)
    if rate_hits:
        refused = next((n for n, counted in enumerate(row[:-1]) if not counted), None)
        return (None, refused) if refused is not None else (row[-1], None)
    if row is None:
        return None, None
    params["subscriber_id"] = subscriber_id = row[0]
    for statement in rest:
        statement.first(conn, params)
    return subscriber_id, None


def _request_confirmation(session: Session, subscriber: Subscriber, data: SignupInput, *, campaign: Campaign,
                          meta: ConsentMeta, now: datetime, record_ip: bool, cooldown: timedelta) -> SignupResult:
    """Double opt-in: a pending signup; the confirmation email at most once per cooldown."""
    enrolled = session.scalar(select(Enrollment.id).where(Enrollment.subscriber_id == subscriber.id,
                                                          Enrollment.campaign == campaign.key))
    if enrolled is not None:
        return SignupResult("existing", subscriber.id)
    if not optin.request(session, subscriber=subscriber, campaign=campaign, now=now, cooldown=cooldown):
        return SignupResult("pending_cooldown", subscriber.id)
    if not subscriber.name and data.name:
        subscriber.name = data.name
    if not subscriber.timezone and data.timezone:
        subscriber.timezone = data.timezone
    session.add(Consent(  # what the form said when they asked; "confirmed" is recorded on the click
        subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, source=meta.source,
        source_url=(meta.source_url or "")[:MAX_URL] or None,
        user_agent=(meta.user_agent or "")[:MAX_USER_AGENT] or None,
        ip=meta.ip if record_ip else None, wording=campaign.consent,
    ))
    events.record(session, type="signup", now=now, subscriber_id=subscriber.id,
                  detail=f"asked for {campaign.key} via {meta.source}; confirmation email granted")
    return SignupResult("pending", subscriber.id)


def _consent(subscriber: Subscriber, campaign: Campaign, meta: ConsentMeta, now: datetime, record_ip: bool) -> Consent:
    """What the form said when the reader asked (its own words), and where and how they asked."""
    return Consent(subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, source=meta.source,
                   source_url=_meta_text(meta.source_url, MAX_URL),
                   user_agent=_meta_text(meta.user_agent, MAX_USER_AGENT),
                   ip=meta.ip if record_ip else None, wording=campaign.consent)


def _request_comeback(session: Session, subscriber: Subscriber, data: SignupInput, *, campaign: Campaign,
                      meta: ConsentMeta, now: datetime, record_ip: bool, cooldown: timedelta) -> SignupResult:
    """An unsubscribed reader filled in a form again: a pending signup and a "do you want to come back?"
    email (at most one per cooldown, like a double opt-in confirmation); their click re-subscribes them.
    Recorded in their timeline either way. "returning" when an email was granted, else "returning_cooldown"."""
    granted = optin.request(session, subscriber=subscriber, campaign=campaign, now=now, cooldown=cooldown,
                            since=subscriber.unsubscribed_at)
    session.add(_consent(subscriber, campaign, meta, now, record_ip))
    events.record(session, type="signup", now=now, subscriber_id=subscriber.id,
                  detail=f"asked for {campaign.key} again via {meta.source} after unsubscribing; "
                         + ("a come-back confirmation email was granted" if granted
                            else "a come-back email went out recently, none sent now"),
                  data={"campaign": campaign.key, "returning": True, "email_granted": granted})
    return SignupResult("returning" if granted else "returning_cooldown", subscriber.id)


def _note_refused_signup(session: Session, data: SignupInput, *, meta: ConsentMeta, now: datetime) -> int | None:
    """A form post for an address whose mail bounced or was marked as spam: nothing is sent, but the
    subscriber's timeline shows the attempt (an erased address has no subscriber: nothing is kept)."""
    subscriber = session.scalars(select(Subscriber).where(Subscriber.email_key == data.email_key)).one_or_none()
    if subscriber is None:
        return None
    events.record(session, type="signup_refused", now=now, subscriber_id=subscriber.id,
                  detail=f"asked for {data.campaign} via {meta.source}; nothing sent: this address is "
                         f"{subscriber.status} (its mail bounced or was reported as spam)",
                  data={"campaign": data.campaign, "status": subscriber.status})
    return subscriber.id


def _welcome_a_continued_reader(session: Session, subscriber: Subscriber, campaign: Campaign, *, meta: ConsentMeta,
                                now: datetime, record_ip: bool) -> None:
    """A reader who reached this campaign by continuation from a lead magnet and now signs up for
    it directly still gets what this form promises: its first step (the welcome) is queued once, the
    direct consent is recorded, and footers name this campaign from now on. Their place in the shared
    sequence is kept; no step is ever queued twice (unique (enrollment, step))."""
    enrollment = session.scalars(select(Enrollment).where(Enrollment.subscriber_id == subscriber.id,
                                                          Enrollment.campaign == campaign.key)).one_or_none()
    if enrollment is None or enrollment.origin_campaign is None or enrollment.status == "stopped":
        return
    welcome = campaign.steps[0]
    message_id = session.execute(
        _insert(session)(Message)
        .values(enrollment_id=enrollment.id, subscriber_id=subscriber.id, campaign=campaign.key,
                step_key=welcome.key, step_index=welcome.index, to_email=subscriber.email, status="queued",
                attempts=0, next_attempt_at=now, created_at=now, updated_at=now,
                message_id=new_message_id(campaign.from_address, enrollment.id, secrets.token_hex(10)))
        .on_conflict_do_nothing(index_elements=["enrollment_id", "step_key"])
        .returning(Message.id)
    ).scalar()
    enrollment.origin_campaign = None
    enrollment.updated_at = now
    session.add(Consent(
        subscriber_id=subscriber.id, campaign=campaign.key, created_at=now, source=meta.source,
        source_url=(meta.source_url or "")[:MAX_URL] or None,
        user_agent=(meta.user_agent or "")[:MAX_USER_AGENT] or None,
        ip=meta.ip if record_ip else None, wording=campaign.consent,
    ))
    events.record(session, type="signup", now=now, subscriber_id=subscriber.id, message_id=message_id,
                  detail=f"signed up for {campaign.key} directly (was continued into it); welcome queued")
