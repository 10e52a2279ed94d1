"""The signup webhook: JSON and form posts, validation, idempotency, consent, and that it never sends mail."""
from __future__ import annotations

import json

import pytest
from conftest import in_one_window
from sqlalchemy import func, select

from service.core.models import Consent, Enrollment, Event, Message, Subscriber, Suppression
from service.enrollment.suppression import email_hash


def count(runtime, model) -> int:
    with runtime.sessions() as s:
        return s.scalar(select(func.count()).select_from(model))


def post_json(client, body, path="/signup", **kw):
    return client.post(path, data=json.dumps(body) if not isinstance(body, (bytes, str)) else body,
                       content_type="application/json", **kw)


def test_json_signup_creates_subscriber_enrollment_and_consent(client, runtime, smtp):
    """A JSON signup answers 201 and stores subscriber, enrollment and consent, but sends nothing."""
    r = post_json(client, {"email": "  Ada@Example.COM ", "name": "Ada Lovelace", "timezone": "Europe/London"},
                  headers={"User-Agent": "test-agent/1.0", "Referer": "https://blog.example/psoas"})
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["email"] == "Ada@example.com"
    with runtime.sessions() as s:
        sub = s.scalars(select(Subscriber)).one()
        assert (sub.email, sub.name, sub.timezone, sub.status) == ("Ada@example.com", "Ada Lovelace",
                                                                   "Europe/London", "active")
        enrollment = s.scalars(select(Enrollment)).one()
        assert enrollment.campaign == "back-pain-bundle" and enrollment.next_step == 0
        consent = s.scalars(select(Consent)).one()
        assert consent.campaign == "back-pain-bundle"
        assert consent.source == "json" and consent.source_url == "https://blog.example/psoas"
        assert consent.user_agent == "test-agent/1.0"
        assert consent.ip is None  # only when DRIP_RECORD_IP is on
        assert consent.wording == runtime.campaigns["back-pain-bundle"].consent
        assert consent.created_at.tzinfo is not None
        assert enrollment.next_due_at == sub.created_at == consent.created_at  # the welcome is due at once
        event = s.scalars(select(Event)).one()
        assert (event.type, event.subscriber_id, event.detail) == ("signup", sub.id,
                                                                   "signed up for back-pain-bundle via json")
    assert count(runtime, Message) == 0
    assert smtp.handler.messages() == []


def test_same_address_again_is_one_subscriber(client, runtime):
    """Repeating a signup, in any letter case or with spaces, is idempotent: 200, nothing new."""
    assert post_json(client, {"email": "Alice@Example.COM"}).status_code == 201
    for variant in ("Alice@example.com", "alice@EXAMPLE.com ", " ALICE@example.com"):
        r = post_json(client, {"email": variant})
        assert r.status_code == 200, variant
    assert count(runtime, Subscriber) == 1
    assert count(runtime, Enrollment) == 1
    assert count(runtime, Consent) == 1


def test_browser_form_post_redirects_to_thank_you_page(client, runtime):
    """A browser form post gets a 303 to the campaign's thank-you page, which shows its text."""
    r = client.post("/signup", data={"email": "bo@example.org", "name": "Bo"}, headers={"Accept": "text/html"})
    assert r.status_code == 303
    assert r.headers["Location"].endswith("/thanks/back-pain-bundle")
    page = client.get(r.headers["Location"])
    assert page.status_code == 200
    assert runtime.campaigns["back-pain-bundle"].thank_you_title.encode() in page.data.replace(b"&#39;", b"'")
    with runtime.sessions() as s:
        assert s.scalars(select(Consent)).one().source == "form"


def test_campaign_in_path(client, runtime):
    """POST /signup/<campaign> enrolls in that campaign; an unknown one is a 404 naming the field."""
    assert post_json(client, {"email": "c@example.org"}, path="/signup/back-pain-bundle").status_code == 201
    r = post_json(client, {"email": "d@example.org"}, path="/signup/no-such-campaign")
    assert r.status_code == 404
    assert r.get_json()["error"]["field"] == "campaign"
    r = post_json(client, {"email": "d@example.org", "campaign": "nope"})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "campaign"


@pytest.mark.parametrize("bad", [
    "a@b", "user@localhost", "x@invalid", '"a b"@example.com', "u@[127.0.0.1]", "", "   ",
    "a" * 330 + "@example.com", "u@exa mple.com", "no-at-sign", "ツ-test@example.com",
])
def test_invalid_addresses_are_refused_with_the_field(client, runtime, bad):
    """Addresses that are malformed or that a plain SMTP relay cannot take get a 400 naming `email`."""
    r = post_json(client, {"email": bad})
    assert r.status_code == 400
    err = r.get_json()["error"]
    assert err["field"] == "email" and err["message"] and err["code"] in ("invalid_email", "missing_email")
    assert count(runtime, Subscriber) == 0


def test_missing_email_and_wrong_types(client):
    """Missing or non-string fields are clear 400s, never 500s."""
    assert post_json(client, {"name": "x"}).get_json()["error"]["field"] == "email"
    assert post_json(client, {"email": ["a@example.org"]}).status_code == 400
    r = post_json(client, {"email": "a@example.org", "name": {"x": 1}})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "name"
    r = post_json(client, {"email": "a@example.org", "timezone": "Mars/Olympus"})
    assert r.status_code == 400 and r.get_json()["error"]["field"] == "timezone"


def test_malformed_json_is_400_and_too_large_is_413(client, runtime):
    """Broken JSON gets 400, a JSON array 400, an oversized body 413, an unknown media type 415."""
    r = post_json(client, b'{"email": "a@example.org"')
    assert r.status_code == 400 and r.get_json()["error"]["code"] == "malformed_json"
    assert post_json(client, b'["a@example.org"]').status_code == 400
    big = json.dumps({"email": "a@example.org", "name": "x" * (runtime.settings.max_body_bytes + 10)})
    r = post_json(client, big)
    assert r.status_code == 413 and r.get_json()["error"]["code"] == "too_large"
    r = client.post("/signup", data=b"email=a@example.org", content_type="text/plain")
    assert r.status_code == 415
    assert count(runtime, Subscriber) == 0


def test_names_lose_control_characters_and_unknown_fields_are_ignored(client, runtime):
    """Control characters, bidi overrides and newlines are stripped from names; extra fields are ignored."""
    r = post_json(client, {"email": "eve@example.org", "name": "Eve\r\nBcc: victim@example.org\x00\u202e",
                           "favourite_colour": "blue"})
    assert r.status_code == 201
    with runtime.sessions() as s:
        name = s.scalars(select(Subscriber.name)).one()
    assert name == "Eve Bcc: victim@example.org"
    assert post_json(client, {"email": "z@example.org", "name": "x" * 101}).status_code == 400


def test_ip_is_recorded_only_when_configured(app, runtime):
    """The consent record keeps the client IP only when DRIP_RECORD_IP is on."""
    from dataclasses import replace

    from service.app import create_app
    from service.runtime import build_runtime

    rt = build_runtime(replace(runtime.settings, record_ip=True))
    client = create_app(runtime=rt).test_client()
    r = post_json(client, {"email": "ip@example.org"}, environ_base={"REMOTE_ADDR": "203.0.113.9"})
    assert r.status_code == 201
    with rt.sessions() as s:
        assert s.scalars(select(Consent.ip)).one() == "203.0.113.9"


def test_suppressed_address_is_not_resurrected(client, runtime):
    """An address on the suppression list (a past hard bounce) is not enrolled again by a signup."""
    from service.core.db import utcnow

    with runtime.sessions() as s, s.begin():
        s.add(Suppression(email_hash=email_hash("gone@example.org"), reason="hard_bounce", created_at=utcnow()))
    r = post_json(client, {"email": "Gone@Example.org"})
    assert r.status_code == 200 and r.get_json()["status"] == "not_subscribed"
    assert count(runtime, Subscriber) == 0 and count(runtime, Enrollment) == 0


def test_unsubscribed_reader_is_not_reenrolled_by_a_form(client, runtime):
    """Someone who unsubscribed stays unsubscribed when the form is posted again (bots do that): the answer
    is "confirmation_sent" (a come-back email asks them; tests/test_reader_trust.py follows it), and only the
    attempt is recorded."""
    assert post_json(client, {"email": "left@example.org"}).status_code == 201
    with runtime.sessions() as s, s.begin():
        s.scalars(select(Subscriber)).one().status = "unsubscribed"
    r = post_json(client, {"email": "left@example.org"})
    assert r.status_code == 200 and r.get_json()["status"] == "confirmation_sent"
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.status)).one() == "unsubscribed"
        assert s.scalar(select(func.count()).select_from(Event).where(Event.type == "signup")) == 2
        assert s.scalar(select(func.count()).select_from(Enrollment)) == 1  # no second enrollment


def test_signup_rate_limit_answers_429_with_retry_after(app, runtime):
    """Past DRIP_SIGNUP_RATE_LIMIT a client gets 429 with Retry-After, and nothing is stored."""
    from dataclasses import replace

    from service.app import create_app
    from service.core.config import RateLimit
    from service.runtime import build_runtime

    rt = build_runtime(replace(runtime.settings, signup_rate_limit=RateLimit(3, 3600)))
    client = create_app(runtime=rt).test_client()
    in_one_window(3600)
    codes = [post_json(client, {"email": f"r{i}@example.org"}).status_code for i in range(5)]
    assert codes == [201, 201, 201, 429, 429]
    r = post_json(client, {"email": "r9@example.org"})
    assert r.status_code == 429 and 1 <= int(r.headers["Retry-After"]) <= 3600
    with rt.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Subscriber)) == 3


def test_form_error_shows_the_form_again(client):
    """A browser posting a bad address sees the form again with the message, not a JSON blob."""
    r = client.post("/signup", data={"email": "nope", "name": "<b>Al</b>"}, headers={"Accept": "text/html"})
    assert r.status_code == 400
    assert b'class="error"' in r.data and b"email" in r.data
    assert b"&lt;b&gt;Al&lt;/b&gt;" in r.data  # the typed name comes back escaped


def test_home_page_shows_the_bundle_form(client, runtime):
    """The home page is the back-pain bundle signup form with its consent wording."""
    page = client.get("/")
    assert page.status_code == 200
    assert b'name="email"' in page.data and b'name="timezone"' in page.data
    assert runtime.campaigns["back-pain-bundle"].title.encode() in page.data
    assert "Content-Security-Policy" in page.headers


def test_browser_with_an_unknown_time_zone_still_signs_up(client, runtime):
    """A hidden time-zone field the reader cannot fix never loses a browser signup: the campaign's zone is used."""
    r = client.post("/signup", data={"email": "tz@example.org", "timezone": "Etc/Unknown"},
                    headers={"Accept": "text/html"})
    assert r.status_code == 303
    with runtime.sessions() as s:
        assert s.scalars(select(Subscriber.timezone)).one() is None


def test_browser_over_the_rate_limit_gets_a_page_not_json(app, runtime):
    """A browser past the limit sees the form with a message and Retry-After, not a JSON blob."""
    from dataclasses import replace

    from service.app import create_app
    from service.core.config import RateLimit
    from service.runtime import build_runtime

    rt = build_runtime(replace(runtime.settings, signup_rate_limit=RateLimit(1, 3600)))
    client = create_app(runtime=rt).test_client()
    in_one_window(3600)
    assert client.post("/signup", data={"email": "p1@example.org"}, headers={"Accept": "text/html"}).status_code == 303
    r = client.post("/signup", data={"email": "p2@example.org"}, headers={"Accept": "text/html"})
    assert r.status_code == 429 and r.mimetype == "text/html" and int(r.headers["Retry-After"]) >= 1
    assert b"Too many signups" in r.data


def test_behind_a_trusted_proxy_the_client_address_is_the_forwarded_one(runtime):
    """With DRIP_TRUSTED_PROXIES=1, readers behind one proxy get their own rate-limit bucket and consent IP."""
    from dataclasses import replace

    from service.app import create_app
    from service.core.config import RateLimit
    from service.runtime import build_runtime

    rt = build_runtime(replace(runtime.settings, trusted_proxies=1, record_ip=True,
                               signup_rate_limit=RateLimit(1, 3600)))
    client = create_app(runtime=rt).test_client()
    in_one_window(3600)
    for i, ip in enumerate(("198.51.100.1", "198.51.100.2")):
        r = post_json(client, {"email": f"px{i}@example.org"}, headers={"X-Forwarded-For": ip},
                      environ_base={"REMOTE_ADDR": "10.0.0.1"})
        assert r.status_code == 201
    with rt.sessions() as s:
        assert sorted(s.scalars(select(Consent.ip))) == ["198.51.100.1", "198.51.100.2"]


def test_every_way_of_joining_starts_the_same_enrollment(runtime, client) -> None:
    """A new address (the fast plain-SQL path) and a known address joining a second campaign (the ORM path)
    start alike: active, at the welcome step by key, due at once."""
    for payload in ({"email": "new@example.org"}, {"email": "new@example.org", "campaign": "monthly-newsletter"}):
        assert client.post("/signup", json=payload).status_code in (200, 201, 202)
    with runtime.sessions() as s:
        rows = s.execute(select(Enrollment.campaign, Enrollment.status, Enrollment.next_step, Enrollment.next_step_key,
                                Enrollment.next_due_at.is_not(None))).all()
    first = {key: runtime.campaigns[key].steps[0].key for key in ("back-pain-bundle", "monthly-newsletter")}
    assert sorted(rows) == sorted((c, "active", 0, first[c], True) for c in first)
