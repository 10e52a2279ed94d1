"""One frozen Settings object built from the environment (and an optional `.env` file).

The web app, the worker, the CLI and Alembic all read the same object; tests build it directly with
`Settings.from_env({...})` or `dataclasses.replace`. Bad values fail fast and name the variable.
"""
from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PLACEHOLDER_POSTAL_ADDRESS = "Postal address not configured yet (set DRIP_POSTAL_ADDRESS)"


class ConfigError(ValueError):
    """A setting is missing or malformed; the message names the variable."""


@dataclass(frozen=True)
class RateLimit:
    count: int
    seconds: int

    @classmethod
    def parse(cls, text: str) -> RateLimit | None:
        text = text.strip().lower()
        if text in ("off", "none", "0", ""):
            return None
        m = re.fullmatch(r"(\d+)\s*/\s*(second|minute|hour|day)", text)
        if not m:
            raise ConfigError(f"DRIP_SIGNUP_RATE_LIMIT: expected e.g. '10/minute' or 'off', got {text!r}")
        unit = {"second": 1, "minute": 60, "hour": 3600, "day": 86400}[m.group(2)]
        return cls(int(m.group(1)), unit)


@dataclass(frozen=True)
class Settings:
    database_url: str
    email_url: str
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
    lease_seconds: int = 300
    batch_size: int = 200
    max_attempts: int = 12
    retry_base_seconds: int = 60
    retry_cap_seconds: int = 6 * 3600
    unsubscribe_max_age_days: int = 400
    unsubscribe_mailto: str | None = None
    max_body_bytes: int = 64 * 1024
    dkim_domain: str | None = None
    dkim_selector: str | None = None
    dkim_key_file: str | None = None
    # issue 4: delivery tracking (docs/providers.md)
    bounce_domain: str | None = None
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

    @property
    def postal_address_is_placeholder(self) -> bool:
        return self.postal_address == PLACEHOLDER_POSTAL_ADDRESS

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, *, dotenv: Path | None = Path(".env")) -> Settings:
        env: dict[str, str] = {}
        if environ is None:
            if dotenv is not None and dotenv.is_file():
                env.update(read_dotenv(dotenv))
            env.update(os.environ)
        else:
            env.update(environ)
        instance = Path(env.get("DRIP_INSTANCE_DIR", "instance"))
        return cls(
            database_url=_database_url(env.get("DATABASE_URL") or f"sqlite:///{instance / 'drip.sqlite3'}"),
            email_url=_email_url(env.get("DRIP_EMAIL_URL") or "file://outbox"),
            base_url=_base_url(env.get("DRIP_BASE_URL") or "http://127.0.0.1:8000"),
            secret_key=env.get("DRIP_SECRET_KEY") or _instance_secret(instance),
            postal_address=_one_line(env.get("DRIP_POSTAL_ADDRESS") or PLACEHOLDER_POSTAL_ADDRESS),
            from_address=_one_line(env["DRIP_FROM"]) if env.get("DRIP_FROM") else None,
            tick_seconds=_number(env, "DRIP_TICK_SECONDS", 5.0, minimum=0.2),
            signup_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_RATE_LIMIT", "60/minute")),
            templates_dir=Path(env.get("DRIP_TEMPLATES_DIR") or PROJECT_ROOT / "email_templates"),
            instance_dir=instance,
            default_campaign=env.get("DRIP_DEFAULT_CAMPAIGN", "back-pain-bundle"),
            record_ip=_flag(env, "DRIP_RECORD_IP"),
            lease_seconds=int(_number(env, "DRIP_LEASE_SECONDS", 300, minimum=5)),
            batch_size=int(_number(env, "DRIP_BATCH_SIZE", 200, minimum=1)),
            max_attempts=int(_number(env, "DRIP_MAX_ATTEMPTS", 12, minimum=1)),
            unsubscribe_mailto=env.get("DRIP_UNSUBSCRIBE_MAILTO") or None,
            dkim_domain=env.get("DRIP_DKIM_DOMAIN") or None,
            dkim_selector=env.get("DRIP_DKIM_SELECTOR") or None,
            dkim_key_file=env.get("DRIP_DKIM_KEY_FILE") or None,
            **_delivery_settings(env),
        )


def _delivery_settings(env: Mapping[str, str]) -> dict:
    """Issue 4's variables: bounce handling policy, tracking, and one webhook secret per provider."""
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
    """Generated once and kept in instance/, so restarts keep sessions and unsubscribe links valid."""
    path = instance / "secret_key"
    if path.is_file():
        return path.read_text().strip()
    instance.mkdir(parents=True, exist_ok=True)
    key = secrets.token_hex(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key)
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
