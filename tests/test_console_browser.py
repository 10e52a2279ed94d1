"""The operator console in a real browser (headless Chromium via Playwright) against `drip serve` as a subprocess:
log in, find a reader's welcome in the send log by address, open it and see its events and the email as sent,
open the reader's page, pause and resume the campaign, export the CSV, and keep a screenshot of each main page."""
from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect
from sqlalchemy import select
from test_browser import CAMPAIGN, server, sign_up, welcome_for  # noqa: F401  (server is a fixture)

from service.core.db import utcnow
from service.core.models import CampaignState
from service.operator.accounts import add_user

pytestmark = pytest.mark.browser
PASSWORD = "correct horse battery"


def shoot(tab: Page, tmp_path: Path, name: str) -> None:
    shot = tmp_path / f"{name}.png"
    tab.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes().startswith(b"\x89PNG")


def log_in(tab: Page, base: str, runtime) -> None:
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    tab.goto(f"{base}/admin/messages")
    expect(tab).to_have_url(re.compile(r"/admin/login"))
    tab.get_by_label("Email").fill("ops@example.org")
    tab.get_by_label("Password").fill(PASSWORD)
    tab.get_by_role("button", name="Log in").click()
    expect(tab.get_by_role("heading", name="Send log")).to_be_visible()


def wait_until_recorded(runtime, timeout: float = 15) -> None:
    """The SMTP server has the email a moment before Drip records the outcome; pages show the record."""
    import time

    from service.core.models import Message

    deadline = time.monotonic() + timeout
    while True:
        with runtime.sessions() as s:
            if s.scalar(select(Message.status)) == "sent":
                return
        assert time.monotonic() < deadline, "the welcome's outcome was never recorded"
        time.sleep(0.1)


def test_operator_finds_a_welcome_and_runs_the_campaign(server, page, smtp, runtime, tmp_path) -> None:  # noqa: F811
    """The whole operator path in one browser session, with a screenshot of each page on the way."""
    sign_up(page, server, "reader@example.org")
    welcome_for(smtp, "reader@example.org")
    wait_until_recorded(runtime)
    log_in(page, server, runtime)
    welcome = runtime.campaigns[CAMPAIGN].steps[0]

    page.get_by_label("Address").fill("reader@")
    page.get_by_role("button", name="Filter").click()
    rows = page.locator("table.log tbody tr")
    expect(rows).to_have_count(1)
    expect(rows.first).to_contain_text(welcome.key)
    expect(rows.first.locator(".status")).to_have_text("sent")
    shoot(page, tmp_path, "send-log")

    with page.expect_download() as info:
        page.get_by_role("link", name="Export CSV").click()
    exported = list(csv.DictReader(open(info.value.path(), newline="")))
    assert [(r["to"], r["step"], r["status"]) for r in exported] == [("reader@example.org", welcome.key, "sent")]

    rows.first.get_by_role("link", name="reader@example.org").click()
    expect(page.get_by_role("heading", name=re.compile(r"^Message \d+"))).to_be_visible()
    history = page.locator("table.history")
    for event in ("queued", "attempt", "sent"):
        expect(history).to_contain_text(event)
    expect(page.locator("table.headers")).to_contain_text("List-Unsubscribe-Post")
    frame = page.frame_locator("iframe.email-html")
    expect(frame.locator("body")).to_contain_text("Back Pain Warriors, 12 Test Street")
    shoot(page, tmp_path, "message")

    page.get_by_role("link", name="Ada", exact=True).click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    expect(page.locator("table.timeline")).to_contain_text("signup")
    shoot(page, tmp_path, "subscriber")

    page.get_by_role("link", name="Campaigns").click()
    shoot(page, tmp_path, "campaigns")
    page.get_by_role("link", name=runtime.campaigns[CAMPAIGN].title).click()
    expect(page.locator("svg.chart-svg")).to_have_count(2)
    page.get_by_role("button", name="Pause campaign").click()
    expect(page.get_by_role("button", name="Resume campaign")).to_be_visible()
    expect(page.locator("h1 .status")).to_have_text("paused")
    assert _paused(runtime) is True
    shoot(page, tmp_path, "campaign-paused")
    page.get_by_role("button", name="Resume campaign").click()
    expect(page.get_by_role("button", name="Pause campaign")).to_be_visible()
    assert _paused(runtime) is False

    page.set_viewport_size({"width": 390, "height": 800})  # a phone
    page.goto(f"{server}/admin/messages")
    shoot(page, tmp_path, "send-log-phone")
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 400  # wide tables scroll inside their box, the page does not


def _paused(runtime) -> bool:
    with runtime.sessions() as s:
        return s.scalar(select(CampaignState.paused).where(CampaignState.campaign == CAMPAIGN))


def test_email_html_cannot_run_script_in_the_console(server, page, smtp, runtime, tmp_path) -> None:  # noqa: F811
    """An email whose HTML carries script is shown, but the script never runs: not in its frame, not in the page."""
    from email.message import EmailMessage

    from service.core.models import Message, MessageContent

    sign_up(page, server, "victim@example.org")
    welcome_for(smtp, "victim@example.org")
    evil = EmailMessage()
    evil["Subject"] = "evil"
    evil.set_content("plain part")
    evil.add_alternative("<p id='p'>static text</p><script>document.getElementById('p').textContent='ran';"
                         "try{top.document.title='pwned'}catch(e){}</script>"
                         "<img src=x onerror=\"document.body.append('ran-onerror')\">", subtype="html")
    import time

    deadline = time.monotonic() + 15  # the server accepts the email a moment before Drip records it
    while True:
        with runtime.sessions() as s, s.begin():
            mid = s.scalar(select(Message.id))
            content = s.get(MessageContent, mid) if mid else None
            if content is not None:
                content.raw = evil.as_bytes()
                break
        assert time.monotonic() < deadline, "the welcome's outcome was never recorded"
        time.sleep(0.1)
    log_in(page, server, runtime)
    page.goto(f"{server}/admin/messages/{mid}")
    frame = page.frame_locator("iframe.email-html")
    expect(frame.locator("#p")).to_have_text("static text")
    page.wait_for_timeout(300)
    assert "ran" not in frame.locator("body").inner_text()
    assert "pwned" not in page.title() and page.title().startswith(f"Message {mid}")
