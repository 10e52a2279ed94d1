"""Sending through the five provider APIs, each against a local server speaking its documented API:
request shapes, provider ids, 429 waits, timeouts after accepting, validation errors and bad keys."""
from __future__ import annotations

import base64
import email
import email.policy
import time
from datetime import timedelta

import pytest
from click.testing import CliRunner
from conftest import at, free_port, with_settings
from fakes import FakeProvider, Reply, transport_url
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.core.models import Event, Message, Subscriber
from service.enrollment.suppression import is_suppressed

T0 = at("2026-03-02T15:00:00")
PROVIDERS = ["postmark", "sendgrid", "mailgun", "ses", "resend"]


def enroll(rt, address: str, name: str = "Ada Lovelace") -> int:
    data = parse_signup({"email": address, "name": name}, campaigns=rt.campaigns,
                        default_campaign=rt.settings.default_campaign)
    with rt.sessions() as s, s.begin():
        return signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=T0).subscriber_id


def only_message(rt) -> Message:
    with rt.sessions() as s:
        [m] = s.scalars(select(Message)).all()
        s.expunge(m)
        return m


@pytest.fixture
def fake(request: pytest.FixtureRequest):
    server = FakeProvider(getattr(request, "param", "postmark"))
    yield server
    server.close()


def provider_runtime(runtime, fake: FakeProvider, **query: str):
    return with_settings(runtime, email_url=transport_url(fake.provider, fake, **query))


def check_shape(provider: str, seen, rt) -> None:
    """Each provider's documented request: path, auth header, body fields, our List-Unsubscribe."""
    h = {k.lower(): v for k, v in seen.headers.items()}
    if provider == "postmark":
        body = seen.json()
        if seen.path == "/email/batch":  # the batch endpoint: a list of the same message objects
            [body] = body
        else:
            assert seen.path == "/email"
        assert h["x-postmark-server-token"] == "pm-token"
        assert body["MessageStream"] == "broadcast" and body["To"].endswith("<ada@example.com>")
        assert body["TextBody"] and body["HtmlBody"] and body["Subject"]
        names = {x["Name"] for x in body["Headers"]}
        assert {"List-Unsubscribe", "List-Unsubscribe-Post", "List-Id"} <= names
    elif provider == "sendgrid":
        body = seen.json()
        assert seen.path == "/v3/mail/send" and h["authorization"] == "Bearer SG.key"
        [p] = body["personalizations"]
        assert p["to"] == [{"email": "ada@example.com", "name": "Ada Lovelace"}] and p["custom_args"]["drip_message"]
        assert [c["type"] for c in body["content"]] == ["text/plain", "text/html"]
        assert "List-Unsubscribe" in body["headers"] and body["from"]["email"]
    elif provider == "mailgun":
        assert seen.path == "/v3/mg.example.org/messages.mime"
        assert base64.b64decode(h["authorization"].split()[1]) == b"api:mg-key"
        assert h["content-type"].startswith("multipart/form-data")
        assert b'name="to"' in seen.body and b"ada@example.com" in seen.body and b'name="v:drip-message"' in seen.body
        assert b"List-Unsubscribe-Post: List-Unsubscribe=One-Click" in seen.body
        # The form read back by a multipart parser: each field whole, the message as an attached email.
        form = email.message_from_bytes(f"Content-Type: {h['content-type']}\r\n\r\n".encode() + seen.body,
                                        policy=email.policy.HTTP)
        fields = {part.get_param("name", header="content-disposition"): part for part in form.iter_parts()}
        assert list(fields) == ["to", "v:drip-message", "message"]
        assert fields["to"].get_content() == "ada@example.com"
        assert fields["v:drip-message"].get_content() == str(only_message(rt).id)
        assert fields["message"].get_filename() == "message.eml"
        [attached] = fields["message"].get_payload()
        assert attached["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and attached["To"].addresses
    elif provider == "ses":
        body = seen.json()
        assert seen.path == "/v2/email/outbound-emails"
        assert h["authorization"].startswith("AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/")
        assert "/us-east-1/ses/aws4_request" in h["authorization"] and "x-amz-date" in h
        assert body["Destination"] == {"ToAddresses": ["ada@example.com"]}
        mime = email.message_from_bytes(base64.b64decode(body["Content"]["Raw"]["Data"]), policy=email.policy.default)
        assert mime["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click" and mime["To"].addresses
        assert body["EmailTags"] == [{"Name": "drip_message", "Value": str(only_message(rt).id)}]
        assert h["authorization"] == ses_signature(seen, "AKIDEXAMPLE", "secret/key")
    else:
        body = seen.json()
        if seen.path == "/emails/batch":  # a list; one key for the batch, invalid emails reported by index
            [body] = body
            assert h["idempotency-key"].startswith("drip-batch-") and h["x-batch-validation"] == "permissive"
        else:
            assert seen.path == "/emails" and h["idempotency-key"] == f"drip-message-{only_message(rt).id}"
        assert h["authorization"] == "Bearer re_key"
        assert body["to"] == ["Ada Lovelace <ada@example.com>"] and "List-Unsubscribe" in body["headers"]
        assert body["tags"] == [{"name": "drip_message", "value": str(only_message(rt).id)}]


def ses_signature(seen, key_id: str, secret: str) -> str:
    """The Authorization SES would expect for the request as it arrived (its Host, body and X-Amz-Date),
    computed by botocore's SigV4 steps: what our HTTP client put on the wire is what was signed."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    h = {k.lower(): v for k, v in seen.headers.items()}
    request = AWSRequest(method="POST", url=f"http://{h['host']}{seen.path}", data=seen.body,
                         headers={"Content-Type": h["content-type"], "X-Amz-Date": h["x-amz-date"]})
    request.context["timestamp"] = h["x-amz-date"]
    signer = SigV4Auth(Credentials(key_id, secret), "ses", "us-east-1")
    signature = signer.signature(signer.string_to_sign(request, signer.canonical_request(request)), request)
    return (f"AWS4-HMAC-SHA256 Credential={key_id}/{h['x-amz-date'][:8]}/us-east-1/ses/aws4_request, "
            f"SignedHeaders=content-type;host;x-amz-date, Signature={signature}")


def test_ses_request_body_is_json_with_every_field() -> None:
    """SES's body is written around the message's base64 by hand: it parses as JSON, with a display
    name holding quotes and non-ASCII, and the configuration set when one is given."""
    import json

    from service.transports import make_transport
    from service.transports.base import OutboundEmail

    item = OutboundEmail(message_pk=7, envelope_from="bounces@example.org", recipient="ada@example.com",
                         from_header='"Coach \\"Zoë\\"" <coach@example.org>', to_header="ada@example.com",
                         subject="Hi", text="body", html="<p>body</p>", headers=(),
                         raw=b"Subject: Hi\r\n\r\nbody\r\n")
    for query, extra in (("", {}), ("?configuration_set=drip%20events", {"ConfigurationSetName": "drip events"})):
        transport = make_transport(f"ses://AKID:secret@eu-west-1{query}")
        try:
            assert json.loads(transport.body(item)) == {
                "FromEmailAddress": item.from_header, "Destination": {"ToAddresses": ["ada@example.com"]},
                "Content": {"Raw": {"Data": base64.b64encode(item.raw).decode()}},
                "EmailTags": [{"Name": "drip_message", "Value": "7"}], **extra}
        finally:
            transport.close()


def test_sigv4_agrees_with_botocore_across_endpoints_regions_and_days() -> None:
    """Our SigV4 (hashlib and hmac) gives the Authorization botocore computes for the same request: SES's
    own endpoint, a local one with a port, a path with doubled slashes and dot segments (AWS signs it
    normalized) and a query whose pairs sort by name then value, other regions, a secret holding
    `/` and `+`, and one signer used across midnight (its signing key changes with the day)."""
    from botocore.auth import SigV4Auth
    from botocore.awsrequest import AWSRequest
    from botocore.credentials import Credentials

    from service.transports.ses import SigV4

    body = b'{"Content":{"Raw":{"Data":"' + base64.b64encode(bytes(range(256)) * 40) + b'"}}}'
    for region in ("eu-west-1", "us-east-1"):
        signer = SigV4("AKIDEXAMPLE", "wJalr/XUtnFEMI+K7MDENG", region, "ses")
        for url in (f"https://email.{region}.amazonaws.com/v2/email/outbound-emails",
                    "http://127.0.0.1:8025/v2/email/outbound-emails",
                    "https://proxy.example.org:8443/aws~ses//v2/./email/x/../outbound-emails?b=2&a1=x&a=y&a=1&c"):
            for now in (1_796_601_599.0, 1_796_601_600.0, 1_796_688_000.5):  # either side of midnight, next day
                mine = signer.headers(url, body, "application/json", now=now)
                request = AWSRequest(method="POST", url=url, data=body,
                                     headers={"Content-Type": "application/json", "X-Amz-Date": mine["X-Amz-Date"]})
                request.context["timestamp"] = mine["X-Amz-Date"]
                theirs = SigV4Auth(Credentials("AKIDEXAMPLE", "wJalr/XUtnFEMI+K7MDENG"), "ses", region)
                theirs._inject_signature_to_request(request, theirs.signature(
                    theirs.string_to_sign(request, theirs.canonical_request(request)), request))
                assert mine["Authorization"] == request.headers["Authorization"], (region, url, now)
                assert mine["X-Amz-Date"][:8] in ("20261206", "20261207", "20261208")


def test_sigv4_encodes_a_query_as_aws_reads_it() -> None:
    """AWS percent-encodes every query name and value before checking a signature (all but A-Z a-z 0-9
    - _ . ~, uppercase hex): a query written another way is signed in that form, so `x=%7e` and `x=~`
    sign alike, and `/`, `+` and spaces are signed encoded."""
    from service.transports.ses import SigV4, _canonical_query

    assert _canonical_query("x=%7e&p=b+c&a=b/c&e=&s=a%20b") == "a=b%2Fc&e=&p=b%2Bc&s=a%20b&x=~"
    signer = SigV4("AKIDEXAMPLE", "secret", "eu-west-1", "ses")
    base = "https://email.eu-west-1.amazonaws.com/v2/email/outbound-emails"
    one, other = (signer.headers(f"{base}?{q}", b"{}", "application/json", now=1_796_601_600.0)
                  for q in ("x=%7e&a=b%2fc", "a=b%2Fc&x=~"))
    assert one == other
    assert one != signer.headers(f"{base}?a=b%2Fd&x=~", b"{}", "application/json", now=1_796_601_600.0)


@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_ses_sends_where_botocore_cannot_be_imported(runtime, fake, monkeypatch) -> None:
    """SES needs nothing beyond the runtime install: with every botocore module unimportable (as where it
    is not installed), a welcome still goes, signed, and its signature is the one AWS computes."""
    import importlib.abc
    import sys

    class NoBotocore(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "botocore":
                raise ImportError(f"No module named {name!r}")
            return None

    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    with monkeypatch.context() as m:
        for name in [n for n in sys.modules if n.split(".")[0] == "botocore"]:
            m.delitem(sys.modules, name)
        m.setattr(sys, "meta_path", [NoBotocore(), *sys.meta_path])
        summary = rt.dispatcher().run_pass(T0)
        assert not any(n.split(".")[0] == "botocore" for n in sys.modules)
    assert summary.sent == 1, summary.line()
    [seen] = fake.posts()
    check_shape("ses", seen, rt)  # botocore importable again: it checks the signature


@pytest.mark.parametrize(("fake", "query"), [(p, {}) for p in PROVIDERS] + [
    ("postmark", {"batch": "1"}), ("resend", {"batch": "1"})], indirect=["fake"])
def test_each_provider_gets_its_documented_request_and_its_id_is_stored(runtime, fake, query) -> None:
    """One welcome email per provider: the request has the provider's shape (batch endpoint or, with
    `batch=1`, the single-email one), the provider's id lands on the row."""
    rt = provider_runtime(runtime, fake, **query)
    enroll(rt, "ada@example.com")
    summary = rt.dispatcher().run_pass(T0)
    assert summary.sent == 1, summary.line()
    [seen] = fake.posts()
    check_shape(fake.provider, seen, rt)
    m = only_message(rt)
    assert m.status == "sent" and m.provider_message_id


@pytest.mark.parametrize(("fake", "headers", "floor"), [
    ("resend", {"retry-after": "300"}, 300),
    ("sendgrid", {"X-RateLimit-Reset": "EPOCH+600"}, 590),
    ("resend", {"ratelimit-reset": "400"}, 400),
    ("postmark", {}, 0),
], indirect=["fake"])
def test_429_waits_as_told_or_backs_off_then_sends_once(runtime, fake, headers, floor) -> None:
    """A 429 defers the message at least as long as the provider's header says (Postmark sends none:
    backoff with jitter); no second request before then; the next pass after it sends it once."""
    headers = {k: str(int(time.time()) + 600) if v == "EPOCH+600" else v for k, v in headers.items()}
    fake.script.append(Reply(429, {"message": "too many requests"}, headers))
    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    d = rt.dispatcher()
    assert d.run_pass(T0).deferred == 1
    m = only_message(rt)
    wait = (m.next_attempt_at - T0).total_seconds()
    assert m.status == "deferred" and wait >= floor
    if not headers:
        assert 48 <= wait <= 72  # base 60 s +-20 % jitter
    assert d.run_pass(T0 + timedelta(seconds=wait - 1)).sent == 0 and len(fake.posts()) == 1
    assert d.run_pass(T0 + timedelta(seconds=wait + 1)).sent == 1
    assert len(fake.posts()) == 2 and fake.sends == 1 and only_message(rt).attempts == 2


@pytest.mark.parametrize(("fake", "query"), [("resend", {}), ("resend", {"batch": "1"})], indirect=["fake"])
def test_resend_timeout_after_accepting_is_settled_with_the_same_idempotency_key(runtime, fake, query) -> None:
    """The first request is accepted but answered too late: the transport sends it again at once with the
    same key, and the fake (like Resend) answers the repeat with the first result: sent, once."""
    fake.script.append(Reply(200, delay=1.5))
    rt = provider_runtime(runtime, fake, timeout="0.5", **query)
    enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).sent == 1
    first, second = fake.posts()
    assert first.headers["Idempotency-Key"] == second.headers["Idempotency-Key"]
    assert fake.sends == 1 and only_message(rt).provider_message_id and only_message(rt).attempts == 1


@pytest.mark.parametrize("fake", ["postmark", "sendgrid", "mailgun", "ses"], indirect=True)
def test_timeout_without_idempotency_is_retried_once_and_may_duplicate(runtime, fake) -> None:
    """Pinned policy for APIs without an idempotency key: an ambiguous timeout is retried in a later pass
    (the emails of that one request may arrive twice, preferred over lost ones), and the history says the
    outcome was unknown."""
    fake.script.append(Reply(200, delay=1.5))
    rt = provider_runtime(runtime, fake, timeout="0.5")
    enroll(rt, "ada@example.com")
    d = rt.dispatcher()
    assert d.run_pass(T0).deferred == 1
    assert d.run_pass(T0 + timedelta(hours=1)).sent == 1
    assert len(fake.posts()) == 2 and fake.sends == 2
    with rt.sessions() as s:
        details = s.scalars(select(Event.detail).where(Event.type == "deferred")).all()
    assert any("outcome unknown" in d for d in details)


@pytest.mark.parametrize(("fake", "status", "body"), [
    ("sendgrid", 400, {"errors": [{"message": "Does not contain a valid address.", "field": "personalizations"}]}),
    ("resend", 422, {"name": "validation_error", "message": "Invalid `to` field."}),
    ("postmark", 422, {"ErrorCode": 300, "Message": "Invalid email request"}),
    ("mailgun", 400, {"message": "to parameter is not a valid address"}),
    ("ses", 400, {"message": "Email address is not verified."}),
], indirect=["fake"])
def test_validation_errors_fail_without_retry_or_suppression(runtime, fake, status, body) -> None:
    """400/422 fail that message for good; the reader is neither bounced nor suppressed."""
    fake.script.append(Reply(status, body))
    rt = provider_runtime(runtime, fake)
    sid = enroll(rt, "ada@example.com")
    d = rt.dispatcher()
    assert d.run_pass(T0).failed == 1
    d.run_pass(T0 + timedelta(days=1))
    assert len(fake.posts()) == 1  # never retried
    m = only_message(rt)
    assert m.status == "failed" and str(status) in m.last_error
    with rt.sessions() as s:
        assert s.get(Subscriber, sid).status == "active" and not is_suppressed(s, "ada@example.com")


@pytest.mark.parametrize("fake", ["postmark"], indirect=True)
def test_postmark_inactive_recipient_406_suppresses(runtime, fake) -> None:
    """Postmark ErrorCode 406 means the address already hard-bounced or complained: bounced and suppressed."""
    fake.script.append(Reply(422, {"ErrorCode": 406, "Message": "You tried to send to a recipient that has been "
                                   "marked as inactive."}))
    rt = provider_runtime(runtime, fake)
    sid = enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).bounced == 1
    with rt.sessions() as s:
        assert s.get(Subscriber, sid).status == "bounced" and is_suppressed(s, "ada@example.com")


@pytest.mark.parametrize(("fake", "status"), [("postmark", 401), ("sendgrid", 403), ("resend", 401),
                                              ("mailgun", 401), ("ses", 403)], indirect=["fake"])
def test_bad_key_pauses_sending_and_leaves_the_queue_untouched(runtime, fake, status, caplog) -> None:
    """401/403: no message fails or bounces, no attempt is charged; sending pauses for every worker, an ERROR
    is logged, /healthz says degraded, metrics say paused; `drip sending resume` lets the next pass send."""
    fake.script.append(Reply(status, {"message": "invalid API key"}))
    rt = provider_runtime(runtime, fake)
    for i in range(3):
        enroll(rt, f"r{i}@example.com")
    d = rt.dispatcher()
    summary = d.run_pass(T0)
    assert (summary.paused, summary.sent, summary.failed, summary.bounced) == (1, 0, 0, 0)
    assert any(r.levelname == "ERROR" and "SENDING PAUSED" in r.getMessage() for r in caplog.records)
    with rt.sessions() as s:
        rows = s.scalars(select(Message)).all()
        assert {(m.status, m.attempts) for m in rows} == {("deferred", 0)}
        assert {x.status for x in s.scalars(select(Subscriber))} == {"active"}
    assert rt.dispatcher().run_pass(T0 + timedelta(hours=1)).paused == 1
    assert len(fake.posts()) == 1  # nothing more was tried while paused

    from service.app import create_app
    client = create_app(runtime=rt).test_client()
    health = client.get("/healthz").get_json()
    assert health["status"] == "degraded" and health["sending"] == "paused"
    assert "drip_sending_paused 1.0" in client.get("/metrics").get_data(as_text=True)

    from service.cli import main
    env = {"DATABASE_URL": rt.settings.database_url, "DRIP_SECRET_KEY": rt.settings.secret_key,
           "DRIP_EMAIL_URL": rt.settings.email_url, "DRIP_INSTANCE_DIR": str(rt.settings.instance_dir)}
    out = CliRunner().invoke(main, ["sending", "resume"], env=env)
    assert out.exit_code == 0 and "sending resumed" in out.output
    assert rt.dispatcher().run_pass(T0 + timedelta(hours=2)).sent == 3
    assert "drip_sending_paused 0.0" in client.get("/metrics").get_data(as_text=True)


@pytest.mark.parametrize("fake", ["sendgrid"], indirect=True)
def test_server_errors_and_unreachable_api_are_transient(runtime, fake) -> None:
    """A 503 defers with backoff; an API that refuses connections defers too; neither fails the message."""
    fake.script.append(Reply(503, {"errors": [{"message": "unavailable"}]}))
    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).deferred == 1
    url = fake.url
    fake.close()
    down = with_settings(runtime, email_url=f"sendgrid://k@?endpoint={url}&timeout=2")
    assert down.dispatcher().run_pass(T0 + timedelta(hours=1)).deferred == 1
    assert only_message(rt).status == "deferred" and "cannot reach" in only_message(rt).last_error


def _no_proxy_settings(monkeypatch) -> None:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "NO_PROXY"):
        monkeypatch.delenv(name, raising=False)
        monkeypatch.delenv(name.lower(), raising=False)


def test_tls_proxy_and_redirect_failures_make_emails_wait_not_fail(runtime, fake, monkeypatch) -> None:
    """Nothing that stops every request of a pass fails an email: a TLS handshake that fails (https to a
    plain-HTTP port), a proxy that does not answer, and an endpoint that redirects each defer the waiting
    readers' emails with the reason and no attempt counted; the next good pass sends each one once."""
    _no_proxy_settings(monkeypatch)
    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    enroll(rt, "bo@example.com", "Bo")
    tls = with_settings(runtime, email_url=transport_url("postmark", fake).replace("endpoint=http://",
                                                                                  "endpoint=https://"))
    assert tls.dispatcher().run_pass(T0).deferred == 2
    errors = {m.last_error for m in _messages(rt)}
    assert len(errors) == 1 and "cannot reach the API" in errors.pop()
    monkeypatch.setenv("HTTP_PROXY", f"http://127.0.0.1:{free_port()}")
    assert provider_runtime(runtime, fake).dispatcher().run_pass(T0 + timedelta(hours=1)).deferred == 2
    assert all("ProxyError" in m.last_error for m in _messages(rt))
    monkeypatch.delenv("HTTP_PROXY")
    fake.script.append(Reply(307, {}, {"Location": "https://api.example.net/email/batch"}))
    assert rt.dispatcher().run_pass(T0 + timedelta(hours=3)).deferred == 2
    assert all("redirect to https://api.example.net" in m.last_error and "endpoint=" in m.last_error
               for m in _messages(rt))
    assert not fake.sent_to and all(m.status == "deferred" and m.attempts == 0 for m in _messages(rt))
    assert rt.dispatcher().run_pass(T0 + timedelta(hours=6)).sent == 2
    assert sorted(fake.sent_to) == ["Ada Lovelace <ada@example.com>", "Bo <bo@example.com>"]


def test_a_proxy_given_without_scheme_and_with_a_password_is_used_as_requests_used_it(runtime, fake,
                                                                                     monkeypatch) -> None:
    """HTTP_PROXY=user:p%40ss@host:port (no scheme, a percent-encoded password) goes through that proxy with
    the password in a Proxy-Authorization header, never in the request line. Here the local fake is the
    proxy too: it sees the absolute URL a proxy is sent."""
    _no_proxy_settings(monkeypatch)
    monkeypatch.setenv("HTTP_PROXY", f"relay:p%40ss@{fake.netloc}")
    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).sent == 1
    [seen] = fake.posts()
    assert seen.path.startswith(f"{fake.url}/")  # the absolute form: it went through the proxy
    headers = {name.lower(): value for name, value in seen.headers.items()}
    assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"relay:p@ss").decode()
    assert "p%40ss" not in seen.path and "p@ss" not in seen.path


def _messages(rt) -> list[Message]:
    with rt.sessions() as s:
        rows = s.scalars(select(Message).order_by(Message.id)).all()
        s.expunge_all()
        return list(rows)


def test_malformed_provider_urls_fail_fast_and_keys_are_never_printed() -> None:
    """A provider URL missing its key, domain or region names DRIP_EMAIL_URL; `masked` hides API keys."""
    from service.cli import masked
    from service.core.config import ConfigError
    from service.transports import make_transport

    for url in ("postmark://", "sendgrid://@", "mailgun://key@", "ses://AKID@us-east-1", "ses://AKID:s@",
                "resend://", "resend://k@?endpoint=ftp://x", "sparkpost://k@"):
        with pytest.raises(ConfigError, match="DRIP_EMAIL_URL"):
            make_transport(url)
    for url in ("postmark://pm-token@?stream=broadcast", "mailgun://mg-key@mg.example.org", "resend://re_key@",
                "ses://AKID:secret%2Fkey@us-east-1", "sendgrid://SG.key@?region=eu"):
        shown = masked(url)
        assert not any(secret in shown for secret in ("pm-token", "mg-key", "re_key", "secret", "SG.key")), shown


@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_ses_account_suspended_pauses_like_a_bad_key(runtime, fake) -> None:
    """SES answers 400 AccountSuspendedException when the account may not send: no message fails, sending pauses."""
    fake.script.append(Reply(400, {"message": "Account suspended"},
                             {"x-amzn-ErrorType": "AccountSuspendedException:http://internal.amazon.com/"}))
    rt = provider_runtime(runtime, fake)
    enroll(rt, "ada@example.com")
    assert rt.dispatcher().run_pass(T0).paused == 1
    m = only_message(rt)
    assert (m.status, m.attempts) == ("deferred", 0)
