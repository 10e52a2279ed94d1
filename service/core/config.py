"""One frozen Settings object built from the environment (and an optional `.env` file).

The web app, the worker, the CLI and Alembic all read the same object; tests build it directly with
`Settings.from_env({...})` or `dataclasses.replace`. Bad values fail fast and name the variable.
"""
from __future__ import annotations

import base64
import binascii
import importlib.util
import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from email.utils import parseaddr
from pathlib import Path
from urllib.parse import urlsplit

from dotenv import dotenv_values

from service.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_POSTAL_ADDRESS = "Postal address not configured yet (set DRIP_POSTAL_ADDRESS)"
# The documented minimum (README, docs/security.md): 32 random characters, as `secrets.token_hex(16)` or
# the generated key (64 hex characters) give. A shorter key can be guessed offline from one signed link.
SECRET_KEY_MIN_LENGTH = 32
GENERATE_KEY_HINT = "python3 -c 'import secrets; print(secrets.token_hex(32))'"
# DRIP_EMAIL_URL schemes; service/transports builds one transport per scheme (a test keeps both lists equal).
EMAIL_SCHEMES = ("file", "smtp", "smtps", "postmark", "sendgrid", "mailgun", "ses", "resend")
# A setting whose feature lives in an optional extra: the module it needs and the extra's name.
EXTRAS = {"redis": ("redis", "redis")}


@dataclass(frozen=True)
class RateLimit:
    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str, name: str = "DRIP_SIGNUP_RATE_LIMIT") -> RateLimit | None:
        text = text.strip().lower()
        if text in ("off", "none", "0", ""):
            return None
        m = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)", text)
        if not m:
            raise ConfigError(f"{name}: expected e.g. '10/minute' or 'off', got {text!r}")
        unit = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(2)]
        return cls(int(m.group(1)), unit)


@dataclass(frozen=True)
class SendLimits:
    """Most sends per sending domain per clock hour and per UTC day, with an optional warm-up ramp.

    DRIP_SEND_LIMITS="hour=500,day=5000"; DRIP_WARMUP="2026-11-24:50" caps the day at 50 on that date,
    then doubles the cap each UTC day (100, 200, ...) until it reaches the day limit (if any).
    """

    per_hour: int | None = None
    per_day: int | None = None
    warmup_start: date | None = None
    warmup_first_day: int = 0

    @classmethod
    def parse(cls, limits: str, warmup: str) -> SendLimits | None:
        values: dict[str, int] = {}
        for part in filter(None, (p.strip() for p in limits.split(","))):
            m = re.fullmatch(r"(hour|day)\s*=\s*(\d+)", part.lower())
            if not m or int(m.group(2)) < 1:
                raise ConfigError(f"DRIP_SEND_LIMITS: expected e.g. 'hour=500,day=5000', got {limits!r}")
            values[m.group(1)] = int(m.group(2))
        start, first = None, 0
        if warmup.strip():
            m = re.fullmatch(r"(\d{4}-\d{2}-\d{2})\s*:\s*(\d+)", warmup.strip())
            try:
                start, first = date.fromisoformat(m.group(1)), int(m.group(2))  # type: ignore[union-attr]
            except (AttributeError, ValueError):
                raise ConfigError(f"DRIP_WARMUP: expected START-DATE:FIRST-DAY-CAP such as '2026-11-24:50', "
                                  f"got {warmup!r}") from None
            if first < 1:
                raise ConfigError("DRIP_WARMUP: the first day's cap must be at least 1")
        if not values and start is None:
            return None
        return cls(values.get("hour"), values.get("day"), start, first)

    def day_cap(self, day: date) -> int | None:
        """The day's cap: the warm-up ramp (doubling daily from its start) under the day limit."""
        cap = self.per_day
        if self.warmup_start is not None and day >= self.warmup_start:
            days = (day - self.warmup_start).days
            ramp = self.warmup_first_day * 2 ** min(days, 40)
            cap = ramp if cap is None else min(cap, ramp)
        elif self.warmup_start is not None:  # before the warm-up starts: the first day's cap
            cap = self.warmup_first_day if cap is None else min(cap, self.warmup_first_day)
        return cap


@dataclass(frozen=True)
class Settings:
    # URLs may carry passwords; keep them out of repr() (and so out of logs and tracebacks).
    database_url: str = field(repr=False)
    email_url: str = field(repr=False)
    base_url: str
    secret_key: str = field(repr=False)
    postal_address: str
    from_address: str | None = None
    tick_seconds: float = 5.0
    signup_rate_limit: RateLimit | None = RateLimit(60, 60)
    templates_dir: Path = PROJECT_ROOT / "email_templates"
    instance_dir: Path = Path("instance")
    default_campaign: str = "back-pain-bundle"
    record_ip: bool = False
    trusted_proxies: int = 0  # reverse proxies in front of `drip web` whose X-Forwarded-For/-Proto we believe
    lease_seconds: int = 300
    batch_size: int = 500
    max_attempts: int = 12
    retry_base_seconds: int = 60
    retry_cap_seconds: int = 6 * 3600
    unsubscribe_max_age_days: int = 400
    unsubscribe_mailto: str | None = None
    max_body_bytes: int = 64 * 1024
    # Events (and stored email bytes) older than this are deleted; None keeps them. Opt-out evidence stays.
    event_retention_days: int | None = None
    # When set, GET /metrics asks for "Authorization: Bearer <this>" (Prometheus' bearer_token); else open.
    metrics_token: str | None = field(default=None, repr=False)
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: str | None = None
    # Deliverability: a second DKIM key for rotation, complaint-loop and bounce identities,
    # send limits with a warm-up ramp, and the DNS server `drip doctor` asks.
    dkim_selector_2: str | None = None
    dkim_key_file_2: str | None = None
    feedback_id_sender: str | None = None  # None: the From domain
    bounce_domain: str | None = None
    reply_to: str | None = None
    send_limits: SendLimits | None = None
    dns_server: tuple[str, int] | None = None
    # Delivery tracking: bounce policy, open/click tracking, provider webhooks (docs/providers.md)
    tracking: bool = False
    soft_bounce_threshold: int = 3
    soft_bounce_window_days: int = 30
    deferred_deadline_hours: float = 72.0
    sendgrid_webhook_key: str | None = field(default=None, repr=False)
    mailgun_signing_key: str | None = field(default=None, repr=False)
    postmark_webhook_user: str | None = None
    postmark_webhook_password: str | None = field(default=None, repr=False)
    resend_webhook_secret: str | None = field(default=None, repr=False)
    sns_topic_arns: tuple[str, ...] = ()
    sns_cert_hosts: tuple[str, ...] = ()  # extra certificate hosts (tests, proxies); AWS hosts always allowed
    # Most Drip emails per reader per local day across all campaigns (0 = no cap); welcomes exempt.
    max_emails_per_day: int = 1
    # Double opt-in: unconfirmed signups expire; a form re-sends the confirmation once per cooldown.
    confirm_expiry_days: int = 7
    confirm_cooldown_minutes: int = 60
    # Abuse limits: per-address signup limit, where limit counters live, and CORS origins for /signup.
    signup_address_rate_limit: RateLimit | None = RateLimit(10, 3600)
    rate_limit_storage: str = "database"  # or redis://host:port/db
    cors_origins: tuple[str, ...] = ()

    @property
    def postal_address_is_placeholder(self) -> bool:
        return self.postal_address == PLACEHOLDER_POSTAL_ADDRESS

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")) -> Settings:
        env: dict[str, str] = {}
        if environ is None:
            if dotenv is not None and dotenv.is_file():
                env.update(read_dotenv(dotenv))
            env.update(os.environ)
        else:
            env.update(environ)
        # instance/ and outbox/ sit in the project folder whatever the working directory, so `drip web` and
        # `drip worker` started from different places share one database, one key and one outbox.
        instance = PROJECT_ROOT / env.get("DRIP_INSTANCE_DIR", "instance")
        if instance.exists() and not instance.is_dir():
            raise ConfigError(f"DRIP_INSTANCE_DIR: {instance} is a file, not a folder; point it at a folder Drip may "
                              "create and write (it holds the SQLite database and the generated key)")
        database_url = _database_url(env.get("DATABASE_URL") or f"sqlite:///{instance / 'drip.sqlite3'}")
        secret = env.get("DRIP_SECRET_KEY", "")
        if not secret and not database_url.startswith("sqlite"):
            # With PostgreSQL the web and the workers usually run on different machines: a key generated on
            # each would make every unsubscribe link signed by a worker fail on the web.
            raise ConfigError("DRIP_SECRET_KEY: required with PostgreSQL (the same value on every web and "
                              f"worker process); make one with {GENERATE_KEY_HINT}")
        if secret and len(secret) < SECRET_KEY_MIN_LENGTH:
            # The length only, never the value: this line goes to terminals and logs.
            raise ConfigError(f"DRIP_SECRET_KEY: too short ({len(secret)} characters, at least "
                              f"{SECRET_KEY_MIN_LENGTH} needed); make one with {GENERATE_KEY_HINT}")
        settings = cls(
            database_url=database_url,
            email_url=_email_url(env.get("DRIP_EMAIL_URL") or f"file://{PROJECT_ROOT / 'outbox'}"),
            base_url=_base_url(env.get("DRIP_BASE_URL") or "http://127.0.0.1:8000"),
            secret_key=secret or _instance_secret(instance),
            postal_address=_one_line(env.get("DRIP_POSTAL_ADDRESS") or PLACEHOLDER_POSTAL_ADDRESS),
            from_address=_address(env, "DRIP_FROM"),
            tick_seconds=_number(env, "DRIP_TICK_SECONDS", 5.0, minimum=0.2),
            signup_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_RATE_LIMIT", "60/minute")),
            templates_dir=_folder(env, "DRIP_TEMPLATES_DIR", PROJECT_ROOT / "email_templates"),
            instance_dir=instance,
            default_campaign=env.get("DRIP_DEFAULT_CAMPAIGN", "back-pain-bundle"),
            record_ip=_flag(env, "DRIP_RECORD_IP"),
            trusted_proxies=_integer(env, "DRIP_TRUSTED_PROXIES", 0, minimum=0),
            lease_seconds=_integer(env, "DRIP_LEASE_SECONDS", 300, minimum=5),
            batch_size=_integer(env, "DRIP_BATCH_SIZE", 500, minimum=1),
            max_attempts=_integer(env, "DRIP_MAX_ATTEMPTS", 12, minimum=1),
            event_retention_days=_retention_days(env),
            metrics_token=_metrics_token(env),
            unsubscribe_mailto=_address(env, "DRIP_UNSUBSCRIBE_MAILTO", bare=True),
            dkim_domain=env.get("DRIP_DKIM_DOMAIN") or None,
            dkim_selector=env.get("DRIP_DKIM_SELECTOR") or None,
            dkim_key_file=env.get("DRIP_DKIM_KEY_FILE") or None,
            dkim_selector_2=env.get("DRIP_DKIM_SELECTOR_2") or None,
            dkim_key_file_2=env.get("DRIP_DKIM_KEY_FILE_2") or None,
            feedback_id_sender=_feedback_id_sender(env.get("DRIP_FEEDBACK_ID_SENDER", "")),
            reply_to=_address(env, "DRIP_REPLY_TO"),
            send_limits=SendLimits.parse(env.get("DRIP_SEND_LIMITS", ""), env.get("DRIP_WARMUP", "")),
            dns_server=_dns_server(env.get("DRIP_DNS_SERVER", "")),
            **_delivery_settings(env),
            max_emails_per_day=_integer(env, "DRIP_MAX_EMAILS_PER_DAY", 1, minimum=0),
            confirm_expiry_days=_integer(env, "DRIP_CONFIRM_EXPIRY_DAYS", 7, minimum=1),
            confirm_cooldown_minutes=_integer(env, "DRIP_CONFIRM_COOLDOWN_MINUTES", 60, minimum=1),
            signup_address_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_ADDRESS_RATE_LIMIT", "10/hour"),
                                                      "DRIP_SIGNUP_ADDRESS_RATE_LIMIT"),
            rate_limit_storage=_rate_limit_storage(env.get("DRIP_RATE_LIMIT_STORAGE") or "database"),
            cors_origins=_origins(env.get("DRIP_CORS_ORIGINS", "")),
        )
        if settings.dkim_domain and not (settings.dkim_selector or settings.dkim_key_file):
            # A domain alone would send every email unsigned while the operator believes DKIM is on.
            raise ConfigError("DRIP_DKIM_DOMAIN: set, but DRIP_DKIM_SELECTOR and DRIP_DKIM_KEY_FILE are not; "
                              "they must be set together with it (or unset DRIP_DKIM_DOMAIN to send unsigned)")
        if any((settings.dkim_selector, settings.dkim_key_file, settings.dkim_selector_2, settings.dkim_key_file_2)):
            # A bad DKIM key stops start-up here, naming the variable. (Imported only then: the cryptography
            # modules are ~25 ms of every command's start-up, and a service without DKIM never needs them.)
            from service.core.dkim_keys import load_keys

            load_keys(settings)
        return settings


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Only DATABASE_URL (for `drip db upgrade`, which needs no secret key)."""
    env = dict(read_dotenv(Path(".env"))) if environ is None and Path(".env").is_file() else {}
    env.update(os.environ if environ is None else environ)
    instance = PROJECT_ROOT / env.get("DRIP_INSTANCE_DIR", "instance")
    return _database_url(env.get("DATABASE_URL") or f"sqlite:///{instance / 'drip.sqlite3'}")


def mask_url(url: str) -> str:
    """A URL safe to print: the password replaced by ***, and so is an API key in the user part
    (postmark://TOKEN@, sendgrid://KEY@, mailgun://KEY@domain, resend://KEY@) and a password in the query.
    Every message that shows DATABASE_URL or DRIP_EMAIL_URL shows it through here, a mistyped one included,
    so it reads the raw text, not urllib's parse: a password holding an unencoded / ? # or @ (the usual
    typo) ends the netloc early, and the parsed URL would show the rest of it as a path."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        scheme, rest = "", url
    scheme = scheme.removesuffix("+psycopg")  # shown as the operator wrote it: postgresql://
    userinfo, at, host = rest.rpartition("@")
    host = _SECRET_QUERY.sub(r"\1***", host)
    if not at:
        return f"{scheme}{sep}{host}"
    user, colon, _password = userinfo.partition(":")
    if colon:
        return f"{scheme}{sep}{user}:***@{host}"
    if scheme in ("smtp", "smtps", "sqlite") or scheme.startswith("postgres"):
        return f"{scheme}{sep}{userinfo}@{host}"  # a user name alone is no secret
    return f"{scheme}{sep}***@{host}"  # a provider's API key in the user part


_SECRET_QUERY = re.compile(r"((?:^|[?&;])(?:password|passwd|pass|secret|key|token|api_key)=)[^&;#]*", re.I)


def needs_extra(setting: str, what: str, extra: str) -> None:
    """A setting that needs an optional extra which is not installed stops start-up with the install line."""
    module, name = EXTRAS[extra]
    if importlib.util.find_spec(module) is None:
        raise ConfigError(f"{setting}: {what} needs the optional '{name}' extra ({module} is not installed); "
                          f"install it in Drip's folder: make install EXTRAS={name} (or pip install -e '.[{name}]')")


def _delivery_settings(env: Mapping[str, str]) -> dict:
    """Delivery tracking variables: bounce handling policy, tracking, and one webhook secret per provider."""
    domain = env.get("DRIP_BOUNCE_DOMAIN") or None
    if domain and not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain):
        raise ConfigError(f"DRIP_BOUNCE_DOMAIN: expected a domain such as bounces.example.com, got {domain!r}")
    postmark_user = env.get("DRIP_POSTMARK_WEBHOOK_USER") or None
    postmark_password = env.get("DRIP_POSTMARK_WEBHOOK_PASSWORD") or None
    if bool(postmark_user) != bool(postmark_password):
        missing = "DRIP_POSTMARK_WEBHOOK_PASSWORD" if postmark_user else "DRIP_POSTMARK_WEBHOOK_USER"
        raise ConfigError(f"{missing}: must be set together with "
                          f"{'DRIP_POSTMARK_WEBHOOK_USER' if postmark_user else 'DRIP_POSTMARK_WEBHOOK_PASSWORD'} "
                          "(the Basic auth pair you put in the Postmark webhook URL)")
    return dict(
        bounce_domain=domain,
        tracking=_flag(env, "DRIP_TRACKING"),
        soft_bounce_threshold=_integer(env, "DRIP_SOFT_BOUNCE_THRESHOLD", 3, minimum=1),
        soft_bounce_window_days=_integer(env, "DRIP_SOFT_BOUNCE_WINDOW_DAYS", 30, minimum=1),
        deferred_deadline_hours=_number(env, "DRIP_DEFERRED_DEADLINE_HOURS", 72, minimum=1),
        sendgrid_webhook_key=_sendgrid_key(env.get("DRIP_SENDGRID_WEBHOOK_KEY", "").strip()),
        mailgun_signing_key=env.get("DRIP_MAILGUN_SIGNING_KEY") or None,
        postmark_webhook_user=postmark_user,
        postmark_webhook_password=postmark_password,
        resend_webhook_secret=_resend_secret(env.get("DRIP_RESEND_WEBHOOK_SECRET", "").strip()),
        sns_topic_arns=_checked_list(env, "DRIP_SNS_TOPIC_ARNS", _SNS_ARN, "topic ARNs such as "
                                     "arn:aws:sns:eu-west-1:123456789012:ses-events"),
        sns_cert_hosts=_checked_list(env, "DRIP_SNS_CERT_HOSTS", _HOST_PORT, "host or host:port such as "
                                     "127.0.0.1:8443"),
    )


_SNS_ARN = re.compile(r"arn:aws[a-z-]*:sns:[a-z0-9-]+:\d{12}:[A-Za-z0-9_.-]+")
_HOST_PORT = re.compile(r"[A-Za-z0-9.-]+(:\d{1,5})?|\[[0-9A-Fa-f:.]+\](:\d{1,5})?")


def _checked_list(env: Mapping[str, str], name: str, pattern: re.Pattern, expected: str) -> tuple[str, ...]:
    items = _list(env.get(name))
    for item in items:
        if not pattern.fullmatch(item):
            raise ConfigError(f"{name}: {item!r} is not a valid entry; expected comma-separated {expected}")
    return items


def _sendgrid_key(text: str) -> str | None:
    """The Signed Event Webhook's public key (base64 DER, from SendGrid's Mail Settings): checked at start, as
    a key pasted wrong would otherwise refuse every delivery event with nothing but a 401 in the log."""
    if not text:
        return None
    from cryptography.hazmat.primitives import serialization

    try:
        serialization.load_der_public_key(base64.b64decode(text, validate=True))
    except (ValueError, binascii.Error):
        raise ConfigError("DRIP_SENDGRID_WEBHOOK_KEY: not a base64 DER public key; copy the 'Verification Key' "
                          "of SendGrid's Signed Event Webhook (Mail Settings) whole") from None
    return text


def _resend_secret(text: str) -> str | None:
    if not text:
        return None
    try:
        ok = text.startswith("whsec_") and bool(base64.b64decode(text.removeprefix("whsec_"), validate=True))
    except (ValueError, binascii.Error):
        ok = False
    if not ok:
        raise ConfigError("DRIP_RESEND_WEBHOOK_SECRET: expected the whsec_... signing secret of the Resend webhook")
    return text


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").replace(" ", ",").split(",") if x.strip())


def _retention_days(env: Mapping[str, str]) -> int | None:
    """0/unset keeps everything. Shorter than 30 days would delete the soft-bounce history the bounce policy
    counts over and the provider event ids that make a re-delivered webhook apply once."""
    days = _integer(env, "DRIP_EVENT_RETENTION_DAYS", 0, minimum=0)
    if 0 < days < 30:
        raise ConfigError(f"DRIP_EVENT_RETENTION_DAYS: at least 30 (the soft-bounce window and webhook "
                          f"replay protection need that history), got {days}")
    return days or None


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines as python-dotenv reads them (comments, quotes, `export`, escapes); a key without
    a value is left out, so the variable keeps its default."""
    try:
        values = dotenv_values(path, encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.start + 1} of the file); save it as UTF-8") from None
    return {key: value for key, value in values.items() if value is not None}


def _instance_secret(instance: Path) -> str:
    """Generated once and kept in instance/, so restarts keep sessions and unsubscribe links valid.

    Written to a temporary file and linked into place, so two processes starting together agree on one
    key and neither ever reads a half-written file.
    """
    path = instance / "secret_key"
    if not path.is_file():
        instance.mkdir(parents=True, exist_ok=True)
        tmp = instance / f".secret_key.{os.getpid()}.{secrets.token_hex(4)}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32))
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won the race: use its key
        finally:
            tmp.unlink(missing_ok=True)
    key = path.read_text().strip()
    if len(key) < 32:
        raise ConfigError(f"DRIP_SECRET_KEY: the generated key in {path} is empty or truncated; delete it or set "
                          "DRIP_SECRET_KEY")
    return key


_ENCODE_HINT = "percent-encode @ : / ? # in a password as %40 %3A %2F %3F %23"


def _database_url(text: str) -> str:
    text = text.strip()
    url = text
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if not (url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://")):
        raise ConfigError(f"DATABASE_URL: expected sqlite:///path or postgresql://user@host:port/db, "
                          f"got {mask_url(text)!r}")
    if url.startswith("postgresql"):
        parts = urlsplit(url)
        try:
            parts.port  # noqa: B018 - reading it is the check: urllib raises on a port that is not a number
        except ValueError:
            raise ConfigError(f"DATABASE_URL: cannot read host:port in {mask_url(text)!r}; expected "
                              f"postgresql://user:password@host:5432/db ({_ENCODE_HINT})") from None
        if not parts.hostname and "host=" not in parts.query:
            raise ConfigError(f"DATABASE_URL: no host in {mask_url(text)!r}; expected "
                              "postgresql://user:password@host:5432/db")
        if not parts.path.strip("/"):
            raise ConfigError(f"DATABASE_URL: no database name in {mask_url(text)!r}; expected "
                              "postgresql://user:password@host:5432/db")
    return url


def _email_url(url: str) -> str:
    """The URL's shape; each transport checks its own parts (a provider's key, region, options) at start."""
    url = url.strip()
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - reading it is the check: urllib raises on a port that is not a number
    except ValueError:
        raise ConfigError(f"DRIP_EMAIL_URL: cannot read host:port in {mask_url(url)!r}; expected e.g. "
                          f"smtp://user:password@host:587?starttls=true ({_ENCODE_HINT})") from None
    if parts.scheme not in EMAIL_SCHEMES:
        raise ConfigError(f"DRIP_EMAIL_URL: unknown transport in {mask_url(url)!r}; expected one of "
                          f"{', '.join(s + '://' for s in EMAIL_SCHEMES)} (see README, Configuration)")
    if parts.scheme in ("smtp", "smtps") and not parts.hostname:
        raise ConfigError(f"DRIP_EMAIL_URL: no host in {mask_url(url)!r}; expected e.g. smtp://host:587")
    return url


def _base_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(f"DRIP_BASE_URL: expected an http(s) URL, got {url!r}")
    return url.rstrip("/")


def _dns_server(text: str) -> tuple[str, int] | None:
    """DRIP_DNS_SERVER=IP or IP:PORT: the DNS server `drip doctor` asks (default: the system's)."""
    text = text.strip()
    if not text:
        return None
    host, _, port = text.rpartition(":") if text.count(":") == 1 else (text, "", "53")
    try:
        ipaddress.ip_address(host.strip("[]"))
        return host.strip("[]"), int(port)
    except ValueError:
        raise ConfigError(f"DRIP_DNS_SERVER: expected IP or IP:PORT such as 127.0.0.1:5353, got {text!r}") from None


def _rate_limit_storage(value: str) -> str:
    if value == "database":
        return value
    if urlsplit(value).scheme in ("redis", "rediss", "unix"):
        needs_extra("DRIP_RATE_LIMIT_STORAGE", "a Redis URL", "redis")
        return value
    raise ConfigError(f"DRIP_RATE_LIMIT_STORAGE: expected 'database' or redis://host:port/db, "
                      f"got {mask_url(value)!r}")


def _origins(text: str) -> tuple[str, ...]:
    """Exact origins only: a wildcard would let any site drive signups from its visitors' browsers."""
    out = []
    for item in filter(None, (part.strip().rstrip("/") for part in text.split(","))):
        parts = urlsplit(item)
        if parts.scheme not in ("http", "https") or not parts.netloc or "*" in item or parts.path:
            raise ConfigError(f"DRIP_CORS_ORIGINS: expected comma-separated origins like https://example.org "
                              f"(no wildcard, no path), got {item!r}")
        out.append(item)
    return tuple(out)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _number(env: Mapping[str, str], name: str, default: float, *, minimum: float) -> float:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected a number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def _integer(env: Mapping[str, str], name: str, default: int, *, minimum: int) -> int:
    raw = env.get(name)
    if raw in (None, ""):
        return default
    try:
        value = int(raw.strip())
    except ValueError:
        raise ConfigError(f"{name}: expected a whole number, got {raw!r}") from None
    if value < minimum:
        raise ConfigError(f"{name}: must be at least {minimum}, got {raw!r}")
    return value


def _metrics_token(env: Mapping[str, str]) -> str | None:
    """A token guessed is the send figures read by anyone: as long as the secret key's floor, never shown."""
    token = env.get("DRIP_METRICS_TOKEN") or None
    if token is not None and len(token) < 32:
        raise ConfigError(f"DRIP_METRICS_TOKEN: too short ({len(token)} characters, at least 32 needed); make one "
                          "with python3 -c 'import secrets; print(secrets.token_hex(32))'")
    return token


def _flag(env: Mapping[str, str], name: str) -> bool:
    """on/off: a value that is neither is a mistake, not a quiet 'off'."""
    value = env.get(name, "").strip().lower()
    if value not in ("", "1", "0", "true", "false", "yes", "no", "on", "off"):
        raise ConfigError(f"{name}: expected on or off, got {env[name]!r}")
    return value in ("1", "true", "yes", "on")


def _address(env: Mapping[str, str], name: str, *, bare: bool = False) -> str | None:
    """An email address, with a display name ('Ana <ana@example.org>') unless `bare`."""
    text = _one_line(env.get(name, ""))
    if not text:
        return None
    display, address = parseaddr(text)
    local, at, domain = address.rpartition("@")
    if not (at and local and domain) or (bare and display):
        example = "unsubscribe@example.org" if bare else "'Ana from Example <ana@example.org>' or ana@example.org"
        raise ConfigError(f"{name}: {text!r} is not an email address; expected e.g. {example}")
    return text


def _feedback_id_sender(text: str) -> str | None:
    text = _one_line(text)
    if ":" in text:
        raise ConfigError(f"DRIP_FEEDBACK_ID_SENDER: no colon allowed (it is the last field of "
                          f"Feedback-ID: campaign:step:sender), got {text!r}")
    return text or None


def _folder(env: Mapping[str, str], name: str, default: Path) -> Path:
    path = Path(env.get(name) or default)
    if not path.is_dir():
        if not env.get(name):  # the default beside the code: a copy installed without its source folder
            raise ConfigError(f"{name}: {path} is not a folder: Drip runs from its source folder, which holds "
                              "the campaigns; install it there with `make install` (or `pip install -e .`), "
                              f"or point {name} at the folder that holds the campaigns")
        raise ConfigError(f"{name}: {path} is not a folder; point it at the folder that holds the campaigns "
                          "(one sub-folder with a campaign.toml each)")
    return path
