"""Amazon SES v2: `POST /v2/email/outbound-emails` with `Content.Raw`, signed with AWS Signature Version 4
(https://docs.aws.amazon.com/ses/latest/APIReference-V2/API_SendEmail.html).

URL: `ses://ACCESS_KEY_ID:SECRET_ACCESS_KEY@REGION` (percent-encode `/` and `+` in the secret), with an
optional `?configuration_set=NAME` so SES publishes events to the SNS topic of that set. Our row id
travels as the `drip_message` email tag.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from concurrent.futures import Future
from urllib.parse import quote, unquote, urlsplit

from service.transports.base import OutboundEmail, SendResult, TransportError
from service.transports.http import ApiUrl, HttpTransport, Response, host_header


def _json(value: str) -> bytes:
    return json.dumps(value).encode()


class SigV4:
    """AWS Signature Version 4 of a POST for one service and region
    (https://docs.aws.amazon.com/IAM/latest/UserGuide/create-signed-request.html): the headers signed
    are Content-Type, Host and X-Amz-Date, and the body is hashed whole. Written here with hashlib and
    hmac rather than taken from botocore, whose request objects and signer cost ~77 us per email against
    ~29 (most of it the body's SHA-256) and a 33 MB install; the tests recompute every signature that
    reaches the fake with botocore's own steps."""

    ALGORITHM = "AWS4-HMAC-SHA256"
    SIGNED = "content-type;host;x-amz-date"

    def __init__(self, key_id: str, secret: str, region: str, service: str) -> None:
        self.key_id, self.region, self.service = key_id, region, service
        self._secret = f"AWS4{secret}".encode()
        # The signing key of the last day signed for (it changes daily), as one value: two threads signing
        # at midnight could otherwise pair one day with the other day's key.
        self._day_key: tuple[str, bytes] = ("", b"")

    def headers(self, url: str, body: bytes, content_type: str, *, now: float | None = None) -> dict[str, str]:
        """The Content-Type, X-Amz-Date and Authorization headers of a POST of `body` to `url`."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        day = stamp[:8]
        parts = urlsplit(url)
        content_type = " ".join(content_type.split())  # as the canonical form has it, so both agree
        canonical = "\n".join((
            "POST", quote(_normalized_path(parts.path), safe="/~"), _canonical_query(parts.query),
            f"content-type:{content_type}\nhost:{host_header(parts)}\nx-amz-date:{stamp}\n",
            self.SIGNED, hashlib.sha256(body).hexdigest()))
        scope = f"{day}/{self.region}/{self.service}/aws4_request"
        to_sign = f"{self.ALGORITHM}\n{stamp}\n{scope}\n{hashlib.sha256(canonical.encode()).hexdigest()}"
        signature = hmac.new(self._signing_key(day), to_sign.encode(), hashlib.sha256).hexdigest()
        return {"Content-Type": content_type, "X-Amz-Date": stamp,
                "Authorization": f"{self.ALGORITHM} Credential={self.key_id}/{scope}, "
                                 f"SignedHeaders={self.SIGNED}, Signature={signature}"}

    def _signing_key(self, day: str) -> bytes:
        known_day, key = self._day_key
        if day != known_day:
            key = self._secret
            for part in (day, self.region, self.service, "aws4_request"):
                key = hmac.new(key, part.encode(), hashlib.sha256).digest()
            self._day_key = (day, key)
        return key


def _normalized_path(path: str) -> str:
    """The path as AWS reads it before checking a signature (RFC 3986 dot segments removed, and runs of
    slashes made one, as botocore does)."""
    kept: list[str] = []
    for segment in path.split("/"):
        if segment == "..":
            if kept:
                kept.pop()
        elif segment and segment != ".":
            kept.append(segment)
    if not kept:
        return "/"
    return "/" + "/".join(kept) + ("/" if path.endswith("/") else "")


def _canonical_query(query: str) -> str:
    """The query's name=value pairs, each name and value percent-encoded as the spec asks (every
    character but A-Z a-z 0-9 - _ . ~, in uppercase hex, whatever the URL's own encoding was), sorted by
    name and then value. For a query already written that way this is botocore's canonical query."""
    if not query:
        return ""
    pairs = sorted((_uri_encode(name), _uri_encode(value))
                   for name, _, value in (pair.partition("=") for pair in query.split("&")))
    return "&".join(f"{name}={value}" for name, value in pairs)


def _uri_encode(text: str) -> str:
    return quote(unquote(text), safe="-_.~")


class SesTransport(HttpTransport):
    name = "ses"
    default_concurrency = 8  # SES counts sends per second against the account's quota

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        example = "ses://ACCESS_KEY_ID:SECRET@eu-west-1"
        self.region = url.require(url.host, "the region", example)
        self.signer = SigV4(url.require(url.user, "the access key id", example),
                            url.require(url.password, "the secret access key", example), self.region, "ses")
        self.base = url.endpoint(f"https://email.{self.region}.amazonaws.com")
        self.configuration_set = url.query.get("configuration_set")

    def request(self, item: OutboundEmail) -> Future[Response]:
        url = f"{self.base}/v2/email/outbound-emails"
        body = self.body(item)
        return self.http.post(url, body=body, headers=self.signer.headers(url, body, "application/json"))

    def body(self, item: OutboundEmail) -> bytes:
        """The request's JSON, written around the message's base64 rather than by json.dumps: base64 needs
        no escaping in JSON, and json.dumps spent ~140 us per 35 KB email scanning it for characters to
        escape. The other values go through json.dumps (tests parse the whole body back)."""
        tail = b"" if not self.configuration_set else b',"ConfigurationSetName":' + _json(self.configuration_set)
        return b"".join((
            b'{"FromEmailAddress":', _json(item.from_header),
            b',"Destination":{"ToAddresses":[', _json(item.recipient), b"]}",
            b',"Content":{"Raw":{"Data":"', base64.b64encode(item.raw), b'"}}',
            b',"EmailTags":[{"Name":"drip_message","Value":"', str(item.message_pk).encode(), b'"}]', tail, b"}"))

    def provider_id(self, response: Response) -> str | None:
        try:
            return response.json().get("MessageId")
        except (ValueError, AttributeError):
            return None

    def classify(self, response: Response) -> SendResult:
        # SES says "the account may not send" with 400s too; those stop everything like a bad key.
        kind = response.headers.get("x-amzn-ErrorType", "")
        if response.status_code == 400 and kind.startswith(("AccountSuspendedException", "SendingPausedException")):
            raise TransportError(f"ses refused to send for this account: {kind.split(':')[0]}", auth_failed=True)
        return super().classify(response)
