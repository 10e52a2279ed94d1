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
class Settings:
    # Issue 7: URLs may carry passwords; keep them out of repr() (and so out of logs and tracebacks).
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
    # Issue 7 (hardening): per-address signup limit, where limit counters live, and CORS origins for /signup.
    signup_address_rate_limit: RateLimit | None = RateLimit(10, 3600)
    rate_limit_storage: str = "database"  # or redis://host:port/db
    cors_origins: tuple[str, ...] = ()

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
            signup_address_rate_limit=RateLimit.parse(env.get("DRIP_SIGNUP_ADDRESS_RATE_LIMIT", "10/hour"),
                                                      "DRIP_SIGNUP_ADDRESS_RATE_LIMIT"),
            rate_limit_storage=_rate_limit_storage(env.get("DRIP_RATE_LIMIT_STORAGE") or "database"),
            cors_origins=_origins(env.get("DRIP_CORS_ORIGINS", "")),
        )


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
