"""The reader's side in a real browser: headless Chromium drives `drip serve` (a subprocess sending through
the real aiosmtpd server); `drip tick --now` is the controllable clock.

Covers: a received email's HTML at 320/375/600 px (screenshots saved to tmp_path, no horizontal overflow, alt
text on every image); the view-in-browser link shows the same content and its links work; the preference page
walk (snooze, switch to monthly, leave one campaign) and what arrives when afterwards; a tampered link.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from conftest import SmtpServer, tampered
from playwright.sync_api import expect
from sqlalchemy import select
from test_browser import serving, sign_up

from service.core.models import Enrollment, Subscriber

pytestmark = pytest.mark.browser

DRIP = Path(__file__).resolve().parent.parent / ".venv" / "bin" / "drip"
TOO_WIDE = ("[...document.querySelectorAll('*')].filter(e => e.getBoundingClientRect().right > innerWidth + 0.5)"
            ".map(e => e.tagName + '.' + e.className)")
OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # loopback only, never a proxy


class Drip:
    """A running `drip serve` and the environment to run more `drip` commands against the same database."""

    def __init__(self, base: str, env: dict[str, str], cwd: Path) -> None:
        self.base, self.env, self.cwd = base, env, cwd

    def tick(self, now) -> str:
        out = subprocess.run([str(DRIP), "tick", "--now", now.isoformat()], env=self.env, cwd=self.cwd,
                             capture_output=True, text=True, timeout=60, check=True)
        return out.stdout


@pytest.fixture
def drip(database_url: str, smtp: SmtpServer, tmp_path: Path) -> Iterator[Drip]:
    with serving(database_url, smtp.url, tmp_path) as (base, env):
        yield Drip(base, env, tmp_path)


def json_signup(base: str, address: str, campaign: str) -> None:
    body = json.dumps({"email": address, "name": "Ada"}).encode()
    req = urllib.request.Request(f"{base}/signup/{campaign}", data=body, headers={"Content-Type": "application/json"})
    with OPENER.open(req, timeout=10) as resp:
        assert resp.status in (200, 201)


def received(smtp: SmtpServer, address: str, count: int = 1, timeout: float = 20) -> list:
    deadline = time.monotonic() + timeout
    while len(found := smtp.handler.messages(to=address)) < count and time.monotonic() < deadline:
        time.sleep(0.1)
    assert len(found) >= count, f"expected {count} emails for {address}, got {len(found)}"
    return found


def footer_link(message, path: str) -> str:
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(rf"http://127\.0\.0\.1:\d+/{path}/\S+", text).group(0)


def test_received_email_fits_phone_and_desktop_widths(drip, page, smtp, tmp_path: Path) -> None:
    """The welcome's HTML at 320, 375 and 600 px: no horizontal overflow, alt on every image; screenshots kept."""
    sign_up(page, drip.base, "wide@example.org")
    html = received(smtp, "wide@example.org")[0].get_body(preferencelist=("html",)).get_content()
    page.goto("about:blank")  # a page of ours would impose its CSP (no inline styles) on set_content
    for width in (320, 375, 600):
        page.set_viewport_size({"width": width, "height": 800})
        page.set_content(html)
        shot = tmp_path / f"welcome-{width}.png"
        page.screenshot(path=str(shot), full_page=True)
        assert shot.read_bytes().startswith(b"\x89PNG")
        wide = page.evaluate(TOO_WIDE)
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), f"overflow at {width}px: {wide}"
        assert page.evaluate("[...document.images].every(i => i.hasAttribute('alt'))")
        assert page.get_by_role("link", name="Manage your emails").is_visible()
    # Dark mode: the prefers-color-scheme block turns the card dark with light text; the button stays legible.
    page.emulate_media(color_scheme="dark")
    page.set_viewport_size({"width": 375, "height": 800})
    page.set_content(html)
    page.screenshot(path=str(tmp_path / "welcome-375-dark.png"), full_page=True)
    style = "sel => { const s = getComputedStyle(document.querySelector(sel)); return [s.color, s.backgroundColor]; }"
    assert page.evaluate(style, "td.inner")[0] == "rgb(232, 230, 227)"
    assert page.evaluate(style, "table.card")[1] == "rgb(30, 30, 30)"
    assert page.evaluate(style, "a.button") == ["rgb(255, 255, 255)", "rgb(23, 89, 93)"]
    page.emulate_media(color_scheme="light")
    # The email's real text is there (not text in images) and the card is at most 600 px wide on a desktop.
    page.set_viewport_size({"width": 1000, "height": 800})
    page.set_content(html)
    assert page.evaluate("document.querySelector('table.card').getBoundingClientRect().width") <= 600
    assert "coach sofia's weekly coaching emails" in page.locator("body").inner_text().lower()


def test_view_in_browser_link_shows_the_same_email_and_its_links_work(drip, page, smtp) -> None:
    """Following the email's view link shows the same heading and text; its preference link opens the page."""
    sign_up(page, drip.base, "web@example.org")
    message = received(smtp, "web@example.org")[0]
    page.goto("about:blank")
    page.set_content(message.get_body(preferencelist=("html",)).get_content())
    heading, body = page.locator("h1").inner_text(), page.locator("td.inner").inner_text()
    response = page.goto(footer_link(message, "view"))
    assert response is not None and response.status == 200
    assert page.locator("h1").inner_text() == heading
    assert page.locator("td.inner").inner_text() == body
    page.get_by_role("link", name="Manage your emails").click()
    page.get_by_role("heading", level=1, name="Your email preferences").wait_for(timeout=15000)


def test_preference_walk_then_the_clock_decides_what_arrives(drip, page, smtp, runtime) -> None:
    """Snooze 2 weeks, join a second campaign while snoozed (its welcome waits), switch weekly coaching to the
    monthly newsletter, leave the second campaign: nothing arrives during the snooze or after it until the
    newsletter's first monthly email, which arrives alone at 09:00 Paris time, 30 days after the switch."""
    address = "walk@example.org"
    sign_up(page, drip.base, address)
    welcome = received(smtp, address)[0]
    page.goto(footer_link(welcome, "preferences"))
    page.get_by_label("2 weeks").check()
    page.get_by_role("button", name="Pause emails").click()
    expect(page.get_by_role("status").first).to_contain_text("Your emails are paused")

    json_signup(drip.base, address, "plateau-14")
    page.reload()
    page.get_by_role("button", name="Switch to one email a month").click()
    expect(page.get_by_role("status").first).to_contain_text("monthly digest")
    page.locator("li", has_text="plateaus").get_by_role("button", name="Stop these emails").click()
    # expect() waits for the answer's page: reading at once could read the status of the page before it
    expect(page.get_by_role("status").first).to_contain_text("You have left that campaign")

    with runtime.sessions() as s:
        sub = s.scalars(select(Subscriber).where(Subscriber.email_key == address)).one()
        rows = {e.campaign: e for e in s.scalars(select(Enrollment).where(Enrollment.subscriber_id == sub.id))}
    assert {k: e.status for k, e in rows.items()} == {"back-pain-bundle": "stopped", "monthly-newsletter": "active",
                                                      "plateau-14": "stopped"}
    month1 = rows["monthly-newsletter"].next_due_at
    assert month1.astimezone(ZoneInfo("Europe/Paris")).hour == 9
    for moment in (sub.snoozed_until - timedelta(hours=1), sub.snoozed_until + timedelta(hours=1),
                   month1 - timedelta(minutes=5)):
        drip.tick(moment)
    assert len(smtp.handler.messages(to=address)) == 1  # only the welcome, from before the snooze
    assert "sent 1" in drip.tick(month1 + timedelta(minutes=1))
    drip.tick(month1 + timedelta(days=2))
    subjects = [m["Subject"] for m in smtp.handler.messages(to=address)]
    assert subjects == [runtime.campaigns["back-pain-bundle"].steps[0].subject,
                        runtime.campaigns["monthly-newsletter"].steps[1].subject]


def test_preference_page_is_keyboard_usable_and_a_tampered_link_is_refused(drip, page, smtp) -> None:
    """Tabbing reaches every control of the preference page with a visible label; a changed link gets 404."""
    sign_up(page, drip.base, "keys@example.org")
    url = footer_link(received(smtp, "keys@example.org")[0], "preferences")
    page.set_viewport_size({"width": 375, "height": 800})
    page.goto(url)
    assert page.evaluate("document.documentElement.scrollWidth <= window.innerWidth")
    assert page.locator("h1").count() == 1 and page.locator("h2").count() >= 4
    for control in page.locator("input:not([type=hidden]), select").all():
        assert control.evaluate("e => e.labels.length > 0"), control.evaluate("e => e.outerHTML")
    focused = set()
    for _ in range(40):
        page.keyboard.press("Tab")
        focused.add(page.evaluate("document.activeElement.textContent.trim() || document.activeElement.name"))
    assert {"Pause emails", "Save details", "Unsubscribe from all emails"} <= focused
    response = page.goto(tampered(url))
    assert response is not None and response.status == 404
    assert page.locator("h1").inner_text() == "This link is not valid"


def test_public_pages_fit_a_phone_and_work_from_the_keyboard(drip, page, smtp) -> None:
    """At 320 px the thank-you, unsubscribe and erase-confirmation pages have one h1, no horizontal scroll and
    labelled controls; the unsubscribe button works with Tab and Enter alone."""
    page.set_viewport_size({"width": 320, "height": 700})
    sign_up(page, drip.base, "phone@example.org")
    welcome = received(smtp, "phone@example.org")[0]
    erase = footer_link(welcome, "preferences") + "/erase"
    unsubscribe = re.search(r"<(http://[^>]+)>", str(welcome["List-Unsubscribe"])).group(1)
    for url in (page.url, erase, unsubscribe):
        page.goto(url)
        assert page.locator("h1").count() == 1, url
        assert page.evaluate("document.documentElement.scrollWidth <= innerWidth"), url
        for control in page.locator("input:not([type=hidden]), select").all():
            assert control.evaluate("e => e.labels.length > 0"), url
    for _ in range(10):
        page.keyboard.press("Tab")
        if page.evaluate("document.activeElement.textContent.trim()") == "Unsubscribe":
            break
    page.keyboard.press("Enter")
    # The POST navigates to the same URL: wait for the new heading rather than a load state that may
    # already be reached before the navigation starts.
    page.locator("h1", has_text="You are unsubscribed").wait_for(timeout=15000)
    assert page.locator("h1").inner_text() == "You are unsubscribed"
