"""The console's home, settings and words, through the app (no browser), on both databases: the old send-log
link, an optional unsubscribe reason that never stands in the way of one-click, operators who are never
silently reset (console and CLI) and who lose their session when disabled, tokens shown once, sending resumed
from the console, times in each operator's own zone, and the warnings that need action."""
from __future__ import annotations

import re
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import at
from sqlalchemy import select
from test_admin_api import PASSWORD, csrf, login, operator  # noqa: F401  (operator is a fixture)
from test_unsubscribe import enroll, path_of

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.core.db import utcnow
from service.core.models import Event, Message, SendingState, Subscriber, User
from service.dispatch.sending_pause import pause
from service.operator import home
from service.operator.accounts import AccountError, add_user, authenticate


def test_an_old_send_log_link_lands_on_the_send_log(client, operator) -> None:  # noqa: F811
    login(client, operator, PASSWORD)
    r = client.get("/admin?status=failed&campaign=back-pain-bundle")
    assert r.status_code in (301, 308)
    follow = client.get(r.headers["Location"], follow_redirects=True)
    assert follow.request.path == "/admin/messages" and follow.request.args["status"] == "failed"
    assert client.get("/admin/", follow_redirects=False).status_code == 200  # the home page itself
    assert b"<h1>Today</h1>" in client.get("/admin/").data


def test_one_click_stays_one_click_and_a_reason_is_optional(client, runtime) -> None:
    """The mailbox provider's POST unsubscribes at once with no reason; a reader on the page may add one line
    afterwards, which the home page shows; a reason for someone still subscribed, or an empty one, is ignored."""
    a, b, c = (enroll(runtime, f"{n}@example.org") for n in ("a", "b", "c"))
    client.delete_cookie("drip_session")
    r = client.post(path_of(runtime, a), data={"List-Unsubscribe": "One-Click"})
    assert r.status_code == 200 and b"tell us why" in r.data  # asked after, never before
    r = client.post(path_of(runtime, b), data={})  # the page's button
    assert r.status_code == 200
    r = client.post(path_of(runtime, b) + "/reason", data={"reason": "  I moved\x00to a\nnew job  "})
    assert r.status_code == 200 and b"Thank you for telling us" in r.data
    client.post(path_of(runtime, a) + "/reason", data={"reason": ""})
    client.post(path_of(runtime, c) + "/reason", data={"reason": "still here"})  # not unsubscribed: ignored
    assert client.post("/unsubscribe/not-a-token/reason", data={"reason": "x"}).status_code == 404
    with runtime.sessions() as s:
        left = {u.email: u for u in home.unsubscribes(s, now=utcnow())}
        statuses = dict(s.execute(select(Subscriber.email, Subscriber.status)).all())
    assert statuses == {"a@example.org": "unsubscribed", "b@example.org": "unsubscribed", "c@example.org": "active"}
    assert left["b@example.org"].reason == "I moved to a new job"
    assert left["a@example.org"].reason is None and "one-click" in left["a@example.org"].how
    assert "page" in left["b@example.org"].how and "c@example.org" not in left


def test_adding_an_existing_operator_never_resets_their_password(runtime, tmp_path, monkeypatch) -> None:
    monkeypatch.chdir(tmp_path)
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    with runtime.sessions() as s, s.begin(), pytest.raises(AccountError, match="already has an account"):
        add_user(s, "OPS@example.org", "another password", now=utcnow())
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    runner = CliRunner()
    r = runner.invoke(main, ["users", "add", "ops@example.org"], input="another password\n", env=env)
    assert r.exit_code != 0 and "--reset-password" in r.output
    with runtime.sessions() as s, s.begin():
        assert authenticate(s, "ops@example.org", PASSWORD, client="t", now=utcnow()) is not None
    r = runner.invoke(main, ["users", "add", "--reset-password", "ops@example.org"], input="another password\n",
                      env=env)
    assert r.exit_code == 0, r.output
    with runtime.sessions() as s, s.begin():
        assert authenticate(s, "ops@example.org", "another password", client="t", now=utcnow()) is not None
        assert authenticate(s, "ops@example.org", PASSWORD, client="t2", now=utcnow()) is None


def test_operators_in_the_console(client, runtime, operator, app) -> None:  # noqa: F811
    """Add from the console; an existing address is refused (400, named) unless the reset box is ticked; a
    disabled operator's open session ends and they cannot log in; nobody disables themselves."""
    login(client, operator, PASSWORD)
    token = csrf(client, "/admin/operators")
    r = client.post("/admin/operators", data={"csrf": token, "email": "two@example.org", "password": "pw for two 123"})
    assert r.status_code == 302
    r = client.post("/admin/operators", data={"csrf": token, "email": "two@example.org", "password": "changed it 123"})
    assert r.status_code == 400 and b"already has an account" in r.data
    short = client.post("/admin/operators", data={"csrf": token, "email": "x@example.org", "password": "short"})
    assert short.status_code == 400 and b"at least 10" in short.data
    other = app.test_client()
    login(other, "two@example.org", "pw for two 123")
    assert other.get("/admin/messages").status_code == 200
    with runtime.sessions() as s:
        two, me = (s.scalar(select(User.id).where(User.email == e)) for e in ("two@example.org", operator))
    assert client.post(f"/admin/operators/{two}/disable", data={"csrf": token}).status_code == 302
    assert other.get("/admin/messages").status_code == 302  # their session ended
    assert login(other, "two@example.org", "pw for two 123").status_code == 401
    client.post(f"/admin/operators/{me}/disable", data={"csrf": token})
    with runtime.sessions() as s:
        assert s.get(User, me).disabled_at is None
        assert s.get(User, two).disabled_at is not None
    client.post(f"/admin/operators/{two}/enable", data={"csrf": token})
    assert login(other, "two@example.org", "pw for two 123").status_code == 302


def test_a_token_is_shown_once_and_revoked_in_the_console(client, runtime, operator) -> None:  # noqa: F811
    login(client, operator, PASSWORD)
    token = csrf(client, "/admin/tokens")
    assert client.post("/admin/tokens", data={"csrf": token, "name": "   "}).status_code == 400
    r = client.post("/admin/tokens", data={"csrf": token, "name": "export"})
    secret = re.search(r"drip_[A-Za-z0-9_\-]+", r.data.decode()).group(0)
    assert r.headers["Cache-Control"] == "no-store"
    api = {"Authorization": f"Bearer {secret}"}
    assert client.get("/api/v1/messages", headers=api).status_code == 200
    # Read-only unless the box is ticked: this one cannot enrol anyone; one made with the box can.
    assert client.post("/api/v1/subscribers", json={"email": "ada@example.com"}, headers=api).status_code == 403
    r = client.post("/admin/tokens", data={"csrf": token, "name": "crm sync", "write": "yes"})
    writer = {"Authorization": "Bearer " + re.search(r"drip_[A-Za-z0-9_\-]+", r.data.decode()).group(0)}
    assert client.post("/api/v1/subscribers", json={"email": "ada@example.com"}, headers=writer).status_code == 201
    listing = client.get("/admin/tokens").data.decode()
    assert secret not in listing and "export" in listing and "read and change" in listing
    token_id = re.search(r'/admin/tokens/(\d+)/revoke', listing).group(1)  # the first row: "export"
    client.post(f"/admin/tokens/{token_id}/revoke", data={"csrf": token})
    assert client.get("/api/v1/messages", headers=api).status_code == 401


def test_sending_is_resumed_from_the_console_with_its_reason_shown(client, runtime, operator) -> None:  # noqa: F811
    with runtime.sessions() as s, s.begin():
        pause(s, "Postmark refused our server token (401)", now=utcnow())
    login(client, operator, PASSWORD)
    page = client.get("/admin/sending").data.decode()
    assert "Postmark refused our server token (401)" in page and "Resume sending" in page
    assert "Sending is paused" in client.get("/admin/").data.decode()
    client.post("/admin/sending/resume", data={"csrf": csrf(client, "/admin/sending")})
    with runtime.sessions() as s:
        assert s.get(SendingState, 1).paused is False
        assert s.scalar(select(Event.detail).where(Event.type == "sending_resumed")) == "resumed by an operator"
    assert "Sending is running" in client.get("/admin/sending").data.decode()


def test_each_operator_reads_times_in_their_own_zone(client, runtime, operator, app, smtp) -> None:  # noqa: F811
    """Two operators, one in Tokyo and one left on UTC, see the same message's time each in their zone, to the
    whole second, beside the step's subject line; a made-up zone is refused with the field named."""
    data = parse_signup({"email": "r@example.org"}, campaigns=runtime.campaigns, default_campaign="back-pain-bundle")
    sent_at = at("2026-03-01T10:20:30.123456")
    with runtime.sessions() as s, s.begin():
        signup(s, data, campaign=runtime.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=sent_at)
        add_user(s, "utc@example.org", PASSWORD, now=utcnow())
    runtime.dispatcher().run_pass(sent_at)
    login(client, operator, PASSWORD)
    bad = client.post("/admin/account", data={"csrf": csrf(client, "/admin/account"), "timezone": "Mars/Olympus"})
    assert bad.status_code == 400 and b"Time zone" in bad.data
    client.post("/admin/account", data={"csrf": csrf(client, "/admin/account"), "timezone": "Asia/Tokyo"})
    other = app.test_client()
    login(other, "utc@example.org", PASSWORD)
    tokyo, utc = client.get("/admin/messages").data.decode(), other.get("/admin/messages").data.decode()
    assert "2026-03-01 19:20:30 JST" in tokyo and "2026-03-01 10:20:30 UTC" in utc
    assert ".123456" not in tokyo and "10:20:30" not in tokyo
    welcome = runtime.campaigns["back-pain-bundle"].steps[0]
    assert welcome.subject in utc
    with runtime.sessions() as s:
        mid = s.scalar(select(Message.id))
    assert "2026-03-01 19:20:30 JST" in client.get(f"/admin/messages/{mid}").data.decode()


def test_warnings_name_what_needs_action(runtime, smtp) -> None:
    """The placeholder postal address and DKIM off are named; a step bouncing far more than the campaign's
    other steps is named; a campaign whose steps all do alike is not."""
    rt = runtime
    t0 = at("2026-03-02T15:00:00")
    for n in range(12):
        address = f"r{n}@example.org"
        if n < 4:
            smtp.handler.script(address, "RCPT", "550 5.1.1 no such mailbox")
        data = parse_signup({"email": address}, campaigns=rt.campaigns, default_campaign="back-pain-bundle")
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=t0)
    d = rt.dispatcher()
    for hour in range(0, 24 * 8, 4):
        d.run_pass(t0 + timedelta(hours=hour))
    with rt.sessions() as s:
        health = home.health(s, rt.campaigns, now=t0 + timedelta(days=8), tracking=False)
        titles = [w.title for w in home.warnings(s, now=t0, dkim_on=False, postal_placeholder=True,
                                                 campaigns_health=health)]
        calm = [w.title for w in home.warnings(s, now=t0, dkim_on=True, postal_placeholder=False,
                                               campaigns_health=health)]
    assert "DKIM signing is off" in titles and "Postal address missing" in titles
    assert any("welcome fails more than usual" in t for t in titles)
    assert not any("week-01" in t for t in titles)
    assert calm == [t for t in titles if "fails more than usual" in t]
