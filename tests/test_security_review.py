"""Regression tests for an outside security review of `drip serve` and `drip web`: each test is named after
what it prevents, and fails on the code before the fix (see docs/security.md, "Findings and their tests")."""
from __future__ import annotations

import json
import re
import socket
import threading

import pytest
from fakes import FakeProvider, SnsSigner
from test_webhooks import TOPIC, sent_setup, state

from service.core import outbound_urls
from service.core.config import ConfigError
from service.feedback.webhook_auth import Rejected, check_cert_url
from service.transports.http import ApiUrl


class Listener:
    """A loopback TCP port that records every connection made to it (and answers nothing)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, OSError):
                continue
            self.connections += 1
            conn.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.sock.close()


@pytest.fixture
def fake(request: pytest.FixtureRequest):
    server = FakeProvider(request.param)
    yield server
    server.close()


@pytest.fixture
def listener():
    server = Listener()
    yield server
    server.close()


# -- SNS: a SigningCertURL or SubscribeURL that points anywhere but an SNS host ------------------------
@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_sns_cert_url_with_a_backslash_userinfo_trick_never_reaches_another_host(runtime, fake, listener) -> None:
    """`https://HOST:PORT\\@sns.<region>.amazonaws.com/...` looked like an AWS URL to the check while the HTTP
    client connected to HOST:PORT: a forged complaint then suppressed a reader. Now nothing is fetched from
    the stranger's listener and nothing changes; the same trick in SubscribeURL is refused as well."""
    signer = SnsSigner(fake)
    rt, client, _rows = sent_setup(runtime, fake, ("ada@example.com", "bob@example.com"), sns_topic_arns=(TOPIC,),
                                   sns_cert_hosts=(fake.netloc,))
    complaint = {"notificationType": "Complaint", "mail": {"messageId": "x"},
                 "complaint": {"complainedRecipients": [{"emailAddress": "ada@example.com"}]}}
    before = state(rt)
    for trick in (f"https://127.0.0.1:{listener.port}\\@sns.us-east-1.amazonaws.com/SimpleNotificationService-a.pem",
                  f"https://127.0.0.1:{listener.port}%5C@sns.us-east-1.amazonaws.com/x.pem",
                  f"https://user@127.0.0.1:{listener.port}/sns.us-east-1.amazonaws.com/x.pem",
                  f"https://sns.us-east-1.amazonaws.com:{listener.port}/x.pem",
                  f"http://127.0.0.1:{listener.port}/x.pem"):
        note = signer.sign({"Type": "Notification", "MessageId": "m-1", "TopicArn": TOPIC,
                            "Message": json.dumps(complaint), "Timestamp": "2026-03-02T15:00:00.000Z"},
                           cert_url=trick)
        r = client.post("/webhooks/ses", data=json.dumps(note), content_type="text/plain")
        assert r.status_code == 403, trick
    confirm = signer.sign({"Type": "SubscriptionConfirmation", "MessageId": "c-1", "Token": "t", "TopicArn": TOPIC,
                           "Message": "subscribe", "Timestamp": "2026-03-02T15:00:00.000Z",
                           "SubscribeURL": f"http://127.0.0.1:{listener.port}/internal-admin?x=1"})
    r = client.post("/webhooks/ses", data=json.dumps(confirm), content_type="text/plain")
    assert r.status_code == 403 and "SubscribeURL" in r.get_json()["error"]["message"]
    assert listener.connections == 0
    assert state(rt) == before


def test_every_fetched_url_is_read_the_same_way_by_every_parser() -> None:
    """The one check in front of every fetch: AWS hosts exactly, https, default port, no userinfo or
    backslash; the URL handed to the HTTP client is rebuilt from the checked parts."""
    good = "https://sns.eu-west-1.amazonaws.com/SimpleNotificationService-abc.pem"
    assert check_cert_url(good, ()) == good
    subscribe = ("https://sns.us-west-2.amazonaws.com/?Action=ConfirmSubscription&TopicArn=arn:aws:sns:us-west-2:"
                 "123456789012:MyTopic&Token=2336412f37fb687f5d51e6e241d09c805a5a57b30d712f794cc5f6a988666d92")
    assert check_cert_url(subscribe, ()) == subscribe  # what AWS really sends as SubscribeURL
    for bad in ("https://evil.example\\@sns.eu-west-1.amazonaws.com/x.pem", "https://a:b@sns.eu-west-1.amazonaws.com/x",
                "https://sns.eu-west-1.amazonaws.com:443/x.pem", "https://sns.eu-west-1.amazonaws.com/x\\y.pem",
                "https://sns.eu-west-1.amazonaws.com /x.pem", "https://sns.eu-west-1.amazonaws.com\t/x.pem",
                "https://sns.eu-west-1.amazonaws.com%2eevil.example/x.pem", "https://SNS.eu-west-1.amazonaws.com.evil/x",
                "ftp://sns.eu-west-1.amazonaws.com/x.pem"):
        with pytest.raises(Rejected):
            check_cert_url(bad, ())
    # A provider endpoint from the operator's settings: any plain host, https (http only to loopback).
    assert outbound_urls.check("http://127.0.0.1:8025/v3", allow_http_loopback=True, allow_port=True).port == 8025
    for bad in ("http://10.0.0.5/v3", "https://u:p@api.example.com/", "https://api.example.com\\@x/"):
        with pytest.raises(outbound_urls.UnsafeUrl):
            outbound_urls.check(bad, allow_http_loopback=True, allow_port=True)
        with pytest.raises(ConfigError, match="endpoint must be a plain https URL") as refused:
            ApiUrl.parse(f"postmark://server-token@?endpoint={bad}").endpoint("https://api.postmarkapp.com")
        assert "u:p" not in str(refused.value)


@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_sns_certificate_is_fetched_once_per_url(runtime, fake) -> None:
    """Certificates are cached: two notifications signed with one certificate fetch it once."""
    signer = SnsSigner(fake)
    _rt, client, _rows = sent_setup(runtime, fake, sns_topic_arns=(TOPIC,), sns_cert_hosts=(fake.netloc,))
    for i in range(2):
        note = signer.sign({"Type": "Notification", "MessageId": f"n-{i}", "TopicArn": TOPIC, "Message": "{}",
                            "Timestamp": "2026-03-02T15:00:00.000Z"})
        assert client.post("/webhooks/ses", data=json.dumps(note), content_type="text/plain").status_code == 200
    assert len([s for s in fake.seen if s.path.endswith(".pem")]) == 1


# -- API tokens: read or write, per token --------------------------------------------------------------
def _count_subscribers(runtime) -> int:
    from sqlalchemy import func, select

    from service.core.models import Subscriber

    with runtime.sessions() as s:
        return s.scalar(select(func.count()).select_from(Subscriber))


def test_a_read_only_api_token_cannot_enrol_unsubscribe_or_erase(client, runtime, tmp_path, monkeypatch) -> None:
    """A token made without --write reads the send log and subscribers but every change is a 403 naming the
    missing scope, and nothing changes; a --write token makes the same changes; `drip tokens list` shows which
    token may do what."""
    from click.testing import CliRunner

    from service.cli import main

    monkeypatch.chdir(tmp_path)
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key}
    runner = CliRunner()

    def bearer(*args: str) -> dict:
        return {"Authorization": "Bearer " + runner.invoke(main, ["tokens", "create", *args], env=env).output.strip()}

    reader, writer = bearer("dashboard"), bearer("crm-sync", "--write")
    made = client.post("/api/v1/subscribers", json={"email": "ada@example.com"}, headers=writer)
    assert made.status_code == 201
    ada = made.get_json()["subscriber"]["id"]
    for method, path, body in (("post", "/api/v1/subscribers", {"email": "eve@example.com"}),
                               ("post", f"/api/v1/subscribers/{ada}/unsubscribe", None),
                               ("delete", f"/api/v1/subscribers/{ada}", None)):
        r = getattr(client, method)(path, json=body, headers=reader)
        assert r.status_code == 403 and r.get_json()["error"]["code"] == "insufficient_scope", path
        assert 'error="insufficient_scope"' in r.headers["WWW-Authenticate"]
    assert _count_subscribers(runtime) == 1
    assert client.get(f"/api/v1/subscribers/{ada}", headers=reader).get_json()["status"] == "active"
    assert client.get("/api/v1/messages", headers=reader).status_code == 200
    assert client.post(f"/api/v1/subscribers/{ada}/unsubscribe", headers=writer).status_code == 200
    assert client.delete(f"/api/v1/subscribers/{ada}", headers=writer).status_code == 204
    assert _count_subscribers(runtime) == 0
    listing = runner.invoke(main, ["tokens", "list"], env=env).output
    assert re.search(r"1\s+dashboard\s+read\s", listing) and re.search(r"2\s+crm-sync\s+read write\s", listing)


def test_create_token_stays_read_only_unless_asked_and_refuses_unknown_scopes(runtime) -> None:
    """The library call other code uses: read-only by default, "write" implies read, a typo is an error."""
    from service.core.db import utcnow
    from service.operator.accounts import AccountError, check_token, create_token

    with runtime.sessions() as s, s.begin():
        plain = create_token(s, "a", now=utcnow())
        both = create_token(s, "b", now=utcnow(), scopes=["write"])
        with pytest.raises(AccountError, match="unknown token scope 'admin'"):
            create_token(s, "c", now=utcnow(), scopes="read admin")
    with runtime.sessions() as s:
        assert check_token(s, plain, now=utcnow()).scopes == "read"
        assert check_token(s, both, now=utcnow()).scopes == "read write"


# -- console sessions end on the server at logout and on a password change -----------------------------
def test_a_copied_session_cookie_is_spent_after_logout_and_after_a_password_change(app, runtime) -> None:
    """A session cookie copied from the operator's browser works only until that operator logs out, or until
    the password changes; before, the copy kept working for up to 12 hours. A second operator is unaffected."""
    from test_admin_api import PASSWORD, csrf, login

    from service.core.db import utcnow
    from service.operator.accounts import add_user

    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
        add_user(s, "other@example.org", PASSWORD, now=utcnow())
    owner, thief, colleague = app.test_client(), app.test_client(), app.test_client()
    assert login(owner, "ops@example.org", PASSWORD).status_code == 302
    assert login(colleague, "other@example.org", PASSWORD).status_code == 302
    thief.set_cookie("drip_session", owner.get_cookie("drip_session").value)
    assert thief.get("/admin/messages").status_code == 200  # a copy works while the session lives
    assert owner.post("/admin/logout", data={"csrf": csrf(owner, "/admin/messages")}).status_code == 302
    r = thief.get("/admin/messages")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    assert colleague.get("/admin/messages").status_code == 200

    assert login(owner, "ops@example.org", PASSWORD).status_code == 302
    thief.set_cookie("drip_session", owner.get_cookie("drip_session").value)
    assert thief.get("/admin/messages").status_code == 200
    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", "a brand new passphrase", now=utcnow(), reset_password=True)
    for stale in (thief, owner):
        assert stale.get("/admin/messages").status_code == 302
    assert colleague.get("/admin/messages").status_code == 200
    assert login(owner, "ops@example.org", "a brand new passphrase").status_code == 302
    assert owner.get("/admin/messages").status_code == 200


# -- deeply nested JSON is a clear 400 everywhere JSON comes in ----------------------------------------
DEEP = b'{"email": "ada@example.com", "x": ' + b"[" * 3000 + b"]" * 3000 + b"}"
SHALLOW_BUT_TOO_DEEP = b'{"email": "ada@example.com", "x": ' + b"[" * 40 + b"]" * 40 + b"}"


def test_deeply_nested_json_is_a_clear_400_not_a_500_on_signup_api_and_webhooks(runtime) -> None:
    """6 KB of nesting (and 40 levels, within the interpreter's stack) gets a 400 saying so on /signup, the
    API, and the Mailgun and SES webhooks, unauthenticated; no traceback, nothing stored."""
    from conftest import with_settings

    from service.app import create_app
    from service.core.db import utcnow
    from service.operator.accounts import create_token

    rt = with_settings(runtime, mailgun_signing_key="key-test", sns_topic_arns=(TOPIC,))
    app = create_app(runtime=rt)
    client = app.test_client()
    with rt.sessions() as s, s.begin():
        token = create_token(s, "deep", now=utcnow(), scopes="read write")
    for body in (DEEP, SHALLOW_BUT_TOO_DEEP):
        r = client.post("/signup", data=body, content_type="application/json")
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "too_deep"
        r = client.post("/api/v1/subscribers", data=body, content_type="application/json",
                        headers={"Authorization": f"Bearer {token}"})
        assert r.status_code == 400 and r.get_json()["error"]["code"] == "too_deep"
        for provider in ("mailgun", "ses"):
            r = client.post(f"/webhooks/{provider}", data=body, content_type="application/json")
            assert r.status_code == 400 and "nested more than" in r.get_json()["error"]["message"], provider
    assert _count_subscribers(rt) == 0
    ok = client.post("/signup", json={"email": "ada@example.com", "extra": [[["fine"]]]})
    assert ok.status_code == 201


# -- an encoded-word address does not break the outbox viewer ------------------------------------------
def test_an_encoded_word_signup_address_does_not_break_the_outbox_page(runtime, tmp_path) -> None:
    """One signup of `=?utf-8?q?a=0D=0A?=@example.com` made /admin/outbox answer 500 for every email in it;
    now the page lists every email, that one's recipient shown as plain text."""
    from conftest import at, with_settings
    from test_admin_api import PASSWORD, login

    from service.app import create_app
    from service.core.db import utcnow
    from service.operator.accounts import add_user

    rt = with_settings(runtime, email_url=f"file://{tmp_path / 'outbox'}")
    app = create_app(runtime=rt)
    client = app.test_client()
    for address in ("=?utf-8?q?a=0D=0A?=@example.com", "bob@example.com"):
        assert client.post("/signup", json={"email": address}).status_code == 201
    assert rt.dispatcher().run_pass(at("2030-01-01T12:00:00")).sent == 2
    with rt.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    login(client, "ops@example.org", PASSWORD)
    page = client.get("/admin/outbox")
    assert page.status_code == 200 and b"bob@example.com" in page.data
    for name in re.findall(r'href="/admin/outbox/([^"/]+\.eml)"', page.data.decode()):
        assert client.get(f"/admin/outbox/{name}").status_code == 200


# -- CSV exports keep what readers typed as text ---------------------------------------------------------
def test_export_subscribers_never_writes_a_spreadsheet_formula(client, runtime, smtp, tmp_path, monkeypatch) -> None:
    """Names and addresses a reader typed that start with = + - @ come out of `drip export-subscribers` as text
    (a leading apostrophe), like the console's send-log CSV; ordinary readers are written unchanged."""
    import csv
    import io

    from click.testing import CliRunner
    from test_subscriber_io import env_for

    from service.cli import main

    readers = [("=cmd@example.com", "=HYPERLINK(\"http://evil.example\",\"click\")"), ("-x@example.com", "+1 555"),
               ("ada@example.com", "@ada"), ("bob@example.com", "Bob")]
    for address, name in readers:
        assert client.post("/signup", json={"email": address, "name": name}).status_code == 201
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["export-subscribers"], env=env_for(runtime, smtp))
    assert r.exit_code == 0, r.output
    rows = {x["email"]: x["name"] for x in csv.DictReader(io.StringIO(r.output))}
    assert rows == {"'=cmd@example.com": "'=HYPERLINK(\"http://evil.example\",\"click\")", "'-x@example.com": "'+1 555",
                    "ada@example.com": "'@ada", "bob@example.com": "Bob"}


# -- the per-address signup limit counts one inbox, whatever +tag or dots it is written with --------------
@pytest.mark.parametrize("storage", ["database", "redis"])
def test_plus_tag_and_dot_variants_cannot_bomb_one_inbox_past_the_address_limit(runtime, storage) -> None:
    """With 3 signups per address per day, the fourth variant of one Gmail inbox (+tags, dots, googlemail.com,
    capitals) is refused with 429 and Retry-After; another reader, and dotted addresses at a domain where
    dots matter, are not held back by it."""
    import secrets

    from conftest import in_one_window, with_settings

    from service.app import create_app
    from service.core.addresses import mailbox_key
    from service.core.config import RateLimit

    prefix = secrets.token_hex(4)
    store = "database" if storage == "database" else f"redis://127.0.0.1:6379/0?prefix=drip-test-{prefix}:"
    rt = with_settings(runtime, signup_rate_limit=None, signup_address_rate_limit=RateLimit(3, 86400),
                       rate_limit_storage=store)
    client = create_app(runtime=rt).test_client()
    in_one_window(86400)  # the day's window, on the real clock
    variants = ["ada.lovelace+news@gmail.com", "adalovelace+2@googlemail.com", "a.d.a.lovelace@gmail.com",
                "AdaLovelace+again@gmail.com"]
    assert {mailbox_key(v.lower()) for v in variants} == {"adalovelace@gmail.com"}
    answers = [client.post("/signup", json={"email": v}) for v in variants]
    assert [r.status_code for r in answers] == [201, 201, 201, 429]
    assert int(answers[-1].headers["Retry-After"]) > 0
    for other in ("bob+1@gmail.com", "a.b@example.com", "ab@example.com", "a.b+x@example.com"):
        assert client.post("/signup", json={"email": other}).status_code == 201, other
    assert _count_subscribers(rt) == 7


# -- failed logins slow a stranger without locking the owner out -------------------------------------------
def test_a_stranger_failing_from_three_addresses_cannot_lock_the_owner_out(app, runtime) -> None:
    """Fifteen wrong passwords for the owner's account from three client addresses used to lock the owner out
    for 15 minutes. Now each stranger's address is limited (the right password fails from there too), the
    account backs off for browsers it never logged in from, and the owner's own browser still logs in."""
    from datetime import timedelta

    from test_admin_api import PASSWORD, csrf, login

    from service.core.db import utcnow
    from service.operator.accounts import ACCOUNT_MAX_WAIT, add_user, authenticate

    with runtime.sessions() as s, s.begin():
        add_user(s, "ops@example.org", PASSWORD, now=utcnow())
    owner = app.test_client()
    owner.environ_base["REMOTE_ADDR"] = "198.51.100.10"
    assert login(owner, "ops@example.org", PASSWORD).status_code == 302
    assert owner.post("/admin/logout", data={"csrf": csrf(owner, "/admin/messages")}).status_code == 302
    strangers = []
    for n in (1, 2, 3):
        stranger = app.test_client()
        stranger.environ_base["REMOTE_ADDR"] = f"203.0.113.{n}"
        for _ in range(5):
            assert login(stranger, "ops@example.org", "wrong guess number").status_code == 401
        strangers.append(stranger)
    assert login(strangers[0], "ops@example.org", PASSWORD).status_code == 401  # that address is limited
    r = login(owner, "ops@example.org", PASSWORD)  # the owner's own browser is not held back by strangers
    assert r.status_code == 302 and owner.get("/admin/messages").status_code == 200

    # A browser the account never logged in from meets a backoff, not a lockout: right after a run of
    # failures from twenty addresses even the right password waits, and a minute later it gets through.
    t0 = utcnow() + timedelta(hours=1)  # a window of its own, clear of the failures above
    with runtime.sessions() as s, s.begin():
        for n in range(20):
            assert authenticate(s, "ops@example.org", "wrong", client=f"192.0.2.{n}", now=t0) is None
        assert authenticate(s, "ops@example.org", PASSWORD, client="192.0.2.100", now=t0) is None
        later = t0 + ACCOUNT_MAX_WAIT + timedelta(seconds=1)
        assert authenticate(s, "ops@example.org", PASSWORD, client="192.0.2.200", now=later) is not None


# -- a new SQLite database is private to its owner ------------------------------------------------------
def test_a_new_sqlite_database_is_not_readable_by_other_accounts_on_the_host(tmp_path) -> None:
    """With the usual umask (022), `drip db upgrade` on a fresh path used to leave the database (and its WAL)
    world-readable; now the file, its -wal and -shm and a folder made for it are readable by the owner only."""
    import os
    import stat

    from service.core.db import make_engine
    from service.core.migrate import upgrade

    path = tmp_path / "instance" / "drip.sqlite3"
    old = os.umask(0o022)
    try:
        upgrade(f"sqlite:///{path}")
        engine = make_engine(f"sqlite:///{path}")
        with engine.begin() as conn:
            conn.exec_driver_sql("INSERT INTO rate_hits (key, window_start, count) VALUES ('k', '2026-01-01', 1)")
            files = [p for p in path.parent.iterdir() if p.name.startswith("drip.sqlite3")]
            assert {p.name for p in files} >= {"drip.sqlite3", "drip.sqlite3-wal"}
            for p in files:
                assert stat.S_IMODE(p.stat().st_mode) & 0o077 == 0, (p.name, oct(p.stat().st_mode))
        engine.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


# -- the public home page does not show where the server keeps its files ---------------------------------
def test_the_public_home_page_does_not_show_the_servers_outbox_path(runtime, tmp_path) -> None:
    """With the file transport the home page used to print the outbox folder's absolute path to anyone; it now
    only says emails stay on this machine and links to the console's outbox viewer, which needs a login."""
    from conftest import with_settings

    from service.app import create_app

    folder = tmp_path / "secret-place" / "outbox"
    client = create_app(runtime=with_settings(runtime, email_url=f"file://{folder}")).test_client()
    page = client.get("/").data.decode()
    assert str(tmp_path) not in page and "secret-place" not in page
    assert 'href="/admin/outbox"' in page
    r = client.get("/admin/outbox")
    assert r.status_code == 302 and "/admin/login" in r.headers["Location"]
    smtp_page = create_app(runtime=runtime).test_client().get("/").data.decode()
    assert "/admin/outbox" not in smtp_page  # with a real transport there is nothing local to point at
