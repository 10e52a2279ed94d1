"""The operator side: accounts, login with CSRF and throttling, the send log, the API and its tokens, metrics."""
from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from conftest import at

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.core.db import utcnow
from service.operator.accounts import add_user, create_token

T0 = at("2026-02-02T09:00:00")
PASSWORD = "correct horse battery"


@pytest.fixture
def operator(runtime):
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    return "ops@example.org"


def csrf(client, path: str = "/admin/login") -> str:
    page = client.get(path).data.decode()
    return re.search(r'name="csrf" value="([^"]+)"', page).group(1)


def login(client, email: str, password: str):
    return client.post("/admin/login", data={"email": email, "password": password, "csrf": csrf(client)})


def seed(runtime, *emails: str) -> None:
    for email in emails:
        data = parse_signup({"email": email}, campaigns=runtime.campaigns, default_campaign="back-pain-bundle")
        with runtime.sessions() as s, s.begin():
            signup(s, data, campaign=runtime.campaigns["back-pain-bundle"], meta=ConsentMeta("json"), now=T0)


def test_admin_needs_a_login(client, operator):
    """Nothing under /admin is reachable without logging in; the login page has a password field."""
    for path in ("/admin/", "/admin/messages", "/admin/messages/1"):
        r = client.get(path)
        assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    page = client.get("/admin/login")
    assert page.status_code == 200 and b'type="password"' in page.data


def test_login_sets_a_safe_cookie_and_logout_ends_it(client, operator):
    """A right password logs in with an HttpOnly, SameSite cookie; logging out needs the CSRF token."""
    r = login(client, operator, PASSWORD)
    assert r.status_code == 302
    cookie = r.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Secure" in cookie  # base URL is https
    assert client.get("/admin/messages").status_code == 200
    assert client.post("/admin/logout").status_code == 400  # no CSRF token
    assert client.post("/admin/logout", data={"csrf": csrf(client, "/admin/messages")}).status_code == 302
    assert client.get("/admin/messages").status_code == 302


def test_wrong_password_and_missing_csrf_are_refused(client, operator):
    """A wrong password is a 401; a form without the CSRF token is a 400 before the password is looked at."""
    assert login(client, operator, "wrong password!").status_code == 401
    r = client.post("/admin/login", data={"email": operator, "password": PASSWORD})
    assert r.status_code == 400


def test_failed_logins_are_throttled(client, operator):
    """After five failures even the right password is refused for a while."""
    for _ in range(5):
        assert login(client, operator, "guess-guess-guess").status_code == 401
    assert login(client, operator, PASSWORD).status_code == 401


def test_send_log_lists_and_filters_messages(client, runtime, operator, smtp):
    """The send log shows each message with its status; filters narrow it; a row links to its history."""
    smtp.handler.script("bad@example.org", "RCPT", "550 5.1.1 unknown")
    seed(runtime, "good@example.org", "bad@example.org")
    runtime.dispatcher().run_pass(T0)
    login(client, operator, PASSWORD)
    page = client.get("/admin/messages").data.decode()
    assert "good@example.org" in page and "bad@example.org" in page
    assert "status-bounced" in page and "550 5.1.1" in page
    page = client.get("/admin/messages?status=bounced").data.decode()
    assert "bad@example.org" in page and "good@example.org" not in page
    page = client.get("/admin/messages?email=GOOD").data.decode()
    assert "good@example.org" in page and "bad@example.org" not in page
    link = re.search(r'href="(/admin/messages/\d+)"', page).group(1)
    detail = client.get(link).data.decode()
    for word in ("queued", "attempt", "sent", runtime.campaigns["back-pain-bundle"].steps[0].subject):
        assert word in detail.replace("&#39;", "'")


def test_api_needs_a_token_and_pages_the_send_log(client, runtime, smtp):
    """GET /api/v1/messages wants a Bearer token, filters by status and pages with a keyset cursor."""
    seed(runtime, *(f"r{i}@example.org" for i in range(5)))
    runtime.dispatcher().run_pass(T0)
    assert client.get("/api/v1/messages").status_code == 401
    assert client.get("/api/v1/messages", headers={"Authorization": "Bearer nope"}).status_code == 401
    with runtime.sessions() as s, s.begin():
        token = create_token(s, "script", now=utcnow())
    auth = {"Authorization": f"Bearer {token}"}
    first = client.get("/api/v1/messages?limit=2", headers=auth).get_json()
    assert [m["status"] for m in first["data"]] == ["sent", "sent"]
    second = client.get(f"/api/v1/messages?limit=2&before={first['next_before']}", headers=auth).get_json()
    third = client.get(f"/api/v1/messages?limit=2&before={second['next_before']}", headers=auth).get_json()
    ids = [m["id"] for page in (first, second, third) for m in page["data"]]
    assert ids == sorted(ids, reverse=True) and len(set(ids)) == 5 and third["next_before"] is None
    assert client.get("/api/v1/messages?status=bounced", headers=auth).get_json()["data"] == []
    bad = client.get("/api/v1/messages?status=lost", headers=auth)
    assert bad.status_code == 400 and bad.get_json()["error"]["field"] == "status"
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.") and "/api/v1/messages" in spec["paths"]


def test_metrics_report_the_database_truth(client, runtime, smtp):
    """/metrics counts messages by status from the database, in Prometheus text format."""
    seed(runtime, "m1@example.org", "m2@example.org")
    runtime.dispatcher().run_pass(T0)
    text = client.get("/metrics").data.decode()
    assert "# TYPE drip_messages gauge" in text
    assert 'drip_messages{status="sent"} 2.0' in text
    assert 'drip_subscribers{status="active"} 2.0' in text


def test_cli_users_and_tokens(runtime, tmp_path, monkeypatch):
    """`drip users add` reads the password from stdin; `drip tokens create` prints a token the API takes."""
    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    runner = CliRunner()
    r = runner.invoke(main, ["users", "add", "cli@example.org"], input="a long enough password\n", env=env)
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, ["users", "add", "short@example.org"], input="short\n", env=env)
    assert r.exit_code != 0 and "at least" in r.output
    r = runner.invoke(main, ["tokens", "create", "ci"], env=env)
    token = r.output.strip()
    assert r.exit_code == 0 and token.startswith("drip_")
    from service.app import create_app

    client = create_app(runtime=runtime).test_client()
    assert client.get("/api/v1/messages", headers={"Authorization": f"Bearer {token}"}).status_code == 200
    r = runner.invoke(main, ["tick", "--now", "not-a-date"], env=env)
    assert r.exit_code != 0 and "ISO-8601" in r.output


@pytest.mark.parametrize("target", ["//evil.example/admin", "https://evil.example/admin", "/\\\\evil.example",
                                    "/adminx", "javascript:alert(1)"])
def test_login_never_redirects_off_site(client, operator, target):
    """The `next` parameter after login only ever leads to a page under /admin on this site."""
    token = csrf(client)
    r = client.post(f"/admin/login?next={target}", data={"email": operator, "password": PASSWORD, "csrf": token})
    assert r.status_code == 302 and r.headers["Location"] == "/admin/"
