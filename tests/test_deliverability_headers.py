"""Headers mailbox providers read, as received by the real SMTP server: Feedback-ID, Reply-To, the envelope
sender on the bounce domain, Message-IDs on the sender's domain, and no Precedence: bulk."""
from __future__ import annotations

import re
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import ROOT, at

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.campaigns.loader import load_campaign
from service.campaigns.model import CampaignError
from service.runtime import build_runtime

T0 = at("2026-03-02T15:00:00")


def send_one(rt, smtp, address: str = "ada@example.com"):
    data = parse_signup({"email": address}, campaigns=rt.campaigns, default_campaign=rt.settings.default_campaign)
    with rt.sessions() as s, s.begin():
        signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=T0)
    assert rt.dispatcher().run_pass(T0).sent == 1
    mail_from, _rcpts, _raw = smtp.handler.accepted[-1]
    return mail_from, smtp.handler.messages()[-1]


@pytest.fixture
def rt_with(settings):
    built = []

    def make(**changes: object):
        rt = build_runtime(replace(settings, **changes))
        built.append(rt)
        return rt
    yield make
    for rt in built:
        rt.sessions.kw["bind"].dispose()


def test_defaults_feedback_id_on_from_domain_no_reply_to_no_precedence(rt_with, smtp) -> None:
    """Without extra settings: Feedback-ID campaign:step:From-domain, envelope = From, Message-ID on it."""
    mail_from, msg = send_one(rt_with(), smtp)
    assert msg["Feedback-ID"] == "back-pain-bundle:welcome:backpainwarriors.example"
    assert mail_from == "sofia@backpainwarriors.example"
    assert msg["Message-ID"].endswith("@backpainwarriors.example>")
    assert msg["List-Id"] == "Free back-pain resource bundle <back-pain-bundle.backpainwarriors.example>"
    assert "Reply-To" not in msg and "Precedence" not in msg and "Return-Path" not in msg


def test_configured_sender_id_bounce_domain_and_reply_to(rt_with, smtp) -> None:
    """DRIP_FEEDBACK_ID_SENDER, DRIP_BOUNCE_DOMAIN and DRIP_REPLY_TO each reach the received message."""
    rt = rt_with(feedback_id_sender="drip-prod", bounce_domain="bounce.backpainwarriors.example",
                 reply_to="Coach Sofia <coach@backpainwarriors.example>")
    mail_from, msg = send_one(rt, smtp)
    assert msg["Feedback-ID"] == "back-pain-bundle:welcome:drip-prod"
    # becomes Return-Path at the receiver: a VERP address per message on the bounce domain (a bounce names its message)
    assert re.fullmatch(r"bounces\+\d+-[0-9a-f]+@bounce\.backpainwarriors\.example", mail_from), mail_from
    assert msg["Reply-To"] == "Coach Sofia <coach@backpainwarriors.example>"


def test_message_id_follows_the_from_override(rt_with, smtp) -> None:
    """With DRIP_FROM on another domain the Message-ID and List-Id move to that domain too."""
    rt = rt_with(from_address="News <news@mail.example.net>")
    _mail_from, msg = send_one(rt, smtp)
    assert msg["Message-ID"].endswith("@mail.example.net>")
    assert msg["Feedback-ID"].endswith(":mail.example.net")


def test_campaign_reply_to_wins_and_is_checked(tmp_path: Path, rt_with, smtp) -> None:
    """A campaign's `reply_to` key overrides DRIP_REPLY_TO; a malformed one is refused naming the key."""
    root = tmp_path / "templates"
    shutil.copytree(ROOT / "email_templates", root)
    toml = root / "back-pain-bundle" / "campaign.toml"
    original = toml.read_text()
    toml.write_text('reply_to = "help@backpainwarriors.example"\n' + original)
    assert load_campaign(toml).reply_to == "help@backpainwarriors.example"
    rt = rt_with(templates_dir=root, reply_to="other@backpainwarriors.example")
    _mail_from, msg = send_one(rt, smtp)
    assert msg["Reply-To"] == "help@backpainwarriors.example"
    toml.write_text('reply_to = "not an address"\n' + original)
    with pytest.raises(CampaignError, match="'reply_to'"):
        load_campaign(toml)
