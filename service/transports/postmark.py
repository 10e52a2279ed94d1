"""Postmark: `POST /email` with the server token (https://postmarkapp.com/developer/api/email-api).

URL: `postmark://SERVER_TOKEN@?stream=broadcast` (stream defaults to `outbound`). Errors come as
`{"ErrorCode", "Message"}`; ErrorCode 406 "inactive recipient" means Postmark already suppressed the
address after a hard bounce or complaint, so we suppress it too. Postmark's 429 carries no wait header:
the dispatcher's exponential backoff with jitter applies.
"""
from __future__ import annotations

import requests

from service.transports.base import OutboundEmail, SendResult
from service.transports.http import ApiUrl, HttpTransport, custom_headers


class PostmarkTransport(HttpTransport):
    name = "postmark"

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.token = url.require(url.user, "the server token", "postmark://TOKEN@?stream=broadcast")
        self.stream = url.query.get("stream", "outbound")
        self.base = url.endpoint("https://api.postmarkapp.com")

    def request(self, item: OutboundEmail) -> requests.Response:
        body = {
            "From": item.from_header, "To": item.to_header, "Subject": item.subject,
            "TextBody": item.text, "HtmlBody": item.html, "MessageStream": self.stream,
            "Headers": [{"Name": k, "Value": v} for k, v in custom_headers(item).items()],
            "Metadata": {"drip_message": str(item.message_pk)},
            "TrackOpens": False, "TrackLinks": "None",
        }
        return self.session.post(f"{self.base}/email", json=body, timeout=self.timeout, headers={
            "Accept": "application/json", "X-Postmark-Server-Token": self.token})

    def provider_id(self, response: requests.Response) -> str | None:
        return _json(response).get("MessageID")

    def classify(self, response: requests.Response) -> SendResult:
        if response.status_code == 422 and _json(response).get("ErrorCode") == 406:
            return SendResult(ok=False, permanent=True, suppress=True, code=406,
                              error=f"postmark 406 inactive recipient: {_json(response).get('Message', '')}")
        return super().classify(response)


def _json(response: requests.Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
