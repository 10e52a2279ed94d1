"""SendGrid v3: `POST /v3/mail/send` (https://www.twilio.com/docs/sendgrid/api-reference/mail-send).

URL: `sendgrid://API_KEY@` or `sendgrid://API_KEY@?region=eu` (api.eu.sendgrid.com). 202 means
accepted; the message id is the `X-Message-Id` response header (the prefix of the events'
`sg_message_id`). Our message row id travels as `custom_args.drip_message`, which every event echoes.
"""
from __future__ import annotations

from concurrent.futures import Future

from service.transports.base import OutboundEmail
from service.transports.http import ApiUrl, HttpTransport, Response, custom_headers, split_address


class SendGridTransport(HttpTransport):
    name = "sendgrid"
    sends_mime = False  # the API takes text and HTML fields and signs the email it builds

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.key = url.require(url.user, "the API key", "sendgrid://APIKEY@?region=eu")
        region = url.query.get("region", "us")
        self.base = url.endpoint("https://api.eu.sendgrid.com" if region == "eu" else "https://api.sendgrid.com")

    def request(self, item: OutboundEmail) -> Future[Response]:
        from_name, from_addr = split_address(item.from_header)
        to_name, _ = split_address(item.to_header)
        to = {"email": item.recipient, **({"name": to_name} if to_name else {})}
        body = {
            "personalizations": [{"to": [to], "custom_args": {"drip_message": str(item.message_pk)}}],
            "from": {"email": from_addr, **({"name": from_name} if from_name else {})},
            "subject": item.subject,
            "content": [{"type": "text/plain", "value": item.text}, {"type": "text/html", "value": item.html}],
            "headers": custom_headers(item),
            "tracking_settings": {"click_tracking": {"enable": False}, "open_tracking": {"enable": False}},
        }
        return self.http.post(f"{self.base}/v3/mail/send", json_body=body,
                              headers={"Authorization": f"Bearer {self.key}"})

    def provider_id(self, response: Response) -> str | None:
        return response.headers.get("X-Message-Id")
