"""The one check every URL Drip fetches passes first: an SNS signing certificate, an SNS SubscribeURL,
a provider API's endpoint.

Two URL parsers can disagree about where a URL points. Python's `urlsplit` reads
`https://10.0.0.1:8080\\@sns.us-east-1.amazonaws.com/x.pem` as a URL on the AWS host (the part before
`@` is userinfo), while the HTTP client treats the backslash as the end of the host and connects to
10.0.0.1:8080. So a URL is accepted only when it is plain enough that every parser reads it the same way:
no userinfo, no backslash, no percent-escapes or spaces in the host part, no control characters, a
literal port only where the caller allows it. What is fetched is then the URL rebuilt from the parts
that were checked, never the string the caller sent.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from urllib.parse import urlsplit, urlunsplit

# Characters RFC 3986 allows in a path and query, without `\`, `%`-free hosts, spaces or controls.
_SAFE_REST = re.compile(r"[A-Za-z0-9\-._~!$&'()*+,;=:@/?%]*")
_HOST = re.compile(r"[a-z0-9](?:[a-z0-9.-]{0,251}[a-z0-9])?")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class UnsafeUrl(ValueError):
    """The URL may not be fetched; the message says why, without echoing credentials."""


@dataclass(frozen=True)
class CheckedUrl:
    scheme: str
    host: str
    port: int | None
    url: str  # rebuilt from the checked parts: the only string handed to the HTTP client


def check(url: str, *, host_pattern: re.Pattern[str] | None = None, extra_netlocs: Iterable[str] = (),
          allow_http_loopback: bool = False, allow_port: bool = False) -> CheckedUrl:
    """Accept `url` only if it is https (or http to loopback where allowed) on an allowed host.

    A host is allowed when it matches `host_pattern` exactly with no port, or when its `host:port`
    (lower case) is listed in `extra_netlocs` (a test server or a proxy the operator configured). With
    neither given (`host_pattern=None` and no extra netlocs) any plain host is allowed: the operator's
    own endpoint setting.
    """
    if not isinstance(url, str) or not url or len(url) > 2048:
        raise UnsafeUrl("empty or overlong URL")
    if any(ord(c) < 0x21 or ord(c) > 0x7E for c in url) or "\\" in url:
        raise UnsafeUrl("the URL holds spaces, control characters, backslashes or non-ASCII characters")
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise UnsafeUrl("the URL's host or port cannot be read") from None
    netloc = parts.netloc.lower()
    if "@" in netloc or parts.username is not None or parts.password is not None:
        raise UnsafeUrl("the URL carries a user name or password before its host")
    host = (parts.hostname or "").lower()
    if "%" in netloc or not host or not (_HOST.fullmatch(host) or host == "::1"):
        raise UnsafeUrl("the URL's host is not a plain host name")
    if parts.fragment or not _SAFE_REST.fullmatch(parts.path + ("?" + parts.query if parts.query else "")):
        raise UnsafeUrl("the URL's path holds characters that parsers read differently")
    listed = netloc in {n.strip().lower() for n in extra_netlocs}
    if parts.scheme != "https" and not (parts.scheme == "http" and allow_http_loopback and host in LOOPBACK_HOSTS):
        raise UnsafeUrl(f"only https URLs are fetched, not {parts.scheme or 'a schemeless URL'}")
    if not listed:
        if host_pattern is not None and not host_pattern.fullmatch(host):
            raise UnsafeUrl(f"host {host!r} is not one this URL may point to")
        if port is not None and not allow_port:
            raise UnsafeUrl("the URL names a port; only the default port is fetched")
    rebuilt = urlunsplit((parts.scheme, netloc, parts.path or "/", parts.query, ""))
    return CheckedUrl(parts.scheme, host, port, rebuilt)
