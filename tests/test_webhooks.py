"""Provider event webhooks: each verified the provider's way over the raw body; forged, re-serialised,
stale and replayed requests change nothing; verified events move messages and suppress addresses."""
from __future__ import annotations

import base64
import json
import secrets
import time

import pytest
from conftest import with_settings
from fakes import FakeProvider, SendGridSigner, SnsSigner, mailgun_signature, svix_headers, transport_url
from sqlalchemy import func, select
from test_provider_transports import T0, enroll

from service.app import create_app
from service.core.models import Event, Message, Subscriber, Suppression
from service.enrollment.suppression import is_suppressed
from service.feedback.webhook_auth import Rejected, check_cert_url


@pytest.fixture
def fake(request: pytest.FixtureRequest):
    server = FakeProvider(request.param)
    yield server
    server.close()


def sent_setup(runtime, fake: FakeProvider, addresses=("ada@example.com",), **settings):
    """Send the welcome to each address through the fake provider; return runtime, client, {address: Message}."""
    rt = with_settings(runtime, email_url=transport_url(fake.provider, fake), **settings)
    for a in addresses:
        enroll(rt, a)
    assert rt.dispatcher().run_pass(T0).sent == len(addresses)
    with rt.sessions() as s:
        rows = {m.to_email: m for m in s.scalars(select(Message))}
        for m in rows.values():
            s.expunge(m)
    app = create_app(runtime=rt)
    app.config["TESTING"] = True
    return rt, app.test_client(), rows


def state(rt) -> dict:
    """Everything a webhook may change: message statuses, subscriber statuses, suppressions, event count."""
    with rt.sessions() as s:
        return {"messages": sorted((m.to_email, m.status) for m in s.scalars(select(Message))),
                "subscribers": sorted((x.email, x.status) for x in s.scalars(select(Subscriber))),
                "suppressions": s.scalar(select(func.count()).select_from(Suppression)),
                "events": s.scalar(select(func.count()).select_from(Event))}


def status_of(rt, address: str) -> tuple[str, str, bool]:
    with rt.sessions() as s:
        m = s.scalars(select(Message).where(Message.to_email == address)).one()
        sub = s.get(Subscriber, m.subscriber_id)
        return m.status, sub.status, is_suppressed(s, address)


# -- SendGrid ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", ["sendgrid"], indirect=True)
def test_sendgrid_signed_batch_applies_once_and_forgeries_change_nothing(runtime, fake, caplog) -> None:
    """Another key, a re-serialised body and stale/future timestamps are refused; the genuine batch
    applies each event once even when delivered twice; an event for an unknown address is acked and logged."""
    signer = SendGridSigner()
    rt, client, rows = sent_setup(runtime, fake, ("ada@example.com", "bob@example.com"),
                                  sendgrid_webhook_key=signer.public_b64)
    ada, bob = rows["ada@example.com"], rows["bob@example.com"]
    batch = [
        {"email": "ada@example.com", "timestamp": 1772463600, "event": "delivered", "sg_event_id": "ev-1",
         "sg_message_id": f"{ada.provider_message_id}.filterdrecv-5-1", "smtp-id": "<x@y>", "response": "250 OK",
         "drip_message": str(ada.id)},
        {"email": "bob@example.com", "timestamp": 1772463601, "event": "bounce", "type": "bounce", "status": "5.1.1",
         "reason": "550 5.1.1 user unknown", "sg_event_id": "ev-2",
         "sg_message_id": f"{bob.provider_message_id}.filterdrecv-5-2"},
        {"email": "nobody@example.com", "timestamp": 1772463602, "event": "delivered", "sg_event_id": "ev-3",
         "sg_message_id": "unknownid.filter"},
    ]
    body = json.dumps(batch, indent=1).encode()
    before = state(rt)
    other = SendGridSigner()
    reserialised = json.dumps(batch, separators=(",", ":")).encode()
    now = int(time.time())
    forgeries = [(body, other.headers(body)), (reserialised, signer.headers(body)),
                 (body, signer.headers(body, now - 360)), (body, signer.headers(body, now + 360)),
                 (body, {"Content-Type": "application/json"})]
    for data, headers in forgeries:
        assert client.post("/webhooks/sendgrid", data=data, headers=headers).status_code in (401, 403)
    assert state(rt) == before
    r = client.post("/webhooks/sendgrid", data=body, headers=signer.headers(body))
    assert r.status_code == 200 and r.get_json()["applied"] == 2 and r.get_json()["unknown"] == 1
    assert any("unknown message" in rec.getMessage() for rec in caplog.records)
    after = state(rt)
    r = client.post("/webhooks/sendgrid", data=body, headers=signer.headers(body))
    assert r.status_code == 200 and r.get_json()["duplicate"] == 2 and state(rt) == after
    assert status_of(rt, "ada@example.com") == ("delivered", "active", False)
    assert status_of(rt, "bob@example.com") == ("bounced", "bounced", True)


# -- Mailgun -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", ["mailgun"], indirect=True)
def test_mailgun_hmac_with_token_replay_cache(runtime, fake) -> None:
    """A valid timestamp+token HMAC is applied; the same token with different event-data is acked but not
    applied (the signature does not cover event-data); a bad HMAC or a stale timestamp is refused."""
    key = "key-" + secrets.token_hex(16)
    rt, client, rows = sent_setup(runtime, fake, ("ada@example.com", "bob@example.com"), mailgun_signing_key=key)
    ada = rows["ada@example.com"]

    def doc(event: dict, sig: dict) -> dict:
        return {"signature": sig, "event-data": event}

    failed = {"event": "failed", "severity": "permanent", "id": "mg-ev-1", "timestamp": 1772463600.1,
              "recipient": "ada@example.com", "message": {"headers": {"message-id": ada.provider_message_id}},
              "user-variables": {"drip-message": str(ada.id)},
              "delivery-status": {"code": 550, "message": "5.1.1 The email account does not exist"}}
    bad = mailgun_signature(key)
    bad["signature"] = "0" * 64
    before = state(rt)
    assert client.post("/webhooks/mailgun", json=doc(failed, bad)).status_code == 403
    assert client.post("/webhooks/mailgun", json=doc(failed, mailgun_signature(key, int(time.time()) - 3600))
                       ).status_code == 401
    assert state(rt) == before
    sig = mailgun_signature(key)
    assert client.post("/webhooks/mailgun", json=doc({**failed, "severity": "temporary", "id": "mg-ev-0"}, sig)
                       ).get_json()["applied"] == 1
    assert status_of(rt, "ada@example.com") == ("deferred", "active", False)
    replay = {**failed, "id": "mg-ev-2", "recipient": "bob@example.com"}
    r = client.post("/webhooks/mailgun", json=doc(replay, sig))
    assert r.status_code == 200 and r.get_json()["applied"] == 0
    assert status_of(rt, "bob@example.com") == ("sent", "active", False)
    assert client.post("/webhooks/mailgun", json=doc(failed, mailgun_signature(key))).get_json()["applied"] == 1
    assert status_of(rt, "ada@example.com") == ("bounced", "bounced", True)


# -- Postmark ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", ["postmark"], indirect=True)
def test_postmark_basic_auth_and_bounce_types(runtime, fake) -> None:
    """No or wrong Basic auth -> 401 and nothing changes; Transient and AutoResponder do not suppress;
    HardBounce does; a Delivery record marks the message delivered."""
    rt, client, rows = sent_setup(runtime, fake, ("ada@example.com", "bob@example.com"),
                                  postmark_webhook_user="drip", postmark_webhook_password="s3cret-pw")
    ada, bob = rows["ada@example.com"], rows["bob@example.com"]

    def bounce(m: Message, btype: str, ident: int) -> dict:
        return {"RecordType": "Bounce", "ID": ident, "Type": btype, "TypeCode": 1, "MessageID": m.provider_message_id,
                "Email": m.to_email, "BouncedAt": "2026-03-02T15:05:00Z", "Inactive": btype == "HardBounce",
                "MessageStream": "broadcast", "Metadata": {"drip_message": str(m.id)}, "Description": btype}

    def auth(user: str, pw: str) -> dict:
        return {"Authorization": "Basic " + base64.b64encode(f"{user}:{pw}".encode()).decode()}

    before = state(rt)
    assert client.post("/webhooks/postmark", json=bounce(ada, "HardBounce", 1)).status_code == 401
    assert client.post("/webhooks/postmark", json=bounce(ada, "HardBounce", 1),
                       headers=auth("drip", "wrong")).status_code == 401
    assert state(rt) == before
    good = auth("drip", "s3cret-pw")
    for i, btype in enumerate(("Transient", "AutoResponder"), start=10):
        assert client.post("/webhooks/postmark", json=bounce(bob, btype, i), headers=good).status_code == 200
    assert status_of(rt, "bob@example.com")[1:] == ("active", False)
    delivery = {"RecordType": "Delivery", "MessageID": bob.provider_message_id, "Recipient": "bob@example.com",
                "DeliveredAt": "2026-03-02T15:06:00Z", "Details": "250 OK", "MessageStream": "broadcast"}
    assert client.post("/webhooks/postmark", json=delivery, headers=good).get_json()["applied"] == 1
    assert status_of(rt, "bob@example.com") == ("delivered", "active", False)
    assert client.post("/webhooks/postmark", json=bounce(ada, "HardBounce", 1), headers=good).status_code == 200
    assert status_of(rt, "ada@example.com") == ("bounced", "bounced", True)


# -- Resend (Svix) -------------------------------------------------------------------------------------
@pytest.mark.parametrize("fake", ["resend"], indirect=True)
def test_resend_svix_signatures_tolerance_and_replay(runtime, fake) -> None:
    """Svix HMAC over id.timestamp.body with several v1 signatures; 6 minutes off either way is refused; the same
    svix-id retried applies once; a complaint suppresses and stops the reader."""
    secret = "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()
    rt, client, rows = sent_setup(runtime, fake, resend_webhook_secret=secret)
    ada = rows["ada@example.com"]
    body = json.dumps({"type": "email.complained", "created_at": "2026-03-02T15:10:00.000Z",
                       "data": {"email_id": ada.provider_message_id, "to": ["ada@example.com"],
                                "from": "x@y", "subject": "Welcome", "tags": {"drip_message": str(ada.id)}}}).encode()
    before = state(rt)
    now = int(time.time())
    for headers in (svix_headers(secret, body, timestamp=now - 360), svix_headers(secret, body, timestamp=now + 360),
                    svix_headers("whsec_" + base64.b64encode(b"other key").decode(), body)):
        assert client.post("/webhooks/resend", data=body, headers=headers).status_code in (401, 403)
    tampered = body.replace(b"complained", b"delivered")
    headers = svix_headers(secret, body, msg_id="msg_1")
    assert client.post("/webhooks/resend", data=tampered, headers=headers).status_code == 403
    assert state(rt) == before
    assert client.post("/webhooks/resend", data=body, headers=headers).get_json()["applied"] == 1
    after = state(rt)
    assert client.post("/webhooks/resend", data=body, headers=svix_headers(secret, body, msg_id="msg_1")
                       ).get_json()["duplicate"] == 1
    assert state(rt) == after
    assert status_of(rt, "ada@example.com") == ("complained", "complained", True)


# -- Amazon SES via SNS --------------------------------------------------------------------------------
TOPIC = "arn:aws:sns:us-east-1:123456789012:drip-ses-events"


@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_sns_subscription_confirmation_only_after_verifying(runtime, fake) -> None:
    """A certificate on another host, or another topic, is refused and SubscribeURL is never fetched; a
    valid confirmation fetches SubscribeURL once."""
    signer = SnsSigner(fake)
    rt, client, _rows = sent_setup(runtime, fake, sns_topic_arns=(TOPIC,), sns_cert_hosts=(fake.netloc,))
    fake.files["/confirm"] = b"<ConfirmSubscriptionResponse/>"
    confirm = {"Type": "SubscriptionConfirmation", "MessageId": "c-1", "Token": "tok", "TopicArn": TOPIC,
               "Message": "You have chosen to subscribe", "SubscribeURL": f"{fake.url}/confirm",
               "Timestamp": "2026-03-02T15:00:00.000Z"}
    evil = signer.sign(confirm, cert_url="https://evil.example/SimpleNotificationService-x.pem")
    wrong_topic = signer.sign({**confirm, "TopicArn": "arn:aws:sns:us-east-1:999:other"})
    for doc in (evil, wrong_topic):
        r = client.post("/webhooks/ses", data=json.dumps(doc), content_type="text/plain; charset=UTF-8")
        assert r.status_code == 403
    assert not [s for s in fake.seen if s.path == "/confirm"]
    r = client.post("/webhooks/ses", data=json.dumps(signer.sign(confirm)), content_type="text/plain; charset=UTF-8")
    assert r.status_code == 200
    assert len([s for s in fake.seen if s.path == "/confirm"]) == 1


@pytest.mark.parametrize("version", ["1", "2"])
@pytest.mark.parametrize("fake", ["ses"], indirect=True)
def test_sns_bounce_notification_suppresses_each_recipient_once(runtime, fake, version) -> None:
    """A text/plain SNS Notification (signature v1 and v2) whose Message holds 3 Permanent bouncedRecipients
    suppresses all three; the same MessageId again adds nothing; a changed Message fails the signature."""
    signer = SnsSigner(fake)
    addrs = ("a1@example.com", "a2@example.com", "a3@example.com")
    rt, client, rows = sent_setup(runtime, fake, addrs, sns_topic_arns=(TOPIC,), sns_cert_hosts=(fake.netloc,))
    first = rows["a1@example.com"]
    ses_event = {"notificationType": "Bounce", "mail": {"messageId": first.provider_message_id,
                                                        "tags": {"drip_message": [str(first.id)]}},
                 "bounce": {"bounceType": "Permanent", "bounceSubType": "General", "feedbackId": "f",
                            "bouncedRecipients": [{"emailAddress": a, "status": "5.1.1", "action": "failed",
                                                   "diagnosticCode": "smtp; 550 5.1.1 user unknown"} for a in addrs]},
                 "newFieldAwsAddedLater": {"x": 1}}
    note = signer.sign({"Type": "Notification", "MessageId": "sns-msg-1", "TopicArn": TOPIC,
                        "Message": json.dumps(ses_event), "Timestamp": "2026-03-02T15:00:00.000Z"}, version=version)
    before = state(rt)
    forged = {**note, "Message": note["Message"].replace("Permanent", "Transient")}
    assert client.post("/webhooks/ses", data=json.dumps(forged), content_type="text/plain").status_code == 403
    assert state(rt) == before
    r = client.post("/webhooks/ses", data=json.dumps(note), content_type="text/plain; charset=UTF-8")
    assert r.status_code == 200 and r.get_json()["applied"] == 3
    after = state(rt)
    assert after["suppressions"] == 3 and {s for _a, s in after["subscribers"]} == {"bounced"}
    client.post("/webhooks/ses", data=json.dumps(note), content_type="text/plain")
    assert state(rt) == after


def test_sns_certificate_host_rules() -> None:
    """Production allowlist: only https on sns.<region>.amazonaws.com; look-alikes and http are refused."""
    check_cert_url("https://sns.us-east-1.amazonaws.com/SimpleNotificationService-abc.pem", ())
    check_cert_url("https://sns.cn-north-1.amazonaws.com.cn/SimpleNotificationService-abc.pem", ())
    for url in ("http://sns.us-east-1.amazonaws.com/x.pem", "https://sns.us-east-1.amazonaws.com.evil.example/x.pem",
                "https://evil.example/sns.us-east-1.amazonaws.com/x.pem", "https://sns.amazonaws.com/x.pem",
                "http://127.0.0.1:9/x.pem"):
        with pytest.raises(Rejected):
            check_cert_url(url, ())
    check_cert_url("http://127.0.0.1:9/x.pem", ("127.0.0.1:9",))


@pytest.mark.parametrize("fake", ["postmark"], indirect=True)
def test_unconfigured_or_unknown_webhooks_are_refused(runtime, fake) -> None:
    """A provider whose secret is not configured refuses everything; an unknown provider is 404."""
    _rt, client, _rows = sent_setup(runtime, fake)
    for provider in ("postmark", "sendgrid", "mailgun", "resend", "ses"):
        assert client.post(f"/webhooks/{provider}", data=b"{}", content_type="application/json").status_code == 403
    assert client.post("/webhooks/sparkpost", data=b"{}").status_code == 404


@pytest.mark.parametrize("fake", ["sendgrid"], indirect=True)
def test_a_large_sendgrid_batch_is_accepted(runtime, fake) -> None:
    """SendGrid posts batches far above the app's 64 KB form limit; the webhook takes them (no 413 retry loop)."""
    signer = SendGridSigner()
    _rt, client, rows = sent_setup(runtime, fake, sendgrid_webhook_key=signer.public_b64)
    ada = rows["ada@example.com"]
    batch = [{"email": "ada@example.com", "timestamp": 1772463600 + i, "event": "open", "sg_event_id": f"open-{i}",
              "sg_message_id": f"{ada.provider_message_id}.f", "useragent": "Mozilla/5.0 " + "x" * 200}
             for i in range(400)]
    body = json.dumps(batch).encode()
    assert len(body) > 64 * 1024
    r = client.post("/webhooks/sendgrid", data=body, headers=signer.headers(body))
    assert r.status_code == 200 and r.get_json()["applied"] == 400


@pytest.mark.parametrize("fake", ["postmark"], indirect=True)
def test_listmonk_style_bounce_mix_seen_through_the_api(runtime, fake) -> None:
    """2 soft bounces for A, 2 hard for B, 1 complaint for C: A stays active, B bounced, C complained;
    the send log API shows the message statuses."""
    from service.core.db import utcnow
    from service.operator.accounts import create_token

    rt, client, rows = sent_setup(runtime, fake, ("a@example.com", "b@example.com", "c@example.com"),
                                  postmark_webhook_user="u", postmark_webhook_password="p")
    auth = {"Authorization": "Basic " + base64.b64encode(b"u:p").decode()}
    hooks = [("a@example.com", "SoftBounce", "Bounce"), ("a@example.com", "SoftBounce", "Bounce"),
             ("b@example.com", "HardBounce", "Bounce"), ("b@example.com", "HardBounce", "Bounce"),
             ("c@example.com", "SpamComplaint", "SpamComplaint")]
    for i, (address, btype, record) in enumerate(hooks):
        m = rows[address]
        doc = {"RecordType": record, "ID": 100 + i, "Type": btype, "MessageID": m.provider_message_id,
               "Email": address, "BouncedAt": "2026-03-02T16:00:00Z", "Metadata": {"drip_message": str(m.id)}}
        assert client.post("/webhooks/postmark", json=doc, headers=auth).status_code == 200
    with rt.sessions() as s, s.begin():
        token = create_token(s, "t", now=utcnow())
    api = {"Authorization": f"Bearer {token}"}

    def listed(status: str) -> list[str]:
        return [m["to"] for m in client.get(f"/api/v1/messages?status={status}", headers=api).get_json()["data"]]

    assert listed("bounced") == ["b@example.com"] and listed("complained") == ["c@example.com"]
    assert listed("deferred") == ["a@example.com"]
    assert [status_of(rt, a)[1:] for a in ("a@example.com", "b@example.com", "c@example.com")] == [
        ("active", False), ("bounced", True), ("complained", True)]
