"""The reader's side through the Flask test client and real dispatch passes over real SMTP: the
preference page (leave one, leave all, profile and time zone, snooze, digest, export, erase), its token
and cross-site checks, the view-in-browser copy, footer links, UTM tagging and the email's size."""
from __future__ import annotations

import html as htmlmod
import json
import re
from datetime import timedelta
from zoneinfo import ZoneInfo

import pytest
from conftest import at, tampered
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.compose.composer import ComposeJob
from service.core.models import Consent, Enrollment, Event, Message, Subscriber, Suppression
from service.dispatch.policy import PassSummary
from service.enrollment.suppression import email_hash

T0 = at("2026-05-04T10:00:00")
BUNDLE, NEWS = "back-pain-bundle", "monthly-newsletter"
SITE = {"Origin": "https://drip.example.org"}


def enroll(rt, email: str, campaign: str = BUNDLE, tz: str | None = None, now=T0) -> int:
    data = parse_signup({"email": email, "name": "Ada Lovelace", "timezone": tz, "campaign": campaign},
                        campaigns=rt.campaigns, default_campaign=BUNDLE)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[campaign], meta=ConsentMeta("json"), now=now).subscriber_id


def prefs_path(rt, sid: int) -> str:
    with rt.sessions() as s:
        public_id = s.get(Subscriber, sid).public_id
    return rt.reader_links(public_id, 0)["preferences_url"].removeprefix(rt.settings.base_url)


def enrollment(rt, sid: int, campaign: str) -> Enrollment:
    with rt.sessions() as s:
        return s.scalars(select(Enrollment).where(Enrollment.subscriber_id == sid,
                                                  Enrollment.campaign == campaign)).one()


def event_types(rt, sid: int) -> list[str]:
    with rt.sessions() as s:
        return list(s.scalars(select(Event.type).where(Event.subscriber_id == sid).order_by(Event.id)))


def data_path(client, smtp, path: str, action: str, to: str) -> str:
    """Asks on the preference page (`path`) for the link to export or erase, and returns the /data/... path
    from the email that went to the reader's own address `to`."""
    before = len(smtp.handler.messages(to=to))
    assert client.post(f"{path}/{action}", headers=SITE).status_code == 303
    mail = smtp.handler.messages(to=to)[before]
    return re.search(r"https://drip\.example\.org(/data/\S+)", mail.get_body(("plain",)).get_content()).group(1)


def link(message, path: str) -> str:
    text = message.get_body(preferencelist=("plain",)).get_content()
    return re.search(rf"https://drip\.example\.org/{path}/\S+", text).group(0)


def test_footer_carries_preference_and_view_links_and_utm_only_on_resources(runtime, smtp) -> None:
    """Every email's HTML and text footer link to the preference page and the web copy; resource links carry
    the campaign's UTM parameters, the unsubscribe/preference/view links never do."""
    enroll(runtime, "ada@example.org")
    assert runtime.dispatcher().run_pass(T0).sent == 1
    message = smtp.handler.messages()[0]
    html = message.get_body(preferencelist=("html",)).get_content()
    text = message.get_body(preferencelist=("plain",)).get_content()
    for body in (html, text):
        assert "https://drip.example.org/preferences/" in body
        assert "https://drip.example.org/view/" in body
    hrefs = [htmlmod.unescape(h) for h in re.findall(r'href="([^"]+)"', html)]
    resources = [h for h in hrefs if h.startswith("https://backpainwarriors.example/")]
    ours = [h for h in hrefs if h.startswith("https://drip.example.org/")]
    assert resources and all("utm_source=drip&utm_medium=email&utm_campaign=back-pain-bundle" in h for h in resources)
    assert len(ours) == 3 and not any("utm_" in h for h in ours)
    assert "utm_campaign=back-pain-bundle" in text


def test_every_email_is_small_single_column_and_has_alt_text(runtime) -> None:
    """Every step of every shipped campaign renders to HTML well under Gmail's ~102 KB clip, with the dark-mode
    and viewport metadata, a preheader, and alt text on any image."""
    for campaign in runtime.campaigns.values():
        for step in campaign.steps:
            job = ComposeJob(message_pk=1, message_id="<x@y>", campaign=campaign, step=step, to_email="a@example.org",
                             name="Ada", unsubscribe_url="https://drip.example.org/unsubscribe/t", now=T0,
                             public_id="p" * 22)
            html = runtime.composer.render(job)[2]
            assert len(html.encode()) < 60_000, f"{campaign.key}/{step.key} is {len(html)} bytes"
            assert 'name="color-scheme" content="light dark"' in html and "prefers-color-scheme: dark" in html
            assert 'class="preheader"' in html and 'name="viewport"' in html
            assert all(re.search(r'\salt="', img) for img in re.findall(r"<img\b[^>]*>", html))


def test_tampered_or_foreign_tokens_are_refused_and_change_nothing(client, runtime) -> None:
    """A preference link with a changed character, an unsubscribe token used as a preference token, or a
    tampered view token answers 404, and the reader's emails go on."""
    sid = enroll(runtime, "eve@example.org")
    path = prefs_path(runtime, sid)
    bad = tampered(path)
    assert client.get(bad).status_code == 404
    assert client.post(f"{bad}/leave-all", headers=SITE).status_code == 404
    with runtime.sessions() as s:
        public_id = s.get(Subscriber, sid).public_id
    unsub_token = runtime.unsubscribe_url(public_id, BUNDLE).rpartition("/")[2]
    assert client.post(f"/preferences/{unsub_token}/leave-all", headers=SITE).status_code == 404
    assert client.get("/view/" + unsub_token).status_code == 404
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid).status == "active"
    assert enrollment(runtime, sid, BUNDLE).status == "active"
    assert client.get(path).status_code == 200


def test_cross_site_posts_are_refused(client, runtime) -> None:
    """A form posted from another site (Origin or Referer elsewhere) is refused with 403 and changes nothing;
    the same form from our own page works."""
    sid = enroll(runtime, "csrf@example.org")
    path = prefs_path(runtime, sid)
    assert client.post(f"{path}/leave-all", headers={"Origin": "https://evil.example"}).status_code == 403
    assert client.post(f"{path}/leave-all", headers={"Origin": "null"}).status_code == 403
    assert client.post(f"{path}/leave-all", headers={"Referer": "https://evil.example/x"}).status_code == 403
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid).status == "active"
    r = client.post(f"{path}/leave-all", headers={"Referer": f"https://drip.example.org{path}"})
    assert r.status_code == 303
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid).status == "unsubscribed"
    assert "unsubscribed" in event_types(runtime, sid)


def test_leave_one_campaign_cancels_its_queued_mail_and_keeps_the_other(client, runtime, smtp) -> None:
    """Leaving one campaign stops that enrollment and cancels its queued email; the other campaign still sends."""
    sid = enroll(runtime, "two@example.org")
    enroll(runtime, "two@example.org", NEWS)
    runtime.dispatcher().queue_due(T0, PassSummary())
    r = client.post(f"{prefs_path(runtime, sid)}/leave", data={"campaign": BUNDLE}, headers=SITE)
    assert r.status_code == 303
    assert client.get(r.headers["Location"]).data.count(b"You have left that campaign") == 1
    assert runtime.dispatcher().run_pass(T0).sent == 1
    assert [m["Subject"] for m in smtp.handler.messages()] == [runtime.campaigns[NEWS].steps[0].subject]
    assert enrollment(runtime, sid, BUNDLE).status == "stopped"
    assert enrollment(runtime, sid, NEWS).status == "active"
    assert "left_campaign" in event_types(runtime, sid)
    r = client.post(f"{prefs_path(runtime, sid)}/leave", data={"campaign": BUNDLE}, headers=SITE)
    assert r.status_code == 400 and b'data-field="campaign"' in r.data


def test_time_zone_change_moves_the_pending_step_to_the_new_zone(client, runtime, smtp) -> None:
    """After the welcome, week 1 is due at 09:00 New York; moving to Asia/Tokyo makes it 09:00 Tokyo on the same
    local day, and a bad zone or an over-long name is refused naming the field."""
    sid = enroll(runtime, "tz@example.org", tz="America/New_York")
    runtime.dispatcher().run_pass(T0)
    before = enrollment(runtime, sid, BUNDLE).next_due_at
    assert before.astimezone(ZoneInfo("America/New_York")).hour == 9
    path = prefs_path(runtime, sid)
    r = client.post(f"{path}/profile", data={"name": "Ada King", "timezone": "Asia/Tokyo"}, headers=SITE)
    assert r.status_code == 303
    after = enrollment(runtime, sid, BUNDLE).next_due_at.astimezone(ZoneInfo("Asia/Tokyo"))
    assert (after.hour, after.date()) == (9, (T0 + timedelta(days=7)).date())
    with runtime.sessions() as s:
        sub = s.get(Subscriber, sid)
        assert (sub.name, sub.timezone) == ("Ada King", "Asia/Tokyo")
    for data, field in (({"name": "x", "timezone": "Mars/Base"}, "timezone"), ({"name": "n" * 300}, "name")):
        r = client.post(f"{path}/profile", data=data, headers=SITE)
        assert r.status_code == 400 and f'data-field="{field}"'.encode() in r.data
    assert event_types(runtime, sid).count("profile_updated") == 1


def test_snooze_holds_queued_and_due_mail_then_resumes_without_a_burst(client, runtime, smtp) -> None:
    """Snoozed for 2 weeks: a queued welcome and the steps due meanwhile wait; after the snooze one email goes
    per enrollment, the next one a week later."""
    sid = enroll(runtime, "nap@example.org", tz="UTC")
    runtime.dispatcher().queue_due(T0, PassSummary())
    assert client.post(f"{prefs_path(runtime, sid)}/snooze", data={"weeks": "2"}, headers=SITE).status_code == 303
    # The snooze is measured from the real clock; the controllable clock runs from now on.
    with runtime.sessions() as s:
        until = s.get(Subscriber, sid).snoozed_until
    d = runtime.dispatcher()
    assert d.run_pass(until - timedelta(minutes=1)).sent == 0
    assert smtp.handler.messages() == []
    assert d.run_pass(until + timedelta(minutes=1)).sent == 1
    for day in (1, 3, 6):  # nothing more that week, though weeks of steps "fell due" during the snooze
        assert d.run_pass(until + timedelta(days=day)).sent == 0
    assert d.run_pass(until + timedelta(days=8)).sent == 1
    assert [m["Subject"] for m in smtp.handler.messages()] == [s.subject for s in runtime.campaigns[BUNDLE].steps[:2]]
    assert client.post(f"{prefs_path(runtime, sid)}/snooze", data={"weeks": "3"}, headers=SITE).status_code == 400
    assert "snoozed" in event_types(runtime, sid)


def test_switch_to_the_monthly_digest_starts_after_its_welcome(client, runtime, smtp) -> None:
    """Switching weekly coaching to the monthly newsletter stops the weekly enrollment and enrolls in the
    newsletter at its first monthly step (no second welcome), recorded as a consent and an event."""
    sid = enroll(runtime, "month@example.org", tz="UTC")
    runtime.dispatcher().run_pass(T0)
    page = client.get(prefs_path(runtime, sid)).data.decode()
    assert "Switch to one email a month" in page and "monthly newsletter</button>" not in page
    r = client.post(f"{prefs_path(runtime, sid)}/digest", data={"campaign": BUNDLE}, headers=SITE)
    assert r.status_code == 303
    news = enrollment(runtime, sid, NEWS)
    assert (news.status, news.next_step) == ("active", 1)
    assert enrollment(runtime, sid, BUNDLE).status == "stopped"
    with runtime.sessions() as s:
        assert s.scalars(select(Consent.source).where(Consent.campaign == NEWS)).all() == ["preferences"]
    assert "switched_to_digest" in event_types(runtime, sid)
    r = client.post(f"{prefs_path(runtime, sid)}/digest", data={"campaign": NEWS}, headers=SITE)
    assert r.status_code == 400 and b'data-field="campaign"' in r.data


def test_one_click_unsubscribe_still_leaves_everything(client, runtime) -> None:
    """RFC 8058 one-click from a bundle email stops the newsletter enrollment too."""
    sid = enroll(runtime, "all@example.org")
    enroll(runtime, "all@example.org", NEWS)
    with runtime.sessions() as s:
        public_id = s.get(Subscriber, sid).public_id
    path = runtime.unsubscribe_url(public_id, BUNDLE).removeprefix(runtime.settings.base_url)
    assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert {enrollment(runtime, sid, c).status for c in (BUNDLE, NEWS)} == {"stopped"}


def test_export_then_erase_after_confirmation(client, runtime, smtp) -> None:
    """The reader asks on the preference page and gets a link at her own address; it downloads a JSON of
    everything held. Erasing goes the same way and needs the confirmation box, then deletes every row about
    her, keeps only the address hash as a suppression, and a new signup is not mailed."""
    sid = enroll(runtime, "gone@example.org")
    runtime.dispatcher().run_pass(T0)
    path = prefs_path(runtime, sid)
    export = data_path(client, smtp, path, "export", "gone@example.org")
    assert client.get(export).status_code == 200  # a page with a button: a scanner's GET downloads nothing
    r = client.post(export, headers=SITE)
    assert r.status_code == 200 and "attachment" in r.headers["Content-Disposition"]
    data = json.loads(r.data)
    assert data["subscriber"]["email"] == "gone@example.org"
    assert [c["campaign"] for c in data["consents"]] == [BUNDLE]
    assert data["messages"][0]["status"] == "sent" and data["events"]
    assert client.get(f"{path}/erase").status_code == 200
    erase = data_path(client, smtp, path, "erase", "gone@example.org")
    assert client.post(erase, headers=SITE).status_code == 400
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid) is not None
    r = client.post(erase, data={"confirm": "erase"}, headers=SITE)
    assert r.status_code == 200 and b"Your data is erased" in r.data
    with runtime.sessions() as s:
        for model in (Subscriber, Enrollment, Message, Consent):
            assert s.scalar(select(func.count()).select_from(model)) == 0
        assert s.scalars(select(Event.type)).all() == ["erased"]
        assert s.scalars(select(Suppression.email_hash)).all() == [email_hash("gone@example.org")]
    assert client.get(path).status_code == 404
    enroll(runtime, "gone@example.org")
    assert runtime.dispatcher().run_pass(T0 + timedelta(days=1)).sent == 0


def _without_tokens(html: str) -> str:
    html = html.replace("\r\n", "\n").strip()  # SMTP line ends
    return re.sub(r"/(unsubscribe|preferences|view)/[A-Za-z0-9_.\-]+", r"/\1/TOKEN", html)


@pytest.mark.parametrize("step", [0, 1])
def test_view_in_browser_shows_what_was_sent(client, runtime, smtp, step: int) -> None:
    """The web copy of a sent email is the same HTML as the one received (links re-signed), with a CSP that
    lets its inline styles work and a same-origin referrer policy; an unsent or unknown message is not shown."""
    enroll(runtime, "view@example.org", tz="UTC")
    runtime.dispatcher().run_pass(T0)
    if step:
        runtime.dispatcher().run_pass(T0 + timedelta(days=8))
    message = smtp.handler.messages()[step]
    sent_html = message.get_body(preferencelist=("html",)).get_content()
    r = client.get(link(message, "view").removeprefix("https://drip.example.org"))
    assert r.status_code == 200
    assert _without_tokens(r.data.decode()) == _without_tokens(sent_html)
    assert "style-src 'unsafe-inline'" in r.headers["Content-Security-Policy"]
    assert r.headers["Referrer-Policy"] == "same-origin"
    assert client.get(runtime.reader_links("x", 10_000)["view_url"].removeprefix("https://drip.example.org")
                      ).status_code == 404


def test_lint_flags_an_image_without_alt(runtime) -> None:
    """`drip campaigns check` reports an <img> without alt as an error, and accepts one with alt (even empty)."""
    from service.compose.lint import lint_step

    campaign = runtime.campaigns[BUNDLE]
    unsub = "https://drip.example.org/unsubscribe/t"
    page = "<html><body><p>{}</p>" + "word " * 100 + f'<a href="{unsub}">Unsubscribe</a></body></html>'
    text = "Read me. " + unsub

    def errors(img: str) -> list[str]:
        return [m for level, m in lint_step(campaign, "Hello", text, page.format(img), unsub,
                                            "https://drip.example.org") if level == "error"]

    assert errors('<img src="https://drip.example.org/a.png">') == ["1 image(s) without alt text (use alt=\"\" for "
                                                                    "decoration)"]
    assert errors('<img src="https://drip.example.org/a.png" alt="">') == []


def test_unsubscribe_page_offers_the_preference_page_first(client, runtime) -> None:
    """The unsubscribe page (GET, which changes nothing) links to the reader's own preference page."""
    sid = enroll(runtime, "maybe@example.org")
    with runtime.sessions() as s:
        public_id = s.get(Subscriber, sid).public_id
    page = client.get(runtime.unsubscribe_url(public_id, BUNDLE).removeprefix(runtime.settings.base_url)).data.decode()
    href = re.search(r'href="(/preferences/[^"]+)">pause them or get fewer', page).group(1)
    assert client.get(href).status_code == 200 and b"Your email preferences" in client.get(href).data


def test_an_unsubscribed_reader_keeps_only_the_data_section(client, runtime) -> None:
    """After leaving everything the page says so and offers export/erase only; other changes answer 409."""
    sid = enroll(runtime, "late@example.org")
    path = prefs_path(runtime, sid)
    assert client.post(f"{path}/leave-all", headers=SITE).status_code == 303
    page = client.get(path).data.decode()
    assert "You are unsubscribed" in page and "link to download my data" in page and "Pause emails" not in page
    assert client.post(f"{path}/snooze", data={"weeks": "2"}, headers=SITE).status_code == 409
    with runtime.sessions() as s:
        assert s.get(Subscriber, sid).snoozed_until is None
    assert client.post(f"{path}/export", headers=SITE).status_code == 303  # the link goes to her own inbox
