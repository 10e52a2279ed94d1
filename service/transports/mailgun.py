"""Mailgun: `POST /v3/<domain>/messages.mime` with our complete MIME message
(https://documentation.mailgun.com/docs/mailgun/api-reference/send/mailgun/messages).

URL: `mailgun://API_KEY@DOMAIN` or `mailgun://API_KEY@DOMAIN?region=eu` (api.eu.mailgun.net). Basic
auth `api:<key>`. Sending the raw message keeps our headers (List-Unsubscribe, DKIM if any) byte for
byte; `v:drip-message` comes back in every event as a user variable.
"""
from __future__ import annotations

from concurrent.futures import Future

from service.transports.base import OutboundEmail
from service.transports.http import ApiUrl, HttpTransport, Response


class MailgunTransport(HttpTransport):
    name = "mailgun"

    def __init__(self, url: ApiUrl) -> None:
        super().__init__(url)
        self.key = url.require(url.user, "the API key", "mailgun://APIKEY@mg.example.com?region=eu")
        self.domain = url.require(url.host, "the sending domain", "mailgun://APIKEY@mg.example.com")
        region = url.query.get("region", "us")
        self.base = url.endpoint("https://api.eu.mailgun.net" if region == "eu" else "https://api.mailgun.net")

    def request(self, item: OutboundEmail) -> Future[Response]:
        return self.http.post(
            f"{self.base}/v3/{self.domain}/messages.mime", auth=("api", self.key),
            fields={"to": item.recipient, "v:drip-message": str(item.message_pk),
                    "message": ("message.eml", item.raw, "message/rfc822")},
        )

    def provider_id(self, response: Response) -> str | None:
        try:
            value = response.json().get("id")
        except (ValueError, AttributeError):
            return None
        return value.strip("<>") if isinstance(value, str) else None
