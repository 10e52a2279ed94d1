"""The coach's day in the console, in a real browser (Debian's Chromium through Playwright) against the app
served on loopback, over three weeks of real sends to the test SMTP server: the home page answers who signed
up, what goes out in the next 7 days (the forecast the dispatcher's passes then keep), how each step is doing
(rates, opens marked as inflated, why week 1 has more readers than the welcome), who left this week, how and
why (a reason given on the unsubscribe page), and what needs action; the send log shows subject lines and
the operator's own time zone to the second; operators, tokens and sending are managed in the console.

Every console page is photographed at 1280 and 390 px into tests/artifacts/console/ (gitignored), and none
may scroll sideways on a phone, where chart labels stay at least 11 px tall."""
from __future__ import annotations

import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import free_port, in_one_window, with_settings
from playwright.sync_api import Page, expect
from sqlalchemy import func, select
from werkzeug.serving import make_server

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.db import utcnow
from service.core.models import Event, Message, Subscriber
from service.dispatch.sending_pause import pause
from service.feedback.delivery import DeliveryEvent, apply
from service.operator.accounts import add_user, authenticate
from service.operator.campaign_stats import set_paused
from service.operator.forecast import forecast, horizon

pytestmark = pytest.mark.browser
ARTIFACTS = Path(__file__).resolve().parent / "artifacts" / "console"
PASSWORD = "correct horse battery"
WIDTHS = {"desktop": 1280, "phone": 390}


@pytest.fixture
def coach(runtime, smtp):
    """Three weeks of a small list: direct signups in four zones, lead-magnet readers who continue into the
    bundle at week 1, three addresses that bounce, a few opens and clicks, a snooze and a paused campaign."""
    rt = with_settings(runtime, tracking=True, max_emails_per_day=2)
    start = utcnow().replace(minute=0, second=0, microsecond=0) - timedelta(days=21)
    zones = ["America/New_York", "Europe/Paris", "Asia/Tokyo", "America/Los_Angeles"]
    for n in range(12):
        address = f"bad{n}@example.org" if n < 3 else f"reader{n}@example.org"
        if n < 3:
            smtp.handler.script(address, "RCPT", "550 5.1.1 no such mailbox")
        join(rt, address, "back-pain-bundle", zones[n % 4], start + timedelta(hours=n))
    for n in range(4):
        join(rt, f"plateau{n}@example.org", "plateau-14", zones[n % 4], start + timedelta(days=2, hours=n))
    join(rt, "lean@example.org", "leaner-you", "Europe/Paris", start + timedelta(days=3))
    d = rt.dispatcher()
    moment = start
    while moment < utcnow() - timedelta(hours=1):
        d.run_pass(moment)
        moment += timedelta(hours=1)
    with rt.sessions() as s, s.begin():
        sent = s.scalars(select(Message).where(Message.sent_at.is_not(None)).order_by(Message.id)).all()
        for m in sent[3:9]:
            apply(s, DeliveryEvent("open", source="tracking", message_pk=m.id), now=m.sent_at + timedelta(hours=1),
                  policy=rt.delivery_policy())
        apply(s, DeliveryEvent("click", source="tracking", message_pk=sent[4].id, data={"url": "https://x.example"}),
              now=sent[4].sent_at + timedelta(hours=1), policy=rt.delivery_policy())
        snoozed = s.scalar(select(Subscriber).where(Subscriber.email == "reader5@example.org"))
        snoozed.snoozed_until = utcnow() + timedelta(days=2)
        set_paused(s, "monthly-newsletter", True, now=utcnow())
        add_user(s, "coach@example.org", PASSWORD, now=utcnow())
    yield rt
    rt.sessions.kw["bind"].dispose()


def join(rt, email: str, campaign: str, tz: str, when) -> None:
    data = parse_signup({"email": email, "campaign": campaign, "timezone": tz, "name": email.split("@")[0]},
                        campaigns=rt.campaigns, default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("form"), now=when)


@contextmanager
def serving(rt) -> Iterator[str]:
    """The app on a free loopback port, in this process (no scheduler: only the test's passes send)."""
    from service.app import create_app

    port = free_port()
    server = make_server("127.0.0.1", port, create_app(runtime=rt), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.shutdown()
        thread.join(timeout=10)


@pytest.fixture
def live(coach) -> Iterator[str]:
    with serving(coach) as base:
        yield base


def log_in(tab: Page, base: str, email: str = "coach@example.org", password: str = PASSWORD) -> None:
    tab.goto(f"{base}/admin/login")
    tab.get_by_label("Email").fill(email)
    tab.get_by_label("Password").fill(password)
    tab.get_by_role("button", name="Log in").click()


def shoot(tab: Page, name: str) -> None:
    """Both widths, full page, kept as artifacts; and at the phone's width nothing scrolls sideways."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    for label, width in WIDTHS.items():
        tab.set_viewport_size({"width": width, "height": 900})
        path = ARTIFACTS / f"{name}-{label}.png"
        tab.screenshot(path=str(path), full_page=True)
        assert path.read_bytes().startswith(b"\x89PNG")
        scroll = tab.evaluate("document.documentElement.scrollWidth")
        assert scroll <= width, f"{name} is {scroll} px wide at {width} px: the page scrolls sideways"
        if label == "phone":
            # A chart label's size on screen: its font size in the drawing's units times the drawing's scale.
            smallest = tab.evaluate("""Math.min(1e9, ...Array.from(document.querySelectorAll('svg text'))
                .map(t => parseFloat(getComputedStyle(t).fontSize) * t.getScreenCTM().a))""")
            assert smallest >= 11 or smallest == 1e9, f"{name}: a chart label is {smallest:.1f} px tall"
    tab.set_viewport_size({"width": WIDTHS["desktop"], "height": 900})


def api_status(base: str, token: str) -> int:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    req = urllib.request.Request(f"{base}/api/v1/messages", headers={"Authorization": f"Bearer {token}"})
    try:
        with opener.open(req, timeout=10) as resp:
            return resp.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_the_home_page_answers_the_coachs_questions(live, coach, page, smtp) -> None:
    # "Today" and the 7 days ahead are the coach's days (UTC here): a test that straddled midnight
    # would compare the page with a day that has since turned, so one started just before it waits.
    in_one_window(86400, needed=90)
    # A reader leaves today through the email's link, and says why on the confirmation page.
    with coach.sessions() as s:
        leaver = s.scalar(select(Subscriber).where(Subscriber.email == "reader7@example.org"))
    page.goto(coach.unsubscribe_url(leaver.public_id, "back-pain-bundle").replace(coach.settings.base_url, live))
    page.get_by_role("button", name="Unsubscribe").click()
    expect(page.get_by_role("heading", name="You are unsubscribed")).to_be_visible()
    shoot(page, "reader-unsubscribed")
    page.get_by_label(re.compile("tell us why")).fill("Too many emails about stretching")
    page.get_by_role("button", name="Send").click()
    expect(page.get_by_text("Thank you for telling us")).to_be_visible()
    join(coach, "today@example.org", "glute-guide", "Europe/Paris", utcnow())  # one signup today

    log_in(page, live)
    expect(page).to_have_url(f"{live}/admin/")
    expect(page.get_by_role("heading", name="Today")).to_be_visible()
    signups = page.locator("table.signups")
    expect(signups.get_by_role("row", name=re.compile("Glute"))).to_contain_text("1")

    # The next 7 days, per day and step, as the page shows them (checked against real passes at the end).
    shown = forecast_table(page)
    assert sum(shown.values()) > 3, "three weeks in, several emails are due in the next 7 days"
    expect(page.locator("table.forecast tbody th[scope^=row]")).to_have_count(7)
    expect(page.locator("#ahead ~ p").first).to_contain_text("monthly-newsletter")

    # Rates per step, with opens marked, and the week-1 rise explained.
    bundle = page.locator("table.health").first
    expect(bundle.locator("thead")).to_contain_text("Click")
    expect(bundle.locator("thead abbr[title*='Apple Mail Privacy Protection']")).to_have_count(1)
    week1 = bundle.get_by_role("row", name=re.compile("week-01"))
    expect(week1).to_contain_text("joined here from other lead magnets")
    expect(week1).to_contain_text("14 techniques")  # plateau-14 continues into week 1
    welcome = bundle.get_by_role("row", name=re.compile("welcome"))
    expect(welcome.locator("td").nth(2)).to_have_text(re.compile(r"^25\.0 %$"))  # 3 of 12 bounced

    # Who left, how, why; and what needs action.
    left = page.locator("table.unsubscribes")
    expect(left).to_contain_text("reader7@example.org")
    expect(left).to_contain_text("page from a back-pain-bundle email")
    expect(left).to_contain_text("Too many emails about stretching")
    warnings = page.locator("ul.warnings")
    expect(warnings).to_contain_text("DKIM signing is off")
    expect(warnings).to_contain_text("welcome fails more than usual")
    shoot(page, "home")

    # The week goes by: a pass every hour (and whenever the schedule has something due, as a scheduler
    # ticking every few seconds would), and what was sent each day is what the page said.
    start = utcnow()
    with coach.sessions() as s:
        end = horizon(start, "UTC")
        moments = {p.at for p in forecast(coach.dispatcher(), s, now=start, end=end).emails}
    moments |= {start + timedelta(hours=h) for h in range(24 * 8) if start + timedelta(hours=h) < end}
    d = coach.dispatcher()
    for moment in sorted(moments):
        d.run_pass(moment)
    with coach.sessions() as s:
        sent = s.execute(select(Message.campaign, Message.step_key, Message.sent_at)
                         .where(Message.sent_at >= start)).all()
    titles = {k: c.title for k, c in coach.campaigns.items()}
    actual: dict[tuple[str, str], int] = {}
    for campaign, step, at in sent:
        key = (at.strftime("%a %d %b"), f"{titles[campaign]} / {step}")
        actual[key] = actual.get(key, 0) + 1
    assert shown == actual


def forecast_table(page: Page) -> dict[tuple[str, str], int]:
    """{(day, "Campaign title / step"): emails} from the home page's forecast table."""
    rows = page.evaluate(r"""() => {
        let day = null; const out = [];
        for (const tr of document.querySelectorAll('table.forecast tbody tr')) {
            const th = tr.querySelector('th'); if (th) day = th.innerText.trim();
            const cells = tr.querySelectorAll('td');
            if (cells.length === 2 && !cells[0].classList.contains('fineprint'))
                out.push([day, cells[0].innerText.split('\n')[0].trim(), parseInt(cells[1].innerText)]);
        }
        return out; }""")
    return {(day, step): n for day, step, n in rows}


def test_send_log_words_times_and_settings(live, coach, page, smtp) -> None:
    log_in(page, live)
    # An old link to the send log at /admin still lands on it, filter and all.
    page.goto(f"{live}/admin?status=bounced")
    expect(page).to_have_url(re.compile(r"/admin/messages\?status=bounced$"))
    rows = page.locator("table.log tbody tr")
    expect(rows).to_have_count(3)
    welcome = coach.campaigns["back-pain-bundle"].steps[0]
    expect(rows.first).to_contain_text(welcome.subject)  # words beside the key
    shoot(page, "send-log")

    # The coach reads times in Tokyo, to the second.
    page.get_by_role("link", name="Settings").click()
    page.get_by_label("Show times in").select_option("Asia/Tokyo")
    page.get_by_role("button", name="Save").click()
    expect(page.get_by_text("Times are now shown in Asia/Tokyo")).to_be_visible()
    shoot(page, "account")
    page.goto(f"{live}/admin/messages")
    first_time = page.locator("table.log tbody tr td.time").first.inner_text()
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d JST", first_time), first_time
    with coach.sessions() as s:
        newest = s.scalar(select(Message).order_by(Message.id.desc()).limit(1))
    from zoneinfo import ZoneInfo
    assert first_time == newest.created_at.astimezone(ZoneInfo("Asia/Tokyo")).strftime("%Y-%m-%d %H:%M:%S JST")
    page.locator("table.log tbody tr a").first.click()
    expect(page.locator("dl.facts")).to_contain_text("JST")
    shoot(page, "message")

    # The other console pages, for the pictures and the phone check.
    for path, name in (("/admin/subscribers", "subscribers"), ("/admin/campaigns", "campaigns"),
                       ("/admin/campaigns/back-pain-bundle", "campaign")):
        page.goto(f"{live}{path}")
        shoot(page, name)
    page.goto(f"{live}/admin/subscribers")
    page.locator("table.log tbody tr a").first.click()
    expect(page.get_by_role("heading", name="Timeline")).to_be_visible()
    shoot(page, "subscriber")
    # The campaign steps page and a step's preview (the preview page is linked from the campaign's steps).
    page.goto(f"{live}/admin/campaigns/")
    shoot(page, "campaign-steps")
    page.goto(f"{live}/admin/campaigns/back-pain-bundle/week-01")
    expect(page.get_by_role("heading", name=coach.campaigns["back-pain-bundle"].steps[1].subject)).to_be_visible()
    shoot(page, "step-preview")


def test_operators_tokens_and_sending_in_the_console(live, coach, page, browser, smtp) -> None:
    log_in(page, live)
    page.goto(f"{live}/admin/operators")
    page.get_by_label("Email").fill("helper@example.org")
    page.get_by_label(re.compile("^Password")).fill("helper password 1")
    page.get_by_role("button", name="Add operator").click()
    expect(page.get_by_text("helper@example.org can now log in")).to_be_visible()
    # Adding them again never changes their password by surprise.
    page.get_by_label("Email").fill("helper@example.org")
    page.get_by_label(re.compile("^Password")).fill("someone else's pw")
    page.get_by_role("button", name="Add operator").click()
    expect(page.locator("p.error")).to_contain_text("already has an account")
    with coach.sessions() as s, s.begin():
        assert authenticate(s, "helper@example.org", "helper password 1", client="t", now=utcnow()) is not None
    shoot(page, "operators")

    # The helper is logged in elsewhere; once disabled, their next click lands on the login page.
    other = browser.new_context().new_page()
    log_in(other, live, "helper@example.org", "helper password 1")
    expect(other.get_by_role("heading", name="Today")).to_be_visible()
    page.get_by_role("button", name="Disable helper@example.org").click()
    expect(page.get_by_text("helper@example.org is disabled")).to_be_visible()
    other.goto(f"{live}/admin/messages")
    expect(other).to_have_url(re.compile(r"/admin/login"))
    log_in(other, live, "helper@example.org", "helper password 1")
    expect(other.locator("p.error")).to_contain_text("Wrong email or password")
    other.context.close()
    expect(page.get_by_role("button", name="Disable coach@example.org")).to_have_count(0)  # never yourself

    # A token: shown once, works, and stops working when revoked.
    page.get_by_role("link", name="API tokens").click()
    page.get_by_label(re.compile("^Name")).fill("nightly export")
    page.get_by_role("button", name="Create token").click()
    secret = page.locator("code.token").inner_text()
    assert secret.startswith("drip_") and api_status(live, secret) == 200
    shoot(page, "token-created")
    page.goto(f"{live}/admin/tokens")
    assert secret not in page.content()
    page.get_by_role("button", name="Revoke nightly export").click()
    expect(page.locator("table.tokens")).to_contain_text("revoked")
    assert api_status(live, secret) == 401
    shoot(page, "tokens")

    # Sending paused by a refused password: the home page says so, the sending page says why and resumes.
    with coach.sessions() as s, s.begin():
        pause(s, "the relay refused our login (535 5.7.8)", now=utcnow())
    page.goto(f"{live}/admin/")
    expect(page.locator("ul.warnings")).to_contain_text("Sending is paused")
    expect(page.locator("table.forecast tfoot td.num")).to_have_text("0")
    page.locator("ul.warnings").get_by_role("link", name="Open").click()
    expect(page.locator(".card.danger")).to_contain_text("535 5.7.8")
    shoot(page, "sending-paused")
    page.get_by_role("button", name="Resume sending").click()
    expect(page.get_by_text("Sending is running")).to_be_visible()
    with coach.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.type == "sending_resumed")) == 1
    shoot(page, "sending")
    page.context.clear_cookies()
    page.goto(f"{live}/admin/login")
    shoot(page, "login")


def test_the_outbox_pages_on_a_phone(runtime, page, tmp_path) -> None:
    """With the file transport (the `make run` default) the console's outbox lists the emails written and shows
    one; both pages fit a phone too."""
    rt = with_settings(runtime, email_url=f"file://{tmp_path / 'outbox'}")
    try:
        join(rt, "outbox-reader@example.org", "back-pain-bundle", "Europe/Paris", utcnow())
        assert rt.dispatcher().run_pass(utcnow()).sent == 1
        with rt.sessions() as s, s.begin():
            add_user(s, "coach@example.org", PASSWORD, now=utcnow())
        with serving(rt) as base:
            log_in(page, base)
            page.get_by_role("link", name="Outbox").click()
            shoot(page, "outbox")
            page.locator("table.log tbody a").first.click()
            expect(page.locator("body")).to_contain_text("outbox-reader@example.org")
            shoot(page, "outbox-email")
    finally:
        rt.sessions.kw["bind"].dispose()
