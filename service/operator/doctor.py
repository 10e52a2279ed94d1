"""`drip doctor`'s checks: would mail sent with this configuration be authenticated and land in the inbox?

Each check returns Findings (ok / warn / fail) with a one-line fix for anything not ok. DNS goes through a
dnspython resolver that DRIP_DNS_SERVER can point at any server (tests run one on loopback). Only `fail`
makes the command exit non-zero; a `warn` is advice.
"""
from __future__ import annotations

import base64
import ipaddress
import os
import smtplib
import ssl
import stat
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import dns.exception
import dns.name
import dns.resolver

from service.core.dkim_keys import DkimKey, same_public_key
from service.transports.smtp import SmtpConfig

FREE_MAIL = frozenset({
    "gmail.com", "googlemail.com", "yahoo.com", "yahoo.co.uk", "yahoo.fr", "ymail.com", "outlook.com",
    "hotmail.com", "hotmail.co.uk", "live.com", "msn.com", "aol.com", "icloud.com", "me.com", "mac.com",
    "gmx.com", "gmx.de", "gmx.net", "web.de", "mail.com", "mail.ru", "yandex.ru", "yandex.com", "proton.me",
    "protonmail.com", "zoho.com", "qq.com", "163.com", "fastmail.com", "tutanota.com", "laposte.net",
})
MAX_SPF_LOOKUPS = 10  # RFC 7208 §4.6.4


@dataclass(frozen=True)
class Finding:
    check: str
    status: str  # "ok", "warn" or "fail"
    detail: str
    fix: str = ""


class DnsError(Exception):
    """The DNS server did not answer (timeout, SERVFAIL): the check cannot say yes or no."""


def make_resolver(server: tuple[str, int] | None, timeout: float = 3.0) -> dns.resolver.Resolver:
    """The system's resolver, or one that asks only `server` (DRIP_DNS_SERVER=IP:PORT)."""
    if server is None:
        resolver = dns.resolver.Resolver()
    else:
        resolver = dns.resolver.Resolver(configure=False)
        resolver.nameservers = [server[0]]
        resolver.port = server[1]
    resolver.lifetime = timeout
    return resolver


def lookup(resolver: dns.resolver.Resolver, name: str, rdtype: str) -> list[str]:
    """Answers as text (TXT strings joined); [] when the name or the type does not exist."""
    try:
        answer = resolver.resolve(name, rdtype, search=False)
    except (dns.resolver.NXDOMAIN, dns.resolver.NoAnswer):
        return []
    except (dns.name.EmptyLabel, dns.name.LabelTooLong, dns.name.NameTooLong):
        return []  # a malformed name in someone's record (an SPF macro, a typo) simply has no answer
    except (dns.exception.Timeout, dns.resolver.NoNameservers) as exc:
        raise DnsError(f"DNS lookup of {rdtype} {name} failed: {exc.__class__.__name__}") from None
    if rdtype == "TXT":
        return [b"".join(r.strings).decode("utf-8", "replace") for r in answer]
    if rdtype == "MX":
        return [str(r.exchange).rstrip(".") for r in answer]
    return [r.to_text() for r in answer]


def tags(record: str) -> dict[str, str]:
    """`k=v; k=v` tag lists of DKIM and DMARC records."""
    out = {}
    for part in record.split(";"):
        key, sep, value = part.partition("=")
        if sep:
            out[key.strip().lower()] = "".join(value.split())
    return out


# -- SPF -----------------------------------------------------------------------------------------
def spf_record(resolver: dns.resolver.Resolver, domain: str) -> list[str]:
    return [r for r in lookup(resolver, domain, "TXT") if r.lower().startswith("v=spf1")]


def spf_covers(resolver: dns.resolver.Resolver, domain: str, ips: Sequence[str], relay_host: str,
               budget: list[int] | None = None) -> str | None:
    """What in `domain`'s SPF authorises the relay (an ip4/ip6/a/mx match or the relay provider's include),
    following include:/redirect= within RFC 7208's ten lookups; None when nothing does."""
    budget = budget if budget is not None else [MAX_SPF_LOOKUPS]
    records = spf_record(resolver, domain)
    if len(records) != 1:
        return None
    addresses = [ipaddress.ip_address(ip) for ip in ips]
    for term in records[0].split()[1:]:
        mech, _, value = term.lstrip("+").partition(":")
        mech, value = mech.lower(), value or domain
        if term[0] in "-~?" or mech == "all":
            continue
        if mech.startswith("redirect="):
            mech, value = "include", mech.partition("=")[2]
        if mech in ("ip4", "ip6"):
            try:
                net = ipaddress.ip_network(value, strict=False)
            except ValueError:  # a malformed term matches nothing (receivers return permerror)
                continue
            if any(a.version == net.version and a in net for a in addresses):
                return term
        elif mech in ("include", "a", "mx") and budget[0] > 0:
            budget[0] -= 1
            if mech == "include":
                if _same_provider(value, relay_host) or spf_covers(resolver, value, ips, relay_host, budget):
                    return term
                continue
            hosts = lookup(resolver, value, "MX") if mech == "mx" else [value]
            found = {ip for h in hosts for t in ("A", "AAAA") for ip in lookup(resolver, h, t)}
            if found & set(ips):
                return term
    return None


def _same_provider(include: str, relay_host: str) -> bool:
    """include:sendgrid.net covers the relay smtp.sendgrid.net: both end in the provider's domain."""
    base = ".".join(include.lower().rstrip(".").split(".")[-2:])
    host = relay_host.lower().rstrip(".")
    return bool(host) and (host == base or host.endswith("." + base))


def check_spf(resolver: dns.resolver.Resolver, domain: str, relay_host: str, relay_ips: Sequence[str]) -> Finding:
    records = spf_record(resolver, domain)
    if not records:
        return Finding("SPF", "fail", f"{domain}: no SPF record",
                       f'publish TXT {domain} "v=spf1 {_spf_suggestion(relay_host, relay_ips)} -all"')
    if len(records) > 1:
        return Finding("SPF", "fail", f"{domain}: {len(records)} SPF records (receivers treat that as an error)",
                       "merge them into one v=spf1 record")
    record = records[0]
    if record.split()[-1].lstrip("+").lower() == "all":
        return Finding("SPF", "fail", f"{domain}: {record!r} ends in +all and lets anyone send as you",
                       "end the record with -all or ~all")
    if not relay_host:
        return Finding("SPF", "warn", f"{domain}: {record!r} (no SMTP relay configured to compare it with)",
                       "set DRIP_EMAIL_URL=smtp://... and run drip doctor again")
    term = spf_covers(resolver, domain, relay_ips, relay_host)
    if term is None:
        shown = relay_host
        if list(relay_ips) != [relay_host]:
            shown += f" ({', '.join(relay_ips) or 'no address'})"
        return Finding("SPF", "fail", f"{domain}: {record!r} does not cover the relay {shown}",
                       f"add {_spf_suggestion(relay_host, relay_ips)} to the SPF record of {domain}")
    return Finding("SPF", "ok", f"{domain}: {record!r} covers the relay {relay_host} ({term})")


def _spf_suggestion(relay_host: str, relay_ips: Sequence[str]) -> str:
    if relay_ips and relay_ips[0] == relay_host:  # the relay is given as an address
        return f"ip{ipaddress.ip_address(relay_host).version}:{relay_host}"
    if relay_host:
        return f"include:{'.'.join(relay_host.split('.')[-2:])} (or your provider's documented include)"
    return "include:<your provider>"


# -- DKIM ----------------------------------------------------------------------------------------
def check_dkim(resolver: dns.resolver.Resolver, keys: Sequence[DkimKey], from_domains: Iterable[str]) -> list[Finding]:
    if not keys:
        return [Finding("DKIM", "fail", "no DKIM key configured: mail is unsigned, so Gmail and Yahoo junk or "
                        "reject it and one-click unsubscribe is not offered",
                        "set DRIP_DKIM_DOMAIN, DRIP_DKIM_SELECTOR and DRIP_DKIM_KEY_FILE (see docs/deliverability.md)")]
    findings = [_check_key(resolver, key) for key in keys]
    for domain in from_domains:
        d = keys[0].domain
        if not (domain == d or domain.endswith("." + d) or d.endswith("." + domain)):
            findings.append(Finding("DKIM", "fail", f"d={d} is not aligned with the From domain {domain}, so DMARC "
                                    "fails", f"sign with a key for {domain} (DRIP_DKIM_DOMAIN={domain})"))
    return findings


def _check_key(resolver: dns.resolver.Resolver, key: DkimKey) -> Finding:
    fix = f'publish TXT {key.record_name} "{key.txt_record()}"'
    records = [r for r in lookup(resolver, key.record_name, "TXT") if "p=" in r]
    if not records:
        return Finding("DKIM", "fail", f"{key.record_name}: no DKIM key record", fix)
    published = tags(records[0]).get("p", "")
    if not published:
        return Finding("DKIM", "fail", f"{key.record_name}: the key is revoked (empty p=)", fix)
    if not _same_key(key, published):
        return Finding("DKIM", "fail", f"{key.record_name}: the published key is not the one in the key file", fix)
    if key.algorithm == "rsa-sha256" and key.bits < 2048:
        return Finding("DKIM", "warn", f"{key.record_name}: matches, but RSA {key.bits} bits is weak",
                       "rotate to a 2048-bit key (DRIP_DKIM_SELECTOR_2 / DRIP_DKIM_KEY_FILE_2)")
    kind = f"RSA {key.bits}" if key.algorithm == "rsa-sha256" else "Ed25519"
    return Finding("DKIM", "ok", f"{key.record_name}: published key matches the {kind} key file")


def _same_key(key: DkimKey, published_b64: str) -> bool:
    try:
        return same_public_key(base64.b64decode(published_b64, validate=True), key)
    except ValueError:
        return False


# -- DMARC, MX -----------------------------------------------------------------------------------
def check_dmarc(resolver: dns.resolver.Resolver, domain: str) -> Finding:
    name = f"_dmarc.{domain}"
    records = [r for r in lookup(resolver, name, "TXT") if r.lower().startswith("v=dmarc1")]
    fix = f'publish TXT {name} "v=DMARC1; p=none; rua=mailto:dmarc-reports@{domain}"'
    if not records:
        return Finding("DMARC", "fail", f"{domain}: no DMARC record (Gmail and Yahoo require one for bulk mail)", fix)
    if len(records) > 1:
        return Finding("DMARC", "fail", f"{domain}: {len(records)} DMARC records (receivers ignore them all)",
                       "keep exactly one")
    policy = tags(records[0]).get("p", "").lower()
    if policy not in ("none", "quarantine", "reject"):
        return Finding("DMARC", "fail", f"{domain}: DMARC record has no valid p= policy", fix)
    if policy == "none":
        return Finding("DMARC", "warn", f"{domain}: policy none (monitoring only; enough for Gmail's rules)",
                       "move to p=quarantine once the aggregate reports show only your own mail")
    return Finding("DMARC", "ok", f"{domain}: policy {policy}")


def check_bounce_mx(resolver: dns.resolver.Resolver, bounce_domain: str | None) -> Finding:
    if not bounce_domain:
        return Finding("Bounces", "warn", "DRIP_BOUNCE_DOMAIN is not set: bounces return to the From address",
                       "set DRIP_BOUNCE_DOMAIN to a domain whose MX receives bounces (e.g. bounces.example.org)")
    mx = lookup(resolver, bounce_domain, "MX")
    if not mx:
        return Finding("Bounces", "fail", f"{bounce_domain}: no MX record, so bounces cannot be delivered",
                       f"publish MX {bounce_domain} pointing at the server that receives bounces")
    return Finding("Bounces", "ok", f"{bounce_domain}: MX {', '.join(sorted(mx))}")


# -- configuration -------------------------------------------------------------------------------
def check_base_url(base_url: str) -> Finding:
    if urlsplit(base_url).scheme != "https":
        return Finding("Base URL", "fail", f"{base_url} is not https: one-click unsubscribe (RFC 8058) needs an "
                       "https URL", "serve Drip behind TLS and set DRIP_BASE_URL=https://...")
    return Finding("Base URL", "ok", f"{base_url} is https")


def check_postal_address(placeholder: bool) -> Finding:
    if placeholder:
        return Finding("Postal address", "fail", "not set: every footer shows a placeholder (CAN-SPAM needs one)",
                       "set DRIP_POSTAL_ADDRESS to the sender's street address or registered PO box")
    return Finding("Postal address", "ok", "set")


def check_free_mail(domain: str) -> Finding:
    if domain.lower() in FREE_MAIL:
        return Finding("From domain", "fail", f"{domain} is a free-mail domain: its DMARC policy makes receivers "
                       "reject mail it did not send", "send from a domain you own (campaign 'from' or DRIP_FROM)")
    return Finding("From domain", "ok", f"{domain} is not a free-mail domain")


def check_database_file(database_url: str) -> Finding | None:
    """An SQLite file other accounts on the host can read hands them every reader's address and consent
    record. Drip creates new files private, but keeps the mode of a file that already exists (one made by
    an older Drip, copied in, or restored from a backup), so this is where such a file is pointed at.
    PostgreSQL guards its files itself: no finding."""
    from sqlalchemy.engine import make_url

    url = make_url(database_url)
    if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:" \
            or url.database.startswith("file:"):
        return None
    path = Path(url.database)
    exposed = []
    for name in (path, Path(f"{path}-wal"), Path(f"{path}-shm")):
        try:
            mode = stat.S_IMODE(os.stat(name).st_mode)
        except FileNotFoundError:
            if name == path:
                return Finding("Database file", "ok",
                               f"{path} not created yet; Drip creates it readable by its owner only")
            continue
        except OSError as exc:  # a folder this account may not enter: Drip could not open it either
            return Finding("Database file", "warn", f"{name}: cannot check it ({exc.strerror})",
                           "run drip doctor as the account that runs Drip")
        if mode & 0o077:
            exposed.append((name, mode))
    if exposed:
        modes = ", ".join(f"{name.name} {mode:o}" for name, mode in exposed)
        return Finding("Database file", "warn", f"open to other accounts on this machine ({modes}): every "
                       "reader's address and consent record", "chmod 600 " + " ".join(str(n) for n, _ in exposed))
    return Finding("Database file", "ok", f"{path} readable by its owner only")


# -- SMTP relay ----------------------------------------------------------------------------------
def relay_of(email_url: str) -> SmtpConfig | None:
    return SmtpConfig.from_url(email_url) if urlsplit(email_url).scheme in ("smtp", "smtps") else None


def relay_addresses(resolver: dns.resolver.Resolver, host: str) -> list[str]:
    try:
        ipaddress.ip_address(host)
        return [host]
    except ValueError:
        return [ip for t in ("A", "AAAA") for ip in lookup(resolver, host, t)]


def check_relay(config: SmtpConfig | None, timeout: float = 5.0) -> Finding:
    """Connect, EHLO, and see TLS: implicit (smtps) or STARTTLS offered and completed."""
    if config is None:
        return Finding("SMTP relay", "fail", "DRIP_EMAIL_URL is not smtp(s): emails are written to files, not sent",
                       "set DRIP_EMAIL_URL=smtp://user:pass@relay:587?starttls=true")
    where = f"{config.host}:{config.port}"
    ctx = ssl.create_default_context()
    if not config.verify:
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    try:
        if config.implicit_tls:
            with smtplib.SMTP_SSL(config.host, config.port, timeout=timeout, context=ctx) as conn:
                conn.ehlo()
            return Finding("SMTP relay", "ok", f"{where} reachable over implicit TLS (smtps)")
        with smtplib.SMTP(config.host, config.port, timeout=timeout) as conn:
            conn.ehlo()
            if not conn.has_extn("starttls"):
                return Finding("SMTP relay", "fail", f"{where} does not offer STARTTLS: mail would travel in clear",
                               "use the relay's TLS port (587 with ?starttls=true, or smtps://...:465)")
            conn.starttls(context=ctx)
            conn.ehlo()
    except (OSError, smtplib.SMTPException, ssl.SSLError) as exc:
        return Finding("SMTP relay", "fail", f"{where} not reachable with TLS: {exc or exc.__class__.__name__}",
                       "check host and port in DRIP_EMAIL_URL, and that this machine may connect to it")
    if not config.starttls:
        return Finding("SMTP relay", "fail", f"{where} offers STARTTLS but DRIP_EMAIL_URL does not use it",
                       "add ?starttls=true to DRIP_EMAIL_URL")
    return Finding("SMTP relay", "ok", f"{where} reachable, STARTTLS offered and completed")


# -- the whole run -------------------------------------------------------------------------------
def run_checks(*, resolver: dns.resolver.Resolver, from_domains: Sequence[str], keys: Sequence[DkimKey],
               email_url: str, base_url: str, postal_placeholder: bool, bounce_domain: str | None,
               smtp_timeout: float = 5.0, database_url: str = "") -> list[Finding]:
    """Every check, in report order. A DNS failure fails its own check only."""
    relay = relay_of(email_url)
    findings: list[Finding] = []

    def dns_check(name: str, fn, *args) -> list[Finding]:
        try:
            out = fn(*args)
        except DnsError as exc:
            return [Finding(name, "fail", str(exc), "check DRIP_DNS_SERVER or this machine's resolver")]
        return out if isinstance(out, list) else [out]

    ips: list[str] = []
    if relay is not None:
        try:
            ips = relay_addresses(resolver, relay.host)
        except DnsError:
            ips = []
    for domain in from_domains:
        findings += dns_check("SPF", check_spf, resolver, domain, relay.host if relay else "", ips)
    findings += dns_check("DKIM", check_dkim, resolver, keys, from_domains)
    for domain in from_domains:
        findings += dns_check("DMARC", check_dmarc, resolver, domain)
    findings += dns_check("Bounces", check_bounce_mx, resolver, bounce_domain)
    findings += [check_base_url(base_url), check_postal_address(postal_placeholder)]
    findings += [check_free_mail(domain) for domain in from_domains]
    if database_url and (database := check_database_file(database_url)) is not None:
        findings.append(database)
    findings.append(check_relay(relay, smtp_timeout))
    return findings


def format_report(findings: Sequence[Finding]) -> str:
    """Short, aligned text: one line per finding, a `fix:` line under each that is not ok."""
    fails = sum(f.status == "fail" for f in findings)
    warns = sum(f.status == "warn" for f in findings)
    head = ("drip doctor: all checks passed" if not fails and not warns
            else f"drip doctor: {fails} problem{'s' * (fails != 1)}, {warns} warning{'s' * (warns != 1)}")
    lines = [head]
    width = max(len(f.check) for f in findings) if findings else 0
    for f in findings:
        lines.append(f"  {f.status.upper():<4}  {f.check:<{width}}  {f.detail}")
        if f.fix and f.status != "ok":
            lines.append(f"  {'':<4}  {'':<{width}}  fix: {f.fix}")
    return "\n".join(lines)

