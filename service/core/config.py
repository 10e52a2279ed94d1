"""One frozen Settings object built from the environment (and an optional `.env` file).

The web app, the worker, the CLI and Alembic all read the same object; tests build it directly with
`Settings.from_env({...})` or `dataclasses.replace`. Bad values fail fast and name the variable.
"""
from __future__ import annotations

import ipaddress
import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from urllib.parse import urlsplit

from service.core.dkim_keys import load_keys
from service.core.errors import ConfigError

PROJECT_ROOT = Path(__file__).resolve().parents[2]
PLACEHOLDER_POSTAL_ADDRESS = "Postal address not configured yet (set DRIP_POSTAL_ADDRESS)"


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
        database_url = _database_url(env.get("DATABASE_URL") or f"sqlite:///{instance / 'drip.sqlite3'}")
        secret = env.get("DRIP_SECRET_KEY", "")
        if not secret and not database_url.startswith("sqlite"):
            # With PostgreSQL the web and the workers usually run on different machines: a key generated on
            # each would make every unsubscribe link signed by a worker fail on the web.
            raise ConfigError("DRIP_SECRET_KEY: required with PostgreSQL (the same value on every web and "
                              "worker process); e.g. python3 -c 'import secrets; print(secrets.token_hex(32))'")
        if secret and len(secret) < 16:
            raise ConfigError("DRIP_SECRET_KEY: too short; use at least 32 random characters")
        settings = cls(
            database_url=database_url,
            email_url=_email_url(env.get("DRIP_EMAIL_URL") or f"file://{PROJECT_ROOT / 'outbox'}"),
            base_url=_base_url(env.get("DRIP_BASE_URL") or "http://127.0.0.1:8000"),
            secret_key=secret or _instance_secret(instance),
            postal_address=_one_line(env.get("DRIP_POSTAL_ADDRESS") or PLACEHOLDER_POSTAL_ADDRESS),
            from_address=_one_line(env["DRIP_FROM"]) if env.get("DRIP_FROM") else None,
            tick_seconds=_number(env, "DRIP_TICK_SECONDS", 5.0, minimum=0.2),
            signup_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_RATE_LIMIT", "60/minute")),
            templates_dir=Path(env.get("DRIP_TEMPLATES_DIR") or PROJECT_ROOT / "email_templates"),
            instance_dir=instance,
            default_campaign=env.get("DRIP_DEFAULT_CAMPAIGN", "back-pain-bundle"),
            record_ip=_flag(env, "DRIP_RECORD_IP"),
            trusted_proxies=int(_number(env, "DRIP_TRUSTED_PROXIES", 0, minimum=0)),
            lease_seconds=int(_number(env, "DRIP_LEASE_SECONDS", 300, minimum=5)),
            batch_size=int(_number(env, "DRIP_BATCH_SIZE", 500, minimum=1)),
            max_attempts=int(_number(env, "DRIP_MAX_ATTEMPTS", 12, minimum=1)),
            event_retention_days=_retention_days(env),
            metrics_token=env.get("DRIP_METRICS_TOKEN") or None,
            unsubscribe_mailto=env.get("DRIP_UNSUBSCRIBE_MAILTO") or None,
            dkim_domain=env.get("DRIP_DKIM_DOMAIN") or None,
            dkim_selector=env.get("DRIP_DKIM_SELECTOR") or None,
            dkim_key_file=env.get("DRIP_DKIM_KEY_FILE") or None,
            dkim_selector_2=env.get("DRIP_DKIM_SELECTOR_2") or None,
            dkim_key_file_2=env.get("DRIP_DKIM_KEY_FILE_2") or None,
            feedback_id_sender=_one_line(env.get("DRIP_FEEDBACK_ID_SENDER", "")) or None,
            reply_to=_one_line(env["DRIP_REPLY_TO"]) if env.get("DRIP_REPLY_TO") else None,
            send_limits=SendLimits.parse(env.get("DRIP_SEND_LIMITS", ""), env.get("DRIP_WARMUP", "")),
            dns_server=_dns_server(env.get("DRIP_DNS_SERVER", "")),
            **_delivery_settings(env),
            max_emails_per_day=int(_number(env, "DRIP_MAX_EMAILS_PER_DAY", 1, minimum=0)),
            confirm_expiry_days=int(_number(env, "DRIP_CONFIRM_EXPIRY_DAYS", 7, minimum=1)),
            confirm_cooldown_minutes=int(_number(env, "DRIP_CONFIRM_COOLDOWN_MINUTES", 60, minimum=1)),
            signup_address_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_ADDRESS_RATE_LIMIT", "10/hour"),
                                                      "DRIP_SIGNUP_ADDRESS_RATE_LIMIT"),
            rate_limit_storage=_rate_limit_storage(env.get("DRIP_RATE_LIMIT_STORAGE") or "database"),
            cors_origins=_origins(env.get("DRIP_CORS_ORIGINS", "")),
        )
        load_keys(settings)  # a bad DKIM key stops start-up here, naming the variable
        return settings


def database_url_from_env(environ: Mapping[str, str] | None = None) -> str:
    """Only DATABASE_URL (for `drip db upgrade`, which needs no secret key)."""
    env = dict(read_dotenv(Path(".env"))) if environ is None and Path(".env").is_file() else {}
    env.update(os.environ if environ is None else environ)
    instance = PROJECT_ROOT / env.get("DRIP_INSTANCE_DIR", "instance")
    return _database_url(env.get("DATABASE_URL") or f"sqlite:///{instance / 'drip.sqlite3'}")


def _delivery_settings(env: Mapping[str, str]) -> dict:
    """Delivery tracking variables: bounce handling policy, tracking, and one webhook secret per provider."""
    domain = env.get("DRIP_BOUNCE_DOMAIN") or None
    if domain and not re.fullmatch(r"[A-Za-z0-9.-]+\.[A-Za-z]{2,}", domain):
        raise ConfigError(f"DRIP_BOUNCE_DOMAIN: expected a domain such as bounces.example.com, got {domain!r}")
    tracking = env.get("DRIP_TRACKING", "off").strip().lower()
    if tracking not in ("on", "off", "1", "0", "true", "false", "yes", "no", ""):
        raise ConfigError(f"DRIP_TRACKING: expected on or off, got {tracking!r}")
    return dict(
        bounce_domain=domain,
        tracking=tracking in ("on", "1", "true", "yes"),
        soft_bounce_threshold=int(_number(env, "DRIP_SOFT_BOUNCE_THRESHOLD", 3, minimum=1)),
        soft_bounce_window_days=int(_number(env, "DRIP_SOFT_BOUNCE_WINDOW_DAYS", 30, minimum=1)),
        deferred_deadline_hours=_number(env, "DRIP_DEFERRED_DEADLINE_HOURS", 72, minimum=1),
        sendgrid_webhook_key=env.get("DRIP_SENDGRID_WEBHOOK_KEY") or None,
        mailgun_signing_key=env.get("DRIP_MAILGUN_SIGNING_KEY") or None,
        postmark_webhook_user=env.get("DRIP_POSTMARK_WEBHOOK_USER") or None,
        postmark_webhook_password=env.get("DRIP_POSTMARK_WEBHOOK_PASSWORD") or None,
        resend_webhook_secret=env.get("DRIP_RESEND_WEBHOOK_SECRET") or None,
        sns_topic_arns=_list(env.get("DRIP_SNS_TOPIC_ARNS")),
        sns_cert_hosts=_list(env.get("DRIP_SNS_CERT_HOSTS")),
    )


def _list(text: str | None) -> tuple[str, ...]:
    return tuple(x.strip() for x in (text or "").replace(" ", ",").split(",") if x.strip())


def _retention_days(env: Mapping[str, str]) -> int | None:
    """0/unset keeps everything. Shorter than 30 days would delete the soft-bounce history the bounce policy
    counts over and the provider event ids that make a re-delivered webhook apply once."""
    days = int(_number(env, "DRIP_EVENT_RETENTION_DAYS", 0, minimum=0))
    if 0 < days < 30:
        raise ConfigError(f"DRIP_EVENT_RETENTION_DAYS: at least 30 (the soft-bounce window and webhook "
                          f"replay protection need that history), got {days}")
    return days or None


def read_dotenv(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; `#` comments; optional single or double quotes around the value."""
    out: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        out[key.strip().removeprefix("export ").strip()] = value
    return out


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


def _database_url(url: str) -> str:
    if url.startswith("postgres://"):
        url = "postgresql://" + url[len("postgres://"):]
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://"):]
    if not (url.startswith("sqlite:///") or url.startswith("postgresql+psycopg://")):
        raise ConfigError(f"DATABASE_URL: expected sqlite:///path or postgresql://user@host:port/db, got {url!r}")
    return url


def _email_url(url: str) -> str:
    scheme = urlsplit(url).scheme
    if not scheme:
        raise ConfigError(f"DRIP_EMAIL_URL: expected a URL such as file:///dir or smtp://host:port, got {url!r}")
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
    if value == "database" or urlsplit(value).scheme in ("redis", "rediss", "unix"):
        return value
    raise ConfigError(f"DRIP_RATE_LIMIT_STORAGE: expected 'database' or redis://host:port/db, got {value!r}")


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


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in ("1", "true", "yes", "on")
