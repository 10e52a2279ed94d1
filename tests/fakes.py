"""Local stand-ins for the providers: an HTTP server on 127.0.0.1 speaking each documented send API,
and signing helpers that sign webhooks the way each provider does (with test keys made here)."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

from service.feedback.webhook_auth import sns_string_to_sign


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


@dataclass
class Reply:
    status: int
    body: object = None
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # sleep after recording: the request arrived, the answer comes too late


class FakeProvider:
    """Records every request; answers from a script of `Reply`s, then with the provider's success answer.
    Resend-style idempotency: a repeated Idempotency-Key gets the first answer and sends nothing more."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.seen: list[Seen] = []
        self.script: list[Reply] = []
        self.files: dict[str, bytes] = {}
        self.sends = 0  # logical sends the fake "delivered"
        self.sent_to: list[str] = []  # recipients of the emails sent in batches, in order
        self.refuse: dict[str, tuple[int, str]] = {}  # in batches: recipient part -> (ErrorCode, message)
        self._idem: dict[str, tuple[int, dict, bytes]] = {}
        self.latency = 0.0  # seconds every answer waits (a round trip), unless its Reply says otherwise
        self.in_flight = self.max_in_flight = 0  # requests being answered now, and the most at once
        self.lock = threading.Lock()
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                fake._record(self, b"")
                body = fake.files.get(self.path)
                self._answer(200 if body is not None else 404, {}, body or b"not found")

            def do_POST(self) -> None:
                with fake.lock:
                    fake.in_flight += 1
                    fake.max_in_flight = max(fake.max_in_flight, fake.in_flight)
                try:
                    raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                    status, headers, body, delay = fake._respond(self, raw)
                    time.sleep(delay or fake.latency)
                    self._answer(status, headers, body)
                finally:
                    with fake.lock:
                        fake.in_flight -= 1

            def _answer(self, status: int, headers: dict, body: bytes) -> None:
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Length", str(len(body)))
                    self.end_headers()
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up waiting (the timeout tests)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    @property
    def netloc(self) -> str:
        return f"127.0.0.1:{self.server.server_address[1]}"

    def posts(self) -> list[Seen]:
        with self.lock:
            return [s for s in self.seen if s.method == "POST"]

    def _record(self, handler: BaseHTTPRequestHandler, raw: bytes) -> None:
        with self.lock:
            self.seen.append(Seen(handler.command, handler.path, dict(handler.headers.items()), raw))

    def _respond(self, handler: BaseHTTPRequestHandler, raw: bytes) -> tuple[int, dict, bytes, float]:
        self._record(handler, raw)
        with self.lock:
            key = handler.headers.get("Idempotency-Key")
            if key and key in self._idem:
                return (*self._idem[key], 0.0)
            reply = self.script.pop(0) if self.script else None
            if reply is None or 200 <= reply.status < 300:
                if handler.path.endswith("/batch"):
                    status, headers, body = self._batch_success(json.loads(raw))
                else:
                    status, headers, body = self._success()
                    self.sends += 1
                if key:
                    self._idem[key] = (status, headers, body)
                return status, headers, body, reply.delay if reply else 0.0
        body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body or {}).encode()
        return reply.status, {"Content-Type": "application/json", **reply.headers}, body, reply.delay

    def _batch_success(self, emails: list[dict]) -> tuple[int, dict, bytes]:
        """A batch answered as Postmark (one result per email, in order) or Resend in permissive mode (ids of
        the accepted emails in `data`, the refused ones by index in `errors`). An email whose recipient is
        in `refuse` is refused with that (ErrorCode, message); the others count as sent."""
        results, data, errors = [], [], []
        for n, mail in enumerate(emails):
            to = mail["To"] if self.provider == "postmark" else mail["to"][0]
            refused = next((v for k, v in self.refuse.items() if k in to), None)
            ident = str(uuid.uuid4())
            if refused:
                results.append({"ErrorCode": refused[0], "Message": refused[1], "To": to})
                errors.append({"index": n, "message": refused[1]})
            else:
                self.sends += 1
                self.sent_to.append(to)
                results.append({"ErrorCode": 0, "Message": "OK", "MessageID": ident, "To": to})
                data.append({"id": ident})
        body = results if self.provider == "postmark" else {"data": data, "errors": errors}
        return 200, {"Content-Type": "application/json"}, json.dumps(body).encode()

    def _success(self) -> tuple[int, dict, bytes]:
        ident = str(uuid.uuid4())
        js = {"Content-Type": "application/json"}
        if self.provider == "postmark":
            return 200, js, json.dumps({"ErrorCode": 0, "Message": "OK", "MessageID": ident}).encode()
        if self.provider == "sendgrid":
            return 202, {"X-Message-Id": ident.replace("-", "")[:22]}, b""
        if self.provider == "mailgun":
            return 200, js, json.dumps({"id": f"<{ident}@mg.example.org>", "message": "Queued. Thank you."}).encode()
        if self.provider == "ses":
            return 200, js, json.dumps({"MessageId": f"0100{ident}-000000"}).encode()
        return 200, js, json.dumps({"id": ident}).encode()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def transport_url(provider: str, fake: FakeProvider, **query: str) -> str:
    q = "&".join([f"endpoint={fake.url}"] + [f"{k}={v}" for k, v in query.items()])
    return {
        "postmark": f"postmark://pm-token@?stream=broadcast&{q}",
        "sendgrid": f"sendgrid://SG.key@?{q}",
        "mailgun": f"mailgun://mg-key@mg.example.org?{q}",
        "ses": f"ses://AKIDEXAMPLE:secret%2Fkey@us-east-1?{q}",
        "resend": f"resend://re_key@?{q}",
    }[provider]


# -- webhook signing, the providers' way ---------------------------------------------------------------
class SendGridSigner:
    def __init__(self) -> None:
        self.key = ec.generate_private_key(ec.SECP256R1())
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        self.public_b64 = base64.b64encode(der).decode()

    def headers(self, body: bytes, timestamp: int | None = None) -> dict[str, str]:
        ts = str(timestamp if timestamp is not None else int(time.time()))
        sig = self.key.sign(ts.encode() + body, ec.ECDSA(hashes.SHA256()))
        return {"X-Twilio-Email-Event-Webhook-Signature": base64.b64encode(sig).decode(),
                "X-Twilio-Email-Event-Webhook-Timestamp": ts, "Content-Type": "application/json"}


def mailgun_signature(key: str, timestamp: int | None = None, token: str | None = None) -> dict:
    ts = str(timestamp if timestamp is not None else int(time.time()))
    token = token or secrets.token_hex(25)
    return {"timestamp": ts, "token": token,
            "signature": hmac.new(key.encode(), (ts + token).encode(), hashlib.sha256).hexdigest()}


def svix_headers(secret: str, body: bytes, *, msg_id: str | None = None, timestamp: int | None = None,
                 extra_bad: bool = True) -> dict[str, str]:
    msg_id = msg_id or f"msg_{secrets.token_hex(8)}"
    ts = str(timestamp if timestamp is not None else int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(hmac.new(key, f"{msg_id}.{ts}.".encode() + body, hashlib.sha256).digest()).decode()
    # Two signatures, as during a key rotation: an old key's first, ours second.
    sigs = (f"v1,{base64.b64encode(secrets.token_bytes(32)).decode()} " if extra_bad else "") + f"v1,{sig}"
    return {"svix-id": msg_id, "svix-timestamp": ts, "svix-signature": sigs, "Content-Type": "application/json"}


class SnsSigner:
    """A self-signed certificate, served by a FakeProvider, signing SNS messages (v1 SHA1, v2 SHA256)."""

    def __init__(self, server: FakeProvider) -> None:
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sns.test")])
        now = datetime.now(UTC)
        cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(self.key.public_key())
                .serial_number(x509.random_serial_number()).not_valid_before(now - timedelta(days=1))
                .not_valid_after(now + timedelta(days=30)).sign(self.key, hashes.SHA256()))
        # A fresh path per certificate: the verifier caches certificates by URL, and ports get reused.
        path = f"/SimpleNotificationService-{secrets.token_hex(8)}.pem"
        server.files[path] = cert.public_bytes(serialization.Encoding.PEM)
        self.cert_url = f"{server.url}{path}"

    def sign(self, message: dict, version: str = "2", cert_url: str | None = None) -> dict:
        message = {**message, "SignatureVersion": version, "SigningCertURL": cert_url or self.cert_url}
        algorithm = hashes.SHA256() if version == "2" else hashes.SHA1()  # noqa: S303
        sig = self.key.sign(sns_string_to_sign(message), padding.PKCS1v15(), algorithm)
        return {**message, "Signature": base64.b64encode(sig).decode()}


class FakeImap:
    """A small IMAP4rev1 server on 127.0.0.1 (LOGIN, SELECT, UID SEARCH UNSEEN, UID FETCH, UID STORE, LOGOUT),
    enough for imaplib to read a bounce folder; it keeps the \\Seen flags so a second run sees nothing new."""

    def __init__(self, user: str, password: str) -> None:
        import socketserver

        self.messages: dict[int, bytes] = {}
        self.seen: set[int] = set()
        self.logins: list[str] = []
        fake = self

        class Handler(socketserver.StreamRequestHandler):
            def reply(self, line: str | bytes) -> None:
                self.wfile.write((line if isinstance(line, bytes) else line.encode()) + b"\r\n")

            def handle(self) -> None:
                self.reply("* OK [CAPABILITY IMAP4rev1] fake ready")
                while line := self.rfile.readline():
                    tag, _, rest = line.decode().strip().partition(" ")
                    if not fake.command(self, tag, rest.split(" "), user, password):
                        return

        self.server = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def command(self, h, tag: str, words: list[str], user: str, password: str) -> bool:
        cmd = words[0].upper()
        if cmd == "CAPABILITY":
            h.reply("* CAPABILITY IMAP4rev1")
        elif cmd == "LOGIN":
            self.logins.append(words[1])
            if (words[1], words[2].strip('"')) != (user, password):
                h.reply(f"{tag} NO [AUTHENTICATIONFAILED] bad credentials")
                return True
        elif cmd == "SELECT":
            h.reply(f"* {len(self.messages)} EXISTS")
            h.reply(f"{tag} OK [READ-WRITE] SELECT completed")
            return True
        elif cmd == "LOGOUT":
            h.reply("* BYE")
            h.reply(f"{tag} OK LOGOUT completed")
            return False
        elif cmd == "UID" and words[1].upper() == "SEARCH":
            h.reply("* SEARCH " + " ".join(str(u) for u in sorted(self.messages) if u not in self.seen))
        elif cmd == "UID" and words[1].upper() == "FETCH":
            uid = int(words[2])
            raw = self.messages[uid]
            h.reply(f"* {uid} FETCH (UID {uid} BODY[] {{{len(raw)}}}".encode() + b"\r\n" + raw + b")")
        elif cmd == "UID" and words[1].upper() == "STORE":
            self.seen.add(int(words[2]))
            h.reply(f"* {words[2]} FETCH (UID {words[2]} FLAGS (\\Seen))")
        else:
            h.reply(f"{tag} BAD unknown command")
            return True
        h.reply(f"{tag} OK done")
        return True

    @property
    def port(self) -> int:
        return self.server.server_address[1]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
