"""Double opt-in per campaign: confirmation email with a signed link, welcome only after the click,
expiry of unconfirmed signups, and at most one confirmation per cooldown however often the form is posted."""
from __future__ import annotations

import re
import shutil
from datetime import timedelta
from pathlib import Path

import pytest
from conftest import ROOT, at, tampered, with_settings
from sqlalchemy import func, select

from service.app import create_app
from service.audience.signups import ConsentMeta, parse_signup, signup
from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError
from service.core.db import utcnow
from service.core.models import Consent, Enrollment, Event, PendingConfirmation, Subscriber

CAMPAIGN = "glute-guide"


def templates(tmp_path: Path, flag: str = "true") -> Path:
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    toml = root / CAMPAIGN / "campaign.toml"
    toml.write_text(toml.read_text().replace("send_hour = 9\n", f"send_hour = 9\ndouble_opt_in = {flag}\n", 1))
    return root


@pytest.fixture
def rt(runtime, tmp_path):
    r = with_settings(runtime, templates_dir=templates(tmp_path))
    yield r
    r.sessions.kw["bind"].dispose()


@pytest.fixture
def web(rt):
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    return app.test_client()


def post_form(web, email: str = "ada@example.org"):
    return web.post(f"/signup/{CAMPAIGN}", data={"email": email, "name": "Ada"})


def confirm_path(message) -> str:
    text = message.get_body(("plain",)).get_content()
    return re.search(r"https://drip\.example\.org(/confirm/[A-Za-z0-9_.\-]+)", text).group(1)


def count(rt, model) -> int:
    with rt.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def test_welcome_only_after_the_confirm_button(rt, web, smtp):
    """Signup -> a confirmation email, no enrollment; GET of the link only shows a button; POST confirms
    (consent "confirmed"), and the next pass sends the welcome."""
    assert post_form(web).status_code == 303
    assert count(rt, Enrollment) == 0
    d = rt.dispatcher()
    d.run_pass()
    [mail] = smtp.handler.messages(to="ada@example.org")
    assert mail["Subject"] == rt.campaigns[CAMPAIGN].confirm_subject and "List-Unsubscribe" not in mail
    assert "Hi Ada," in mail.get_body(("plain",)).get_content()
    path = confirm_path(mail)
    page = web.get(path)
    assert page.status_code == 200 and b'method="post"' in page.data
    assert count(rt, Enrollment) == 0  # a link scanner's GET confirms nothing
    d.run_pass()
    assert len(smtp.handler.messages()) == 1  # nothing until confirmed
    done = web.post(path)
    assert done.status_code == 200 and b"Thank you for confirming" in done.data
    with rt.sessions() as s:
        assert [c.source for c in s.scalars(select(Consent).order_by(Consent.id))] == ["form", "confirmed"]
        assert s.scalars(select(Enrollment.campaign)).all() == [CAMPAIGN]
    d.run_pass()
    subjects = [m["Subject"] for m in smtp.handler.messages(to="ada@example.org")]
    assert subjects == [rt.campaigns[CAMPAIGN].confirm_subject, rt.campaigns[CAMPAIGN].steps[0].subject]
    assert web.post(path).status_code == 200  # a second click changes nothing
    d.run_pass()
    assert len(smtp.handler.messages()) == 2
    with rt.sessions() as s:  # the glute guide once; its invitation waits 3 days and nothing else starts
        assert sorted(s.scalars(select(Enrollment.campaign))) == [CAMPAIGN]


def test_fifty_submissions_send_one_confirmation_per_cooldown(rt, web, smtp):
    """50 form posts for one address -> 1 confirmation email; 50 more within the hour -> none; one more
    after the 60-minute cooldown -> a second one."""
    d = rt.dispatcher()
    for _ in range(50):
        assert post_form(web, "victim@example.org").status_code == 303
    d.run_pass()
    assert len(smtp.handler.messages(to="victim@example.org")) == 1
    for _ in range(50):
        post_form(web, "victim@example.org")
    d.run_pass()
    assert len(smtp.handler.messages(to="victim@example.org")) == 1
    later = utcnow() + timedelta(minutes=61)
    data = parse_signup({"email": "victim@example.org"}, campaigns=rt.campaigns, default_campaign=CAMPAIGN,
                        campaign_in_path=CAMPAIGN)
    with rt.sessions() as s, s.begin():
        assert signup(s, data, campaign=rt.campaigns[CAMPAIGN], meta=ConsentMeta("form"), now=later).status == "pending"
    d.run_pass(later)
    assert len(smtp.handler.messages(to="victim@example.org")) == 2
    assert count(rt, PendingConfirmation) == 1 and count(rt, Enrollment) == 0


def test_unconfirmed_signups_expire(rt, web, smtp):
    """After DRIP_CONFIRM_EXPIRY_DAYS (7) the pending signup and the unconfirmed address are gone, and the
    link says so (410)."""
    t0 = at("2026-05-04T12:00:00")
    data = parse_signup({"email": "late@example.org"}, campaigns=rt.campaigns, default_campaign=CAMPAIGN,
                        campaign_in_path=CAMPAIGN)
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[CAMPAIGN], meta=ConsentMeta("form"), now=t0)
    d = rt.dispatcher()
    d.run_pass(t0)
    path = confirm_path(smtp.handler.messages()[0])
    d.run_pass(t0 + timedelta(days=6))
    assert count(rt, PendingConfirmation) == 1
    d.run_pass(t0 + timedelta(days=7, minutes=1))
    assert count(rt, PendingConfirmation) == 0
    assert count(rt, Subscriber) == 0 and count(rt, Consent) == 0  # an unconfirmed address is not kept
    gone = web.post(path)
    assert gone.status_code == 410 and b"expired" in gone.data
    assert count(rt, Enrollment) == 0


def test_expiry_keeps_a_reader_who_unsubscribed_from_the_confirmation(rt, web, smtp):
    """Two unconfirmed signups expire; the one who clicked unsubscribe in the confirmation email keeps her
    subscriber row and its unsubscribe record, the other is forgotten."""
    t0 = at("2026-05-04T12:00:00")
    for email in ("gone@example.org", "left@example.org"):
        data = parse_signup({"email": email}, campaigns=rt.campaigns, default_campaign=CAMPAIGN,
                            campaign_in_path=CAMPAIGN)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns[CAMPAIGN], meta=ConsentMeta("form"), now=t0)
    d = rt.dispatcher()
    d.run_pass(t0)
    [confirmation] = smtp.handler.messages(to="left@example.org")
    text = confirmation.get_body(("plain",)).get_content()
    unsubscribe = re.search(r"https://drip\.example\.org(/unsubscribe/\S+)", text)  # the footer's link
    assert web.post(unsubscribe.group(1), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    d.run_pass(t0 + timedelta(days=7, minutes=1))
    with rt.sessions() as s:
        left = s.scalars(select(Subscriber.status).where(Subscriber.email_key == "left@example.org")).all()
        assert left == ["unsubscribed"]
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 1
        assert "unsubscribed" in s.scalars(select(Event.type)).all()


def test_forged_or_foreign_tokens_confirm_nothing(rt, web, smtp):
    """A tampered token, or an unsubscribe token (another salt), is refused with 404."""
    post_form(web)
    rt.dispatcher().run_pass()
    path = confirm_path(smtp.handler.messages()[0])
    assert web.post(tampered(path)).status_code == 404
    with rt.sessions() as s:
        public_id = s.scalars(select(PendingConfirmation.subscriber_id)).one() and s.scalar(
            select(Subscriber.public_id))
    unsub = rt.unsubscribe_url(public_id, CAMPAIGN).rpartition("/")[2]
    assert web.post(f"/confirm/{unsub}").status_code == 404
    assert count(rt, Enrollment) == 0


def test_double_opt_in_must_be_a_boolean(tmp_path: Path) -> None:
    """`double_opt_in = "yes"` stops loading, naming the file."""
    with pytest.raises(CampaignError, match="double_opt_in.*true or false") as err:
        load_campaigns(templates(tmp_path, '"yes"'))
    assert CAMPAIGN in str(err.value)


def test_every_campaign_can_render_its_confirmation(tmp_path: Path) -> None:
    """The shared confirmation template renders for every shipped campaign, with the link and footer."""
    from datetime import UTC, datetime

    from service.compose.composer import Composer, compose_confirmation

    campaigns = load_campaigns(ROOT / "email_templates")
    composer = Composer(templates_dir=ROOT / "email_templates", base_url="https://d.example",
                        postal_address="1 Main St")
    for campaign in campaigns.values():
        out = compose_confirmation(composer, campaign=campaign, to_email="a@example.org", name="",
                                   now=datetime.now(UTC), confirm_url="https://d.example/confirm/T", unsubscribe_url="https://d.example/u",
                                   pending_id=1, expiry_days=7)
        for part in (out.text, out.html):
            assert "https://d.example/confirm/T" in part and "1 Main St" in part and campaign.title in part


def test_a_signup_waiting_for_its_click_is_void_once_the_reader_leaves_even_in_the_same_instant(rt):
    """Two readers, one instant. Ada asked to join and then unsubscribed: the link she was sent before must
    not bring her back. Bo unsubscribed and then asked again: that request is his way back. Both carry the
    same time, so only the order of events tells them apart: leaving voids the signups waiting for a click."""
    from service.audience.optin import confirm
    from service.audience.unsubscribe import unsubscribe
    from service.core.tokens import UnsubscribeClaim

    t0 = at("2026-05-04T12:00:00")
    campaign = rt.campaigns[CAMPAIGN]

    def ask(email: str) -> str:
        data = parse_signup({"email": email, "name": email[:3]}, campaigns=rt.campaigns, default_campaign=CAMPAIGN,
                            campaign_in_path=CAMPAIGN)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=campaign, meta=ConsentMeta("form"), now=t0)
            return s.scalar(select(Subscriber.public_id).where(Subscriber.email_key == email))

    def leave(public_id: str) -> None:
        with rt.sessions() as s, s.begin():
            assert unsubscribe(s, UnsubscribeClaim(public_id=public_id, campaign=CAMPAIGN), now=t0,
                               method="one-click").found

    def click(public_id: str) -> str:
        with rt.sessions() as s, s.begin():
            return confirm(s, public_id=public_id, campaign=campaign, now=t0).state

    ada, bo = ask("ada@example.org"), ask("bo@example.org")
    leave(ada)
    leave(bo)
    assert ask("bo@example.org") == bo  # Bo asks again after leaving, in the same second
    assert (click(ada), click(bo)) == ("inactive", "returned")
    with rt.sessions() as s:
        status = dict(s.execute(select(Subscriber.email_key, Subscriber.status)).all())
        assert status == {"ada@example.org": "unsubscribed", "bo@example.org": "active"}
        assert s.scalars(select(Enrollment.subscriber_id)).all() == [
            s.scalar(select(Subscriber.id).where(Subscriber.public_id == bo))]
