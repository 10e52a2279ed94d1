"""Shared fixtures: real databases (SQLite always, PostgreSQL when DRIP_TEST_POSTGRES_URL is set), a real
SMTP server (aiosmtpd) on loopback with scriptable replies, and settings/runtime/app built from them.

PostgreSQL: one throwaway database per test session, migrated once, truncated before each test. If the
variable is set and the server cannot be reached, every PostgreSQL test errors: it never skips.
"""
from __future__ import annotations

import email
import email.policy
import os
import secrets
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from email.message import EmailMessage
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from sqlalchemy import create_engine, text

from service.core.config import Settings
from service.core.migrate import upgrade
from service.core.models import Base
from service.runtime import Runtime, build_runtime

PG_ENV = "DRIP_TEST_POSTGRES_URL"
ROOT = Path(__file__).resolve().parent.parent


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends = ["sqlite"] + (["postgresql"] if os.environ.get(PG_ENV) else [])
        if metafunc.definition.get_closest_marker("postgresql_only"):
            backends = backends[1:]  # collected only when the PostgreSQL half runs (always in CI)
        metafunc.parametrize("backend", backends, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Without DRIP_TEST_POSTGRES_URL, PostgreSQL-only tests are deselected (not skipped): `.ci/run`
    always sets it, so in CI they always run."""
    if os.environ.get(PG_ENV):
        return
    dropped = [item for item in items if item.get_closest_marker("postgresql_only")]
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = [item for item in items if not item.get_closest_marker("postgresql_only")]


def in_one_window(seconds: int, needed: float = 10.0) -> None:
    """Signup rate limits count in fixed windows of the real clock, each starting at a multiple of
    `seconds` since the epoch. A test whose requests must all fall in one window waits for the next one
    when fewer than `needed` seconds are left, so it cannot fail only because it ran at the turn of a
    minute or an hour."""
    left = seconds - time.time() % seconds
    if left < needed:
        time.sleep(left + 0.1)


def tampered(link: str) -> str:
    """`link` with one character of its signature changed. The third character from the end is always a
    whole character of the base64 signature: the last one carries a few padding bits the decoder
    ignores, so changing it can leave the signature valid (it once did, in about one run in 1,400)."""
    changed = "A" if link[-3] != "A" else "B"
    return link[:-3] + changed + link[-2:]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- databases ---------------------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "drip.sqlite3"
    upgrade(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def postgres_database() -> Iterator[str]:
    base = os.environ.get(PG_ENV)
    if not base:
        raise RuntimeError(f"{PG_ENV} is not set")
    base = base.replace("postgresql://", "postgresql+psycopg://", 1)
    name = f"drip_test_{os.getpid()}_{secrets.token_hex(3)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:  # fails loudly if PostgreSQL is unreachable
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = base.rsplit("/", 1)[0] + f"/{name}"
    upgrade(url)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture
def database_url(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if backend == "sqlite":
        path = tmp_path / "drip.sqlite3"
        shutil.copy(request.getfixturevalue("sqlite_template"), path)
        return f"sqlite:///{path}"
    return emptied(request.getfixturevalue("postgres_database"))


def emptied(url: str) -> str:
    """The session's PostgreSQL database with every table emptied (ids restart), for a test of its own."""
    engine = create_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))
    engine.dispose()
    return url


# -- SMTP --------------------------------------------------------------------------------------------
class SmtpRecorder:
    """An aiosmtpd handler that keeps every accepted message and can be told how to answer.

    `script(address, stage, reply)` queues one reply ("451 4.3.0 try later") for that recipient at
    RCPT or DATA; each queued reply is used once, then the server accepts normally.

    It announces PIPELINING (RFC 2920), so every test exercises the transport's pipelined path: aiosmtpd
    reads commands one at a time from its buffer, which serves a pipelining client as the RFC asks.
    `pipelining = False` stops announcing it (smtplib's one-command-at-a-time dialogue); `ehlos` counts
    greetings, so tests see reconnections.
    """

    def __init__(self, *, pipelining: bool = True) -> None:
        self.accepted: list[tuple[str, list[str], bytes]] = []
        self._script: dict[tuple[str, str], list[str]] = {}
        self.lock = threading.Lock()
        self.data_delay = 0.0
        self.pipelining = pipelining
        self.ehlos = 0

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        self.ehlos += 1
        session.host_name = hostname
        return [*responses[:-1], "250-PIPELINING", responses[-1]] if self.pipelining else responses

    def script(self, address: str, stage: str, *replies: str) -> None:
        with self.lock:
            self._script.setdefault((address.lower(), stage), []).extend(replies)

    def _next(self, address: str, stage: str) -> str | None:
        with self.lock:
            queue = self._script.get((address.lower(), stage))
            return queue.pop(0) if queue else None

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        reply = self._next("", "MAIL")  # script("", "MAIL", reply) refuses the next envelope sender
        if reply:
            return reply
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 OK"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        reply = self._next(address, "RCPT")
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        for rcpt in envelope.rcpt_tos:
            reply = self._next(rcpt, "DATA")
            if reply:
                return reply
        if self.data_delay:
            import asyncio

            await asyncio.sleep(self.data_delay)
        with self.lock:
            self.accepted.append((envelope.mail_from, list(envelope.rcpt_tos), envelope.original_content))
        return "250 2.0.0 OK queued"

    def messages(self, to: str | None = None) -> list[EmailMessage]:
        with self.lock:
            items = list(self.accepted)
        parsed = [email.message_from_bytes(raw, policy=email.policy.default) for _f, _r, raw in items]
        if to is None:
            return parsed
        return [m for m, (_f, rcpts, _raw) in zip(parsed, items, strict=True) if to.lower() in
                (r.lower() for r in rcpts)]

    def wait_for(self, count: int, timeout: float = 20) -> list[EmailMessage]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if len(self.accepted) >= count:
                break
            time.sleep(0.05)
        return self.messages()


class SmtpServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.handler = SmtpRecorder()
        self.controller: Controller | None = None

    @property
    def url(self) -> str:
        return f"smtp://127.0.0.1:{self.port}?timeout=5"

    def start(self) -> None:
        self.controller = Controller(self.handler, hostname="127.0.0.1", port=self.port, ready_timeout=10)
        self.controller.start()

    def stop(self) -> None:
        if self.controller is not None:
            self.controller.stop()
            self.controller = None


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer()
    server.start()
    yield server
    server.stop()


# -- settings, runtime, app --------------------------------------------------------------------------
@pytest.fixture
def settings(database_url: str, smtp: SmtpServer, tmp_path: Path) -> Settings:
    return Settings(
        database_url=Settings.from_env({"DATABASE_URL": database_url, "DRIP_SECRET_KEY": "k" * 32}).database_url,
        email_url=smtp.url,
        base_url="https://drip.example.org",
        secret_key="test-" + secrets.token_hex(16),
        postal_address="Back Pain Warriors, 12 Test Street, Springfield",
        instance_dir=tmp_path / "instance",
        signup_rate_limit=None,
        signup_address_rate_limit=None,  # tests of the limits switch them on themselves
    )


@pytest.fixture
def runtime(settings: Settings) -> Iterator[Runtime]:
    rt = build_runtime(settings)
    yield rt
    rt.sessions.kw["bind"].dispose()


@pytest.fixture
def app(runtime: Runtime):
    from service.app import create_app

    application = create_app(runtime=runtime)
    application.config["TESTING"] = True
    return application


@pytest.fixture
def client(app):
    return app.test_client()


def at(text_: str) -> datetime:
    """A UTC moment from ISO text, for the controllable clock."""
    value = datetime.fromisoformat(text_)
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def with_settings(rt: Runtime, **changes: object) -> Runtime:
    return build_runtime(replace(rt.settings, **changes))


# -- browser (Debian's Chromium through Playwright; never a downloaded browser) -------------------------
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-proxy-server"]


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        instance = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
        yield instance
        instance.close()


@pytest.fixture
def page(browser):
    context = browser.new_context(timezone_id="Europe/Paris")
    yield context.new_page()
    context.close()
