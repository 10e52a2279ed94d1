"""Resend: `POST /emails/batch` with up to 100 emails per request (https://resend.com/docs/api-reference/
emails/send-batch-emails); `?batch=1` sends each alone with `POST /emails`.

URL: `resend://API_KEY@`. Every request carries an `Idempotency-Key`, the same on every attempt of the
same email (`drip-message-<id>`) or the same batch (`drip-batch-` and a hash of its emails' keys): Resend
answers a repeat with the first result for 24 hours instead of sending again, so a request whose answer
never came is sent once more at once with the same key, and settled. Batches are sent with
`x-batch-validation: permissive`, so an invalid email is reported in `errors[]` (by index) and fails
alone while the others go. 429 answers carry `retry-after` and `ratelimit-reset`. Resend's default limit
is 2 requests per second per team: keep `concurrency` low unless yours was raised.
"""
from __future__ import annotations

import hashlib
from collections.abc import Sequence
from concurrent.futures import Future

from service.transports.base import OutboundEmail, SendResult
from service.transports.http import ApiUrl, HttpTransport, Response, custom_headers


class ResendTransport(HttpTransport):
    name = "resend"
    sends_mime = False  # the API takes text and HTML fields and signs the email it builds
    batch_size = 100  # Resend's limit per /emails/batch request
    most_per_batch = 100
    default_concurrency = 2
    idempotent = True

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.key = url.require(url.user, "the API key", "resend://re_APIKEY@")
        self.base = url.endpoint("https://api.resend.com")

    def message(self, item: OutboundEmail) -> dict:
        return {
            "from": item.from_header, "to": [item.to_header], "subject": item.subject,
            "text": item.text, "html": item.html, "headers": custom_headers(item),
            "tags": [{"name": "drip_message", "value": str(item.message_pk)}],
        }

    def request(self, item: OutboundEmail) -> Future[Response]:
        headers = {"Authorization": f"Bearer {self.key}"}
        if item.idempotency_key:
            headers["Idempotency-Key"] = item.idempotency_key
        return self.http.post(f"{self.base}/emails", json_body=self.message(item), headers=headers)

    def request_batch(self, items: Sequence[OutboundEmail]) -> Future[Response]:
        keys = "\n".join(item.idempotency_key or f"drip-message-{item.message_pk}" for item in items)
        headers = {"Authorization": f"Bearer {self.key}", "x-batch-validation": "permissive",
                   "Idempotency-Key": "drip-batch-" + hashlib.sha256(keys.encode()).hexdigest()[:40]}
        return self.http.post(f"{self.base}/emails/batch", json_body=[self.message(i) for i in items],
                              headers=headers)

    def provider_id(self, response: Response) -> str | None:
        try:
            return response.json().get("id")
        except (ValueError, AttributeError):
            return None

    def classify_batch(self, items: Sequence[OutboundEmail], response: Response) -> list[SendResult]:
        """`data` holds the ids of the emails accepted, in order; `errors` the index and reason of each
        email refused (permissive validation)."""
        try:
            body = response.json()
            data = [entry["id"] for entry in body.get("data") or []]
            errors = {int(e["index"]): str(e.get("message", "")) for e in body.get("errors") or []}
        except (ValueError, AttributeError, KeyError, TypeError):
            body = None
        if body is None or len(data) + len(errors) != len(items) or not all(0 <= i < len(items) for i in errors):
            error = f"resend {response.status_code}: batch answer not one result per email; outcome unknown"
            return [SendResult(ok=False, code=response.status_code, error=error) for _ in items]
        ids = iter(data)
        return [SendResult(ok=False, permanent=True, code=422, error=f"resend 422: {errors[n]}") if n in errors
                else SendResult(ok=True, code=response.status_code, provider_id=next(ids))
                for n in range(len(items))]
