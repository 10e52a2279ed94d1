"""Postmark: `POST /email/batch` with 100 emails per request (`?batch=N`, up to Postmark's 500), with the server token
(https://postmarkapp.com/developer/api/email-api#send-batch-emails); `?batch=1` sends each alone with
`POST /email`.

URL: `postmark://SERVER_TOKEN@?stream=broadcast` (stream defaults to `outbound`). A batch is answered 200
with one `{"ErrorCode", "Message", "MessageID"}` per email, in order, so one refused email fails alone.
ErrorCode 406 "inactive recipient" means Postmark already suppressed the address after a hard bounce or
complaint, so we suppress it too. A whole-request error (401, 422, 429, 5xx) is every email's. Postmark's
429 carries no wait header: the dispatcher's exponential backoff with jitter applies. Postmark has no
idempotency key: a batch whose answer never came may be sent again (docs/providers.md).
"""
from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future

from service.transports.base import OutboundEmail, SendResult
from service.transports.http import ApiUrl, HttpTransport, Response, custom_headers

INACTIVE_RECIPIENT = 406


class PostmarkTransport(HttpTransport):
    name = "postmark"
    sends_mime = False  # the API takes text and HTML fields and signs the email it builds
    # Postmark takes up to 500 per /email/batch request; 100 lets the next batch be composed while one is
    # in flight (a 250-email chunk makes three requests, not one), and `?batch=500` is allowed.
    batch_size = 100
    most_per_batch = 500
    default_concurrency = 4

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.token = url.require(url.user, "the server token", "postmark://TOKEN@?stream=broadcast")
        self.stream = url.query.get("stream", "outbound")
        self.base = url.endpoint("https://api.postmarkapp.com")

    def message(self, item: OutboundEmail) -> dict:
        return {
            "From": item.from_header, "To": item.to_header, "Subject": item.subject,
            "TextBody": item.text, "HtmlBody": item.html, "MessageStream": self.stream,
            "Headers": [{"Name": k, "Value": v} for k, v in custom_headers(item).items()],
            "Metadata": {"drip_message": str(item.message_pk)},
            "TrackOpens": False, "TrackLinks": "None",
        }

    def _headers(self) -> dict[str, str]:
        return {"Accept": "application/json", "X-Postmark-Server-Token": self.token}

    def request(self, item: OutboundEmail) -> Future[Response]:
        return self.http.post(f"{self.base}/email", json_body=self.message(item), headers=self._headers())

    def request_batch(self, items: Sequence[OutboundEmail]) -> Future[Response]:
        return self.http.post(f"{self.base}/email/batch", json_body=[self.message(i) for i in items],
                              headers=self._headers())

    def provider_id(self, response: Response) -> str | None:
        return _json(response).get("MessageID")

    def classify(self, response: Response) -> SendResult:
        if response.status_code == 422 and _json(response).get("ErrorCode") == INACTIVE_RECIPIENT:
            return _inactive(_json(response))
        return super().classify(response)

    def classify_batch(self, items: Sequence[OutboundEmail], response: Response) -> list[SendResult]:
        try:
            answers = response.json()
        except ValueError:
            answers = None
        if not isinstance(answers, list) or len(answers) != len(items) or not all(isinstance(a, dict)
                                                                                 for a in answers):
            # Accepted, but not in the documented shape: which emails went is unknown, so each is retried.
            error = f"postmark {response.status_code}: batch answer not one result per email; outcome unknown"
            return [SendResult(ok=False, code=response.status_code, error=error) for _ in items]
        return [_one(answer) for answer in answers]


def _one(answer: dict) -> SendResult:
    code = answer.get("ErrorCode")
    if code == 0:
        return SendResult(ok=True, code=200, provider_id=answer.get("MessageID"))
    if code == INACTIVE_RECIPIENT:
        return _inactive(answer)
    # Any other per-email ErrorCode (300 invalid request, 4xx sender or template problems) is about this
    # request: failed without retry, the reader not blamed, as a 422 for a single email.
    return SendResult(ok=False, permanent=True, code=422,
                      error=f"postmark ErrorCode {code}: {answer.get('Message', '')}")


def _inactive(answer: dict) -> SendResult:
    return SendResult(ok=False, permanent=True, suppress=True, code=INACTIVE_RECIPIENT,
                      error=f"postmark 406 inactive recipient: {answer.get('Message', '')}")


def _json(response: Response) -> dict:
    try:
        data = response.json()
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}
