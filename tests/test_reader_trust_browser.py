"""A returning reader and a forwarded email, walked in a real browser (headless Debian Chromium driving
`drip serve`, which sends through the real aiosmtpd server): the reader who unsubscribed and signs up again
is told to check her inbox and comes back only through the emailed link; whoever receives a forwarded
email's preference link sees a masked address and can neither download nor erase the reader's data, which
the reader does from the link sent to her own inbox."""
from __future__ import annotations

import json
import re
import time

import pytest
from playwright.sync_api import expect
from test_browser import sign_up
from test_reader_browser import Drip, footer_link, received

pytestmark = pytest.mark.browser
COMEBACK = "Would you like to hear from me again?"


@pytest.fixture
def drip(database_url, smtp, tmp_path):
    from test_browser import serving

    with serving(database_url, smtp.url, tmp_path) as (base, env):
        yield Drip(base, env, tmp_path)


def test_a_returning_reader_confirms_by_email_and_is_not_sent_the_welcome_twice(drip, page, smtp) -> None:
    """Sign up, unsubscribe, sign up again: "check your inbox", a come-back email, the button, "Welcome
    back" with a link to the welcome she had, which is not sent a second time."""
    address = "again@example.org"
    sign_up(page, drip.base, address)
    welcome = received(smtp, address)[0]
    unsubscribe = re.search(r"<(http://[^>]+)>", str(welcome["List-Unsubscribe"])).group(1)
    page.goto(unsubscribe)
    page.get_by_role("button", name="Unsubscribe").click()
    page.locator("h1", has_text="You are unsubscribed").wait_for(timeout=15000)

    sign_up(page, drip.base, address)
    assert page.locator("h1").inner_text() == "Please check your inbox"
    assert "on its way" not in page.locator("main").inner_text()
    mails = received(smtp, address, 2)
    assert [m["Subject"] for m in mails] == [welcome["Subject"], COMEBACK]

    page.goto(footer_link(mails[1], "confirm"))
    assert page.locator("h1").inner_text() == "Confirm your email address"
    page.get_by_role("button", name="Yes, send it to me").click()
    page.locator("h1", has_text="Welcome back").wait_for(timeout=15000)
    page.get_by_role("link", name="open your welcome email").click()
    page.locator("h1", has_text="Your back-pain bundle is here").wait_for(timeout=15000)
    time.sleep(3)  # three scheduler ticks: no second welcome arrives
    subjects = [m["Subject"] for m in smtp.handler.messages(to=address)]
    assert subjects.count(welcome["Subject"]) == 1


def test_a_forwarded_link_reaches_no_data_and_the_reader_downloads_and_erases_from_her_inbox(
        drip, page, browser, smtp) -> None:
    """A stranger with the preference link sees a masked address and only gets links mailed to the reader;
    the reader downloads her JSON and erases herself from those links, after which the old link is dead."""
    address = "ada.private@example.org"
    sign_up(page, drip.base, address)
    preferences = footer_link(received(smtp, address)[0], "preferences")

    stranger = browser.new_context().new_page()  # whoever the email was forwarded to
    stranger.goto(preferences)
    shown = stranger.locator("main").inner_text()
    assert address not in shown and "a\u2022\u2022\u2022@example.org" in shown
    stranger.get_by_role("button", name="Email me a link to download my data").click()
    status = stranger.get_by_role("status").first  # expect() waits for the answer's page, not the one before
    expect(status).to_contain_text("We've emailed a link to a\u2022\u2022\u2022@example.org")
    stranger.get_by_role("button", name="Email me a link to erase my data").click()
    expect(stranger.get_by_role("status").first).to_contain_text("to erase your data")
    assert address not in stranger.content()
    stranger.context.close()

    export_mail, erase_mail = received(smtp, address, 3)[1:]
    assert export_mail["Subject"] == "Your link to download your data"
    page.goto(footer_link(export_mail, "data"))
    with page.expect_download() as download:
        page.get_by_role("button", name="Download my data (JSON)").click()
    data = json.loads(open(download.value.path(), encoding="utf-8").read())
    assert data["subscriber"]["email"] == address

    page.goto(footer_link(erase_mail, "data"))
    page.get_by_role("button", name="Erase my data").click()  # the box is required: nothing happens
    assert page.locator("h1").inner_text() == "Erase your data?"
    page.get_by_label("Yes, erase me and all my data").check()
    page.get_by_role("button", name="Erase my data").click()
    page.locator("h1", has_text="Your data is erased").wait_for(timeout=15000)
    assert page.goto(preferences).status == 404
