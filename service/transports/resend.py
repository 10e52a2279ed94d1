"""Resend: `POST /emails` with an `Idempotency-Key` (https://resend.com/docs/api-reference/emails/send-email).

URL: `resend://API_KEY@`. The key is the message's own (`drip-message-<id>`), the same on every attempt,
so a retry after a timeout cannot send a second email: Resend answers the repeat with the first result
for 24 hours. 429 answers carry `retry-after` and `ratelimit-reset`.
"""
from __future__ import annotations

import requests

from service.transports.base import OutboundEmail
from service.transports.http import ApiUrl, HttpTransport, custom_headers


class ResendTransport(HttpTransport):
    name = "resend"

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.key = url.require(url.user, "the API key", "resend://re_APIKEY@")
        self.base = url.endpoint("https://api.resend.com")

    def request(self, item: OutboundEmail) -> requests.Response:
        body = {
            "from": item.from_header, "to": [item.to_header], "subject": item.subject,
            "text": item.text, "html": item.html, "headers": custom_headers(item),
            "tags": [{"name": "drip_message", "value": str(item.message_pk)}],
        }
        headers = {"Authorization": f"Bearer {self.key}"}
        if item.idempotency_key:
            headers["Idempotency-Key"] = item.idempotency_key
        return self.session.post(f"{self.base}/emails", json=body, headers=headers, timeout=self.timeout)

    def provider_id(self, response: requests.Response) -> str | None:
        try:
            return response.json().get("id")
        except (ValueError, AttributeError):
            return None
