"""Unsubscribe links: a page on GET, the action on POST (RFC 8058 one-click), signed opaque tokens."""
from __future__ import annotations

import time
from datetime import timedelta
from unittest import mock

from conftest import at, tampered
from sqlalchemy import func, select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import Event, Message, Subscriber
from service.core.tokens import make_unsubscribe_token

T0 = at("2026-05-04T10:00:00")


def enroll(rt, email: str) -> Subscriber:
    data = parse_signup({"email": email}, campaigns=rt.campaigns, default_campaign="back-pain-bundle")
    with rt.sessions() as s, s.begin():
        result = signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=T0)
        return s.get(Subscriber, result.subscriber_id)


def path_of(rt, sub: Subscriber) -> str:
    return rt.unsubscribe_url(sub.public_id, "back-pain-bundle").removeprefix(rt.settings.base_url)


def status(rt, sub: Subscriber) -> str:
    with rt.sessions() as s:
        return s.get(Subscriber, sub.id).status


def test_get_and_head_show_a_page_and_change_nothing(client, runtime):
    """Link scanners fetch URLs: GET shows one button, HEAD does nothing, the reader stays subscribed."""
    sub = enroll(runtime, "scan@example.org")
    path = path_of(runtime, sub)
    page = client.get(path)
    assert page.status_code == 200
    assert b"<form" in page.data and b'method="post"' in page.data and b"<button" in page.data
    assert client.head(path).status_code == 200
    assert status(runtime, sub) == "active"


def test_one_click_post_urlencoded_and_multipart(client, runtime):
    """RFC 8058: a POST with List-Unsubscribe=One-Click, no cookie, no CSRF token, gets 200 and no redirect."""
    a, b = enroll(runtime, "a@example.org"), enroll(runtime, "b@example.org")
    client.delete_cookie("drip_session")
    r = client.post(path_of(runtime, a), data="List-Unsubscribe=One-Click",
                    content_type="application/x-www-form-urlencoded")
    assert r.status_code == 200 and "Location" not in r.headers and "Set-Cookie" not in r.headers
    assert status(runtime, a) == "unsubscribed"
    r = client.post(path_of(runtime, b), data={"List-Unsubscribe": "One-Click"}, content_type="multipart/form-data")
    assert r.status_code == 200
    assert status(runtime, b) == "unsubscribed"
    with runtime.sessions() as s:
        methods = s.scalars(select(Event.data).where(Event.type == "unsubscribed")).all()
    assert [m["method"] for m in methods] == ["one-click", "one-click"]


def test_repeated_posts_are_idempotent(client, runtime):
    """The same one-click POST three times answers 200 each time and records one unsubscribe."""
    sub = enroll(runtime, "thrice@example.org")
    for _ in range(3):
        assert client.post(path_of(runtime, sub), data={"List-Unsubscribe": "One-Click"}).status_code == 200
    with runtime.sessions() as s:
        assert s.scalar(select(func.count()).select_from(Event).where(Event.type == "unsubscribed")) == 1


def test_unsubscribe_cancels_the_queued_welcome(client, runtime, smtp):
    """An unsubscribe before the first pass cancels the queued welcome: nothing is ever sent."""
    from service.dispatch.policy import PassSummary

    sub = enroll(runtime, "fast@example.org")
    runtime.dispatcher().queue_due(T0, PassSummary())
    assert client.post(path_of(runtime, sub)).status_code == 200
    assert runtime.dispatcher().run_pass(T0 + timedelta(days=30)).sent == 0
    assert smtp.handler.messages() == []
    with runtime.sessions() as s:
        assert s.scalars(select(Message.status)).one() == "suppressed"


def test_forged_or_foreign_tokens_change_nothing(client, runtime):
    """A flipped character, another salt, or another key: 404, and nobody is unsubscribed."""
    sub = enroll(runtime, "safe@example.org")
    path = path_of(runtime, sub)
    token = path.rsplit("/", 1)[1]
    flipped = tampered(token)
    from itsdangerous import URLSafeTimedSerializer

    other_salt = URLSafeTimedSerializer(runtime.settings.secret_key, salt="confirm-email").dumps(
        [sub.public_id, "back-pain-bundle"])
    other_key = make_unsubscribe_token("another-secret", public_id=sub.public_id, campaign="back-pain-bundle")
    for bad in (flipped, other_salt, other_key, "x" * 500, "nonsense"):
        assert client.post(f"/unsubscribe/{bad}", data={"List-Unsubscribe": "One-Click"}).status_code == 404
        assert client.get(f"/unsubscribe/{bad}").status_code == 404
    assert status(runtime, sub) == "active"


def test_token_is_opaque_and_still_works_after_60_days(client, runtime):
    """The token holds no address or row id, and a link from an email two months old still works."""
    sub = enroll(runtime, "old@example.org")
    path = path_of(runtime, sub)
    token = path.rsplit("/", 1)[1]
    assert "old@example.org" not in token and str(sub.id) != token
    real_time = time.time
    with mock.patch("time.time", lambda: real_time() + 60 * 86400):
        assert client.post(path, data={"List-Unsubscribe": "One-Click"}).status_code == 200
    assert status(runtime, sub) == "unsubscribed"


def test_database_down_is_an_error_not_a_false_success(runtime):
    """If the unsubscribe cannot be stored the answer is 5xx, so the mail client or reader can retry."""
    from dataclasses import replace

    from conftest import free_port

    from service.app import create_app
    from service.runtime import build_runtime

    sub = enroll(runtime, "down@example.org")
    path = path_of(runtime, sub)
    dead = build_runtime(replace(runtime.settings,
                                 database_url=f"postgresql+psycopg://postgres@127.0.0.1:{free_port()}/gone"))
    r = create_app(runtime=dead).test_client().post(path, data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 503
    assert status(runtime, sub) == "active"
