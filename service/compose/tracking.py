"""Open and click tracking (off unless DRIP_TRACKING=on): a pixel and signed redirect links.

Links are rewritten after rendering, in the HTML part only. A click URL carries the target inside an
itsdangerous signature with its own salt, so the redirect goes only where we signed it to go (no open
redirect, no `?url=` parameter at all). Unsubscribe and mailto links are never wrapped.
"""
from __future__ import annotations

import html as htmllib
import re

from itsdangerous import BadSignature, URLSafeSerializer

CLICK_SALT = "drip.track.click.v1"
OPEN_SALT = "drip.track.open.v1"
HREF = re.compile(r"""(<a\b[^>]*?\bhref\s*=\s*)(["'])(.*?)\2""", re.IGNORECASE | re.DOTALL)
PIXEL = '<img src="{src}" width="1" height="1" alt="" style="display:block;border:0;width:1px;height:1px">'


class BadTrackingToken(ValueError):
    pass


def click_token(secret: str, message_pk: int, url: str) -> str:
    return URLSafeSerializer(secret, salt=CLICK_SALT).dumps([message_pk, url])


def open_token(secret: str, message_pk: int) -> str:
    return URLSafeSerializer(secret, salt=OPEN_SALT).dumps(message_pk)


def read_click(secret: str, token: str) -> tuple[int, str]:
    try:
        data = URLSafeSerializer(secret, salt=CLICK_SALT).loads(token)
    except BadSignature:
        raise BadTrackingToken("bad signature") from None
    if not (isinstance(data, list) and len(data) == 2 and isinstance(data[0], int) and isinstance(data[1], str)
            and data[1].lower().startswith(("http://", "https://"))):
        raise BadTrackingToken("malformed click token")
    return data[0], data[1]


def read_open(secret: str, token: str) -> int:
    try:
        data = URLSafeSerializer(secret, salt=OPEN_SALT).loads(token)
    except BadSignature:
        raise BadTrackingToken("bad signature") from None
    if not isinstance(data, int):
        raise BadTrackingToken("malformed open token")
    return data


def _wrap(url: str, unsubscribe_url: str) -> bool:
    lowered = url.lower()
    return lowered.startswith(("http://", "https://")) and url != unsubscribe_url and "/unsubscribe" not in lowered


def rewrite_html(html: str, *, secret: str, base_url: str, message_pk: int, unsubscribe_url: str) -> str:
    """Wrap every http(s) link except unsubscribe links and Drip's own pages (preferences, view in browser:
    they carry their own signed tokens), and add the open pixel before </body>."""
    def replace(m: re.Match[str]) -> str:
        url = htmllib.unescape(m.group(3)).strip()
        if not _wrap(url, unsubscribe_url) or url.startswith(base_url.rstrip("/") + "/"):
            return m.group(0)
        tracked = f"{base_url}/t/c/{click_token(secret, message_pk, url)}"
        return f"{m.group(1)}{m.group(2)}{htmllib.escape(tracked)}{m.group(2)}"

    out = HREF.sub(replace, html)
    pixel = PIXEL.format(src=htmllib.escape(f"{base_url}/t/o/{open_token(secret, message_pk)}.gif"))
    idx = out.lower().rfind("</body>")
    return out[:idx] + pixel + out[idx:] if idx >= 0 else out + pixel
