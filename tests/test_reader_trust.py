"""What keeps a reader's trust, through the Flask test client and real dispatch passes over real SMTP, with
several readers in different states side by side: a download-only lead magnet invites once and enrols only
on a click, with the words the reader saw as the consent; the last weekly email hands over to the monthly
newsletter the same way; an unsubscribed reader who signs up again must confirm by email before anything
else arrives; a bounced address gets an honest page and no email; a forwarded preference link shows no full
address and cannot download or erase anything; `drip serve` refuses the placeholder postal address in
production."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import at, tampered
from markupsafe import escape
from sqlalchemy import select, update
from test_reader import SITE, enroll, event_types, prefs_path

from service.audience.optin import invitation_consent
from service.audience.preferences import masked_address
from service.cli import main
from service.core.config import PLACEHOLDER_POSTAL_ADDRESS, ConfigError, Settings
from service.core.models import Consent, Enrollment, Event, Message, Subscriber
from service.enrollment.suppression import stop_for
from service.runtime import check_postal_address

T0 = at("2026-05-04T14:00:00")  # a Monday, 10:00 in New York
BUNDLE, NEWS, GLUTE = "back-pain-bundle", "monthly-newsletter", "glute-guide"


def subjects(smtp, to: str) -> list[str]:
    return [m["Subject"] for m in smtp.handler.messages(to=to)]


def path_in(message, prefix: str) -> str:
    text = message.get_body(("plain",)).get_content()
    return re.search(rf"https://drip\.example\.org({prefix}/[A-Za-z0-9_.\-]+)", text).group(1)


def enrollments(rt, sid: int) -> dict[str, Enrollment]:
    with rt.sessions() as s:
        rows = s.scalars(select(Enrollment).where(Enrollment.subscriber_id == sid)).all()
        for row in rows:
            s.expunge(row)
    return {e.campaign: e for e in rows}


def walk(rt, start, days: int) -> None:
    d = rt.dispatcher()
    for n in range(days + 1):
        d.run_pass(start + timedelta(days=n, hours=1))


# -- consent that matches the form -----------------------------------------------------------------------
def test_a_download_only_lead_magnet_invites_once_and_enrols_only_on_yes(client, runtime, smtp) -> None:
    """Ada and Bea download the glute guide: the welcome, then one invitation three days later, and nothing
    more. Ada opens the link (a page: nothing joined) and says yes: she joins the weekly coaching at week-01,
    due at the next morning's send hour, with the invitation's words as her consent. Bea never clicks and
    gets no coaching email; Cy, a bundle reader, is untouched."""
    glute = runtime.campaigns[GLUTE]
    ids = {n: enroll(runtime, f"{n}@example.org", GLUTE, tz="America/New_York", now=T0) for n in ("ada", "bea")}
    enroll(runtime, "cy@example.org", BUNDLE, tz="America/New_York", now=T0)
    walk(runtime, T0, 4)
    for name in ("ada", "bea"):
        assert subjects(smtp, f"{name}@example.org") == [s.subject for s in glute.steps]
        assert enrollments(runtime, ids[name])[GLUTE].status == "completed"
        assert set(enrollments(runtime, ids[name])) == {GLUTE}  # no continuation: the form promised a download
    with runtime.sessions() as s:
        consent = s.scalars(select(Consent).where(Consent.subscriber_id == ids["ada"])).one()
    assert consent.wording == glute.consent and "coaching" not in consent.wording
    invitation = smtp.handler.messages(to="ada@example.org")[-1]
    text = " ".join(invitation.get_body(("plain",)).get_content().split())
    assert "agreed to weekly coaching" not in text and "only time I'll ask" in text

    join = path_in(invitation, "/join")
    page = client.get(join)
    assert page.status_code == 200 and b'method="post"' in page.data
    assert str(escape(glute.invite_wording)) in page.get_data(as_text=True)
    assert set(enrollments(runtime, ids["ada"])) == {GLUTE}  # a link scanner's GET joins no one
    clicked = at("2026-05-08T16:00:00")
    with runtime.sessions() as s, s.begin():  # the page's POST, at a known moment
        from service.audience.optin import accept_invitation

        public_id = s.get(Subscriber, ids["ada"]).public_id
        assert accept_invitation(s, public_id=public_id, campaign=glute, campaigns=runtime.campaigns,
                                 now=clicked).state == "joined"
    assert client.post(join).status_code == 200  # a second click (through the page) changes nothing
    coaching = enrollments(runtime, ids["ada"])[BUNDLE]
    assert (coaching.next_step_key, coaching.next_due_at) == ("week-01", at("2026-05-09T13:00:00"))  # 09:00 NY
    with runtime.sessions() as s:
        joined = s.scalars(select(Consent).where(Consent.subscriber_id == ids["ada"], Consent.campaign == BUNDLE)).one()
    assert (joined.source, joined.wording) == ("invitation", invitation_consent(glute))
    assert glute.invite_wording in joined.wording
    walk(runtime, clicked, 3)
    assert subjects(smtp, "ada@example.org")[-1] == runtime.campaigns[BUNDLE].step_by_key("week-01").subject
    assert subjects(smtp, "bea@example.org") == [s.subject for s in glute.steps]
    assert BUNDLE not in enrollments(runtime, ids["bea"])
    assert subjects(smtp, "cy@example.org") == [s.subject for s in runtime.campaigns[BUNDLE].steps[:2]]


def test_the_last_weekly_email_hands_over_to_the_monthly_newsletter_by_choice(client, runtime, smtp) -> None:
    """Week-12 says it is the last; its button's page enrols Ada in the newsletter at month-01 (no second
    welcome); Bea, who got the same email and did not click, gets nothing after it."""
    ids = {n: enroll(runtime, f"{n}@example.org", BUNDLE, now=T0) for n in ("ada", "bea")}
    last = runtime.campaigns[BUNDLE].steps[-1]
    with runtime.sessions() as s, s.begin():
        s.execute(update(Enrollment).values(next_step=last.index, next_step_key=last.key, next_due_at=T0))
    runtime.dispatcher().run_pass(T0)
    for name in ("ada", "bea"):
        assert subjects(smtp, f"{name}@example.org") == [last.subject]
    mail = smtp.handler.messages(to="ada@example.org")[0]
    assert "last email in my weekly coaching series" in " ".join(mail.get_body(("plain",)).get_content().split())
    assert client.post(path_in(mail, "/join")).status_code == 200
    news = enrollments(runtime, ids["ada"])[NEWS]
    assert (news.status, news.next_step_key) == ("active", "month-01")
    assert NEWS not in enrollments(runtime, ids["bea"])
    for moment in (news.next_due_at - timedelta(minutes=5), news.next_due_at + timedelta(minutes=1)):
        runtime.dispatcher().run_pass(moment)  # the click was on the real clock: month-01 is due from it
    assert subjects(smtp, "ada@example.org") == [last.subject, runtime.campaigns[NEWS].steps[1].subject]
    assert subjects(smtp, "bea@example.org") == [last.subject]


# -- returning readers --------------------------------------------------------------------------------------
def test_an_unsubscribed_reader_who_signs_up_again_must_confirm_by_email(client, runtime, smtp) -> None:
    """Ada unsubscribed; she fills in the bundle form and the monthly form again. The thank-you pages say to
    check her inbox; one come-back email per campaign arrives and nothing else (a second post within the
    cooldown sends no second one). Her click on the newsletter's link brings her back: the newsletter's
    welcome follows; the bundle, whose welcome she had, stays stopped until she clicks that one too, and then
    the page links her earlier welcome instead of sending it twice. Bea, active, is untouched throughout."""
    ada = enroll(runtime, "ada@example.org", now=T0)
    bea = enroll(runtime, "bea@example.org", now=T0)
    runtime.dispatcher().run_pass(T0)
    assert client.post(f"{prefs_path(runtime, ada)}/leave-all", headers=SITE).status_code == 303

    for campaign in (BUNDLE, NEWS, BUNDLE):
        r = client.post(f"/signup/{campaign}", data={"email": "ada@example.org"})
        assert r.status_code == 303 and r.headers["Location"].endswith(f"/thanks/{campaign}?state=check-inbox")
    thanks = client.get(f"/thanks/{BUNDLE}?state=check-inbox").data.decode()
    assert "Please check your inbox" in thanks and "on its way" not in thanks
    assert client.post(f"/signup/{BUNDLE}", json={"email": "ada@example.org"}).get_json()["status"] == \
        "confirmation_sent"
    runtime.dispatcher().run_pass(T0 + timedelta(minutes=5))
    mails = smtp.handler.messages(to="ada@example.org")
    comebacks = [m for m in mails if m["Subject"] == "Would you like to hear from me again?"]
    assert len(mails) == 3 and len(comebacks) == 2  # the old welcome + one come-back email per campaign
    assert "List-Unsubscribe" not in comebacks[0]
    with runtime.sessions() as s:
        assert s.get(Subscriber, ada).status == "unsubscribed"

    by_campaign = {("newsletter" if "monthly newsletter" in m.get_body(("plain",)).get_content() else "bundle"):
                   path_in(m, "/confirm") for m in comebacks}
    assert client.get(by_campaign["newsletter"]).status_code == 200  # a page; nothing changes on GET
    with runtime.sessions() as s:
        assert s.get(Subscriber, ada).status == "unsubscribed"
    back = client.post(by_campaign["newsletter"])
    assert back.status_code == 200 and b"Welcome back" in back.data
    with runtime.sessions() as s:
        assert s.get(Subscriber, ada).status == "active"
    assert enrollments(runtime, ada)[BUNDLE].status == "stopped"  # she asked for the newsletter only
    runtime.dispatcher().run_pass()  # the click was on the real clock: the welcome is due from it
    assert subjects(smtp, "ada@example.org")[-1] == runtime.campaigns[NEWS].steps[0].subject

    again = client.post(by_campaign["bundle"])
    assert again.status_code == 200 and b"open your welcome email" in again.data
    view = re.search(rb'href="(/view/[^"]+)"', again.data).group(1).decode()
    assert "Your back-pain bundle is here" in client.get(view).get_data(as_text=True)
    bundle = enrollments(runtime, ada)[BUNDLE]
    assert (bundle.status, bundle.next_step_key) == ("active", "week-01")
    with runtime.sessions() as s:
        welcomes = s.scalars(select(Message).where(Message.subscriber_id == ada, Message.step_key == "welcome",
                                                   Message.campaign == BUNDLE)).all()
    assert len(welcomes) == 1  # never sent twice
    history = event_types(runtime, ada)
    assert history.count("confirmation_sent") == 2  # both come-back emails, in her timeline
    # back through the newsletter's link; the bundle's link then confirmed that campaign too
    assert history.count("resubscribed") == 1 and history.count("confirmed") == 1 and "unsubscribed" in history
    with runtime.sessions() as s:
        details = s.scalars(select(Event.detail).where(Event.subscriber_id == ada, Event.type == "signup")).all()
    assert sum("after unsubscribing" in d for d in details) == 4
    # Bea's weekly sequence simply goes on (the real-clock pass above was her week-01's time too)
    assert subjects(smtp, "bea@example.org") == [s.subject for s in runtime.campaigns[BUNDLE].steps[:2]]
    assert enrollments(runtime, bea)[BUNDLE].status == "active" and "resubscribed" not in event_types(runtime, bea)


def test_a_bounced_address_gets_an_honest_page_and_no_email(client, runtime, smtp) -> None:
    """Ada's mail bounced; her new signup lands on "we can't send to this address", no email goes, and her
    timeline records the attempt. Bea's signup the same minute is welcomed as usual."""
    ada = enroll(runtime, "ada@example.org", now=T0)
    with runtime.sessions() as s, s.begin():
        stop_for(s, s.get(Subscriber, ada), "hard_bounce", now=T0, detail="550 5.1.1 no such user")
    r = client.post(f"/signup/{NEWS}", data={"email": "ada@example.org"})
    assert r.headers["Location"].endswith(f"/thanks/{NEWS}?state=not-sent")
    page = client.get(r.headers["Location"]).data.decode()
    assert "We can't send to this address" in page and "Nothing has been sent" in page
    assert client.post(f"/signup/{NEWS}", data={"email": "bea@example.org"}).headers["Location"].endswith(
        f"/thanks/{NEWS}")
    runtime.dispatcher().run_pass()  # the signups were on the real clock
    assert subjects(smtp, "ada@example.org") == []
    assert subjects(smtp, "bea@example.org") == [runtime.campaigns[NEWS].steps[0].subject]
    assert "signup_refused" in event_types(runtime, ada)


# -- forwarded links -------------------------------------------------------------------------------------------
def test_a_forwarded_preference_link_shows_no_address_and_reaches_no_data(client, runtime, smtp) -> None:
    """Whoever holds Ada's preference link sees a•••@example.org, not her address; asking for her data sends
    a link to Ada's own inbox (once per ten minutes) and returns nothing; that link names Ada only."""
    ada = enroll(runtime, "ada.lovelace@example.org", now=T0)
    bea = enroll(runtime, "bea@example.org", now=T0)
    path = prefs_path(runtime, ada)
    page = client.get(path).data.decode()
    assert "ada.lovelace@example.org" not in page and masked_address("ada.lovelace@example.org") in page
    for _ in range(2):
        r = client.post(f"{path}/export", headers=SITE)
        assert r.status_code == 303 and "attachment" not in r.headers.get("Content-Disposition", "")
    assert subjects(smtp, "ada.lovelace@example.org") == ["Your link to download your data"]
    shown = client.get(r.headers["Location"]).data.decode()
    assert "We&#39;ve emailed a link to a\u2022\u2022\u2022@example.org" in shown
    erase = client.post(f"{path}/erase", headers=SITE)
    assert erase.status_code == 303
    assert subjects(smtp, "ada.lovelace@example.org")[-1] == "Your link to erase your data"
    assert subjects(smtp, "bea@example.org") == []
    data = path_in(smtp.handler.messages(to="ada.lovelace@example.org")[0], "/data")
    assert b"a\xe2\x80\xa2\xe2\x80\xa2\xe2\x80\xa2@example.org" in client.get(data).data
    body = client.post(data, headers=SITE).get_data(as_text=True)
    assert "ada.lovelace@example.org" in body and "bea@" not in body
    assert client.post(data, headers={"Origin": "https://elsewhere.example"}).status_code == 403
    assert client.get(tampered(data)).status_code == 404
    with runtime.sessions() as s:
        assert s.get(Subscriber, bea) is not None and s.get(Subscriber, ada) is not None
    assert event_types(runtime, ada).count("data_link_sent") == 2


# -- the postal address ----------------------------------------------------------------------------------------
def test_the_placeholder_postal_address_stops_a_production_service(tmp_path) -> None:
    """https DRIP_BASE_URL + no DRIP_POSTAL_ADDRESS: every command that sends exits naming the variable; on http (the
    embedded default) it is only a warning, and a real address passes."""
    base = {"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": f"sqlite:///{tmp_path}/d.db"}
    prod = Settings.from_env({**base, "DRIP_BASE_URL": "https://mail.example.org"})
    assert prod.postal_address == PLACEHOLDER_POSTAL_ADDRESS
    with pytest.raises(ConfigError, match="DRIP_POSTAL_ADDRESS"):
        check_postal_address(prod)
    check_postal_address(Settings.from_env({**base, "DRIP_BASE_URL": "http://127.0.0.1:8000"}))
    check_postal_address(Settings.from_env({**base, "DRIP_BASE_URL": "https://mail.example.org",
                                            "DRIP_POSTAL_ADDRESS": "12 Long Street, Springfield"}))
    env = {**base, "DRIP_BASE_URL": "https://mail.example.org", "DRIP_TEMPLATES_DIR": "email_templates"}
    for command in (["serve", "--port", "1"], ["web", "--port", "1"], ["worker"], ["tick"]):  # all that send
        result = CliRunner().invoke(main, command, env=env)
        assert result.exit_code == 1 and "set DRIP_POSTAL_ADDRESS" in result.output, (command, result.output)


def test_the_home_form_shows_the_words_its_consent_records(client, runtime) -> None:
    """The embedded signup form shows the campaign's consent headline and button label, and a signup through
    it stores exactly those words, not a summary."""
    bundle = runtime.campaigns[BUNDLE]
    page = client.get("/").get_data(as_text=True)
    assert "Get this bundle of FREE lower back pain resources" in page and ">Get your free guide!</button>" in page
    assert "[button:" not in page
    assert client.post(f"/signup/{BUNDLE}", data={"email": "form@example.org"}).status_code == 303
    with runtime.sessions() as s:
        assert s.scalars(select(Consent.wording)).one() == bundle.consent
