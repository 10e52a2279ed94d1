"""End to end through a real browser: headless Chromium (Playwright) drives `drip serve` running as a subprocess,
which stores to the test database and sends through the real aiosmtpd server from conftest.

Covers the reader's path: the signup form (with the time zone filled by timezone.js), the thank-you page, the
welcome email, the unsubscribe page (GET only asks, the button unsubscribes), a rejected address, a screenshot.
"""
from __future__ import annotations

import os
import re
import secrets
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from conftest import SmtpServer, free_port
from playwright.sync_api import Page
from sqlalchemy import select

from service.core.models import Consent, Subscriber

pytestmark = pytest.mark.browser

DRIP = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "drip"
CAMPAIGN = "back-pain-bundle"


def _healthy(url: str) -> bool:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy
    try:
        with opener.open(f"{url}/healthz", timeout=2) as resp:
            return resp.status == 200
    except OSError:
        return False


@contextmanager
def serving(database_url: str, smtp_url: str, tmp_path: Path) -> Iterator[tuple[str, dict[str, str]]]:
    """`drip serve` (web app + scheduler) on a free loopback port; yields its base URL and environment."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("DRIP_") and k != "DATABASE_URL"}
    env.update(DATABASE_URL=database_url, DRIP_EMAIL_URL=smtp_url, DRIP_BASE_URL=base,
               DRIP_SECRET_KEY=secrets.token_hex(32), DRIP_TICK_SECONDS="1", DRIP_SIGNUP_RATE_LIMIT="off",
               DRIP_POSTAL_ADDRESS="Back Pain Warriors, 12 Test Street, Springfield")
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen([str(DRIP), "serve", "--host", "127.0.0.1", "--port", str(port)],
                                env=env, cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while not _healthy(base):
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"drip serve did not become healthy:\n{log_path.read_text(errors='replace')}")
            time.sleep(0.2)
        yield base, env
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def server(database_url: str, smtp: SmtpServer, tmp_path: Path) -> Iterator[str]:
    with serving(database_url, smtp.url, tmp_path) as (base, _env):
        yield base


def sign_up(page: Page, base: str, address: str) -> None:
    page.goto(f"{base}/")
    page.fill("input[name=name]", "Ada")
    page.fill("input[name=email]", address)
    page.click("button[type=submit]")
    page.wait_for_url(re.compile(rf"/thanks/{CAMPAIGN}"))  # the home page form is this campaign's


def welcome_for(smtp: SmtpServer, address: str):
    smtp.handler.wait_for(1, timeout=20)
    found = smtp.handler.messages(to=address)
    assert found, f"no email reached the SMTP server for {address} within 20 s"
    return found[0]


def unsubscribe_url(message) -> str:
    match = re.search(r"<(https?://[^>]+)>", str(message["List-Unsubscribe"]))
    assert match, f"no http URL in List-Unsubscribe: {message['List-Unsubscribe']!r}"
    return match.group(1)


def subscriber(runtime, address: str) -> Subscriber:
    with runtime.sessions() as session:
        return session.scalars(select(Subscriber).where(Subscriber.email_key == address.lower())).one()


def test_signup_in_browser_sends_welcome_and_records_timezone_and_consent(server, page, smtp, runtime) -> None:
    """A reader signs up through the home page form and gets the thank-you page, the welcome email and a consent."""
    campaign = runtime.campaigns[CAMPAIGN]
    page.goto(f"{server}/")
    assert page.locator("h1").inner_text() == campaign.title
    assert page.locator("form.signup-form").is_visible()
    sign_up(page, server, "ada@example.org")
    assert page.url.removeprefix(server).startswith(f"/thanks/{CAMPAIGN}")
    assert page.locator("h1").inner_text() == campaign.thank_you_title

    message = welcome_for(smtp, "ada@example.org")
    assert message["Subject"] == campaign.steps[0].subject
    assert message.get_body(preferencelist=("plain",)) is not None
    assert message.get_body(preferencelist=("html",)) is not None
    assert unsubscribe_url(message).startswith(f"{server}/unsubscribe/")

    ada = subscriber(runtime, "ada@example.org")
    assert ada.timezone == "Europe/Paris"
    assert ada.name == "Ada"
    with runtime.sessions() as session:
        consents = session.scalars(select(Consent).where(Consent.subscriber_id == ada.id)).all()
    assert [c.campaign for c in consents] == [CAMPAIGN]
    assert consents[0].source == "form"
    assert consents[0].user_agent == page.evaluate("navigator.userAgent")


def test_unsubscribe_link_asks_first_then_button_unsubscribes(server, page, smtp, runtime) -> None:
    """Opening the email's unsubscribe link only asks (scanners must not unsubscribe); the button does it."""
    sign_up(page, server, "bea@example.org")
    url = unsubscribe_url(welcome_for(smtp, "bea@example.org"))

    response = page.goto(url)
    assert response is not None and response.status == 200
    button = page.get_by_role("button", name="Unsubscribe")
    assert button.is_visible()
    assert subscriber(runtime, "bea@example.org").status == "active"

    button.click()
    page.locator("h1", has_text="You are unsubscribed").wait_for(timeout=15000)  # same-URL POST: wait for it
    bea = subscriber(runtime, "bea@example.org")
    assert bea.status == "unsubscribed"
    assert bea.unsubscribed_at is not None


def test_invalid_address_shows_error_and_stores_nothing(server, page, runtime) -> None:
    """An address the server rejects brings the form back with an error, and nothing is stored."""
    page.goto(f"{server}/")
    page.fill("input[name=name]", "Ada")
    page.evaluate("document.querySelector('form.signup-form').noValidate = true")  # get past type=email
    page.fill("input[name=email]", "not-an-email")
    with page.expect_response(lambda r: r.request.method == "POST") as info:
        page.click("button[type=submit]")
    assert info.value.status == 400
    page.wait_for_load_state()
    error = page.locator(".error")
    assert error.is_visible()
    assert "email" in error.inner_text().lower()
    assert error.get_attribute("data-field") == "email"
    assert page.locator("input[name=email]").input_value() == "not-an-email"
    with runtime.sessions() as session:
        assert session.scalars(select(Subscriber)).all() == []


def test_home_page_screenshot(server, page, tmp_path: Path) -> None:
    """A screenshot of the home page for humans to look at; only checked to be a non-empty PNG."""
    page.goto(f"{server}/")
    shot = tmp_path / "home.png"
    page.screenshot(path=str(shot), full_page=True)
    data = shot.read_bytes()
    assert len(data) > 1000
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
