"""`drip doctor` against a real DNS server on loopback (dnslib) serving good and broken records, and real
SMTP relays (aiosmtpd with and without STARTTLS): each check's verdict and fix text."""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from aiosmtpd.controller import Controller
from click.testing import CliRunner
from conftest import SmtpRecorder, free_port
from dnslib import MX, QTYPE, RCODE, RR, TXT, A
from dnslib.server import BaseResolver, DNSLogger, DNSServer
from test_dkim import genkey
from tlshelp import make_cert, server_context

from service.cli import main
from service.core.dkim_keys import load_key
from service.operator.doctor import (
    check_base_url,
    check_bounce_mx,
    check_database_file,
    check_dkim,
    check_dmarc,
    check_free_mail,
    check_postal_address,
    check_relay,
    check_spf,
    make_resolver,
    relay_of,
    run_checks,
)

DOMAIN = "backpainwarriors.example"


class Zone(BaseResolver):
    """Answers from a dict {(name, type): [values]} that a test may change between lookups."""

    def __init__(self) -> None:
        self.records: dict[tuple[str, str], list] = {}

    def resolve(self, request, handler):
        reply = request.reply()
        name, qtype = str(request.q.qname).rstrip(".").lower(), QTYPE[request.q.qtype]
        for value in self.records.get((name, qtype), []):
            if qtype == "TXT":  # long records as 255-byte strings, like real zones
                rdata = TXT([value[i:i + 255] for i in range(0, len(value), 255)])
            else:
                rdata = MX(value) if qtype == "MX" else A(value)
            reply.add_answer(RR(name, getattr(QTYPE, qtype), rdata=rdata, ttl=60))
        if not reply.rr and not any(n == name for n, _t in self.records):
            reply.header.rcode = RCODE.NXDOMAIN
        return reply


@pytest.fixture
def zone() -> Iterator[tuple[Zone, tuple[str, int]]]:
    resolver = Zone()
    server = DNSServer(resolver, address="127.0.0.1", port=0, logger=DNSLogger("-request,-reply,-truncated,-error,"
                                                                               "-recv,-send,-data,-log_prefix"))
    server.start_thread()
    yield resolver, ("127.0.0.1", server.server.server_address[1])
    server.stop()
    server.server.server_close()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return make_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def tls_relay(cert) -> Iterator[int]:
    ctx = server_context(cert)
    port = free_port()
    controller = Controller(SmtpRecorder(), hostname="127.0.0.1", port=port, tls_context=ctx, ready_timeout=10)
    controller.start()
    yield port
    controller.stop()


@pytest.fixture(scope="module")
def rsa(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    path = tmp_path_factory.mktemp("doctor-key") / "rsa.pem"
    return path, genkey(path, "rsa")


def good_records(zone: Zone, dkim_txt: str) -> None:
    zone.records.update({
        (DOMAIN, "TXT"): ["v=spf1 include:_spf.relay.example -all", "google-site-verification=abc"],
        ("_spf.relay.example", "TXT"): ["v=spf1 ip4:127.0.0.0/8 -all"],
        (f"s1._domainkey.{DOMAIN}", "TXT"): [dkim_txt],
        (f"_dmarc.{DOMAIN}", "TXT"): ["v=DMARC1; p=reject; rua=mailto:d@backpainwarriors.example"],
        (f"bounce.{DOMAIN}", "MX"): [f"mx.{DOMAIN}"],
    })


def test_a_good_setup_passes_every_check_through_the_cli(zone, tls_relay, rsa, tmp_path: Path) -> None:
    """All records right, https, postal address, a STARTTLS relay: every line OK and exit code 0."""
    resolver, (host, port) = zone
    good_records(resolver, rsa[1])
    env = {"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": f"sqlite:///{tmp_path / 'drip.sqlite3'}",
           "DRIP_DNS_SERVER": f"{host}:{port}", "DRIP_BASE_URL": "https://drip.example.org",
           "DRIP_POSTAL_ADDRESS": "12 Test Street", "DRIP_BOUNCE_DOMAIN": f"bounce.{DOMAIN}",
           "DRIP_EMAIL_URL": f"smtp://127.0.0.1:{tls_relay}?starttls=true&verify=false",
           "DRIP_DKIM_DOMAIN": DOMAIN, "DRIP_DKIM_SELECTOR": "s1", "DRIP_DKIM_KEY_FILE": str(rsa[0])}
    result = CliRunner().invoke(main, ["doctor", "--timeout", "3"], env=env)
    assert result.output.splitlines()[0] == "drip doctor: all checks passed", result.output
    assert result.exit_code == 0
    assert "include:_spf.relay.example" in result.output and "policy reject" in result.output
    assert all(line.startswith("  OK ") for line in result.output.splitlines()[1:])


def test_a_broken_setup_lists_each_problem_with_its_fix_and_exits_1(zone, smtp, tmp_path: Path) -> None:
    """Nothing published, http, no postal address, a relay without STARTTLS: FAIL lines with fixes, exit 1."""
    _resolver, (host, port) = zone
    env = {"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": f"sqlite:///{tmp_path / 'drip.sqlite3'}",
           "DRIP_DNS_SERVER": f"{host}:{port}", "DRIP_EMAIL_URL": smtp.url,
           "DRIP_FROM": "Sofia <sofia@gmail.com>"}
    result = CliRunner().invoke(main, ["doctor", "--timeout", "3"], env=env)
    assert result.exit_code == 1
    out = result.output
    assert out.startswith("drip doctor: 7 problems, 1 warning"), out
    for expected in ('fix: publish TXT gmail.com "v=spf1 ip4:127.0.0.1 -all"', "no DKIM key configured",
                     'fix: publish TXT _dmarc.gmail.com "v=DMARC1; p=none;', "fix: set DRIP_BOUNCE_DOMAIN",
                     "is not https", "fix: set DRIP_POSTAL_ADDRESS", "gmail.com is a free-mail domain",
                     "does not offer STARTTLS"):
        assert expected in out, expected


@pytest.mark.parametrize(("records", "relay", "status", "text"), [
    ([], "127.0.0.1", "fail", 'v=spf1 ip4:127.0.0.1 -all'),
    (["v=spf1 ip4:127.0.0.1 -all", "v=spf1 -all"], "127.0.0.1", "fail", "2 SPF records"),
    (["v=spf1 +all"], "127.0.0.1", "fail", "lets anyone send"),
    (["v=spf1 ip4:192.0.2.0/24 ~all"], "127.0.0.1", "fail", "add ip4:127.0.0.1"),
    (["v=spf1 ip4:192.0.2.0/24 ip4:127.0.0.1 ~all"], "127.0.0.1", "ok", "ip4:127.0.0.1"),
    (["v=spf1 a -all"], "127.0.0.1", "ok", "covers the relay"),
    (["v=spf1 redirect=_spf.relay.example"], "127.0.0.1", "ok", "redirect="),
    (["v=spf1 include:sendgrid.net -all"], "smtp.sendgrid.net", "ok", "include:sendgrid.net"),
    (["v=spf1 include:sendgrid.net -all"], "smtp.other.example", "fail", "include:other.example"),
    (["v=spf1 ip4:999.1.1.1 a:bad..name include:%{d}.x ip4:127.0.0.1 -all"], "127.0.0.1", "ok", "ip4:127.0.0.1"),
])
def test_spf_verdicts(zone, records: list[str], relay: str, status: str, text: str) -> None:
    """SPF: missing, duplicated, +all, not covering the relay, and covered by ip4, a, redirect or include."""
    resolver, server = zone
    resolver.records[(DOMAIN, "TXT")] = records
    resolver.records[(DOMAIN, "A")] = ["127.0.0.1"]
    resolver.records[("_spf.relay.example", "TXT")] = ["v=spf1 ip4:127.0.0.0/8 -all"]
    ips = ["127.0.0.1"] if relay == "127.0.0.1" else ["198.51.100.7"]
    finding = check_spf(make_resolver(server), DOMAIN, relay, ips)
    assert finding.status == status
    assert text in finding.detail + finding.fix


def test_dkim_verdicts(zone, rsa, tmp_path: Path) -> None:
    """DKIM: no key, no record, a different key, a revoked key, the right key, and a misaligned d=."""
    resolver, server = zone
    dns = make_resolver(server)
    key = load_key(str(rsa[0]), domain=DOMAIN, selector="s1", variable="DRIP_DKIM_KEY_FILE")
    [none] = check_dkim(dns, [], [DOMAIN])
    assert none.status == "fail" and "DRIP_DKIM_KEY_FILE" in none.fix
    [missing] = check_dkim(dns, [key], [DOMAIN])
    assert missing.status == "fail" and missing.fix == f'publish TXT s1._domainkey.{DOMAIN} "{key.txt_record()}"'
    other = genkey(tmp_path / "other.pem", "ed25519")
    resolver.records[(f"s1._domainkey.{DOMAIN}", "TXT")] = [other]
    [wrong] = check_dkim(dns, [key], [DOMAIN])
    assert wrong.status == "fail" and "not the one in the key file" in wrong.detail
    resolver.records[(f"s1._domainkey.{DOMAIN}", "TXT")] = ["v=DKIM1; k=rsa; p="]
    assert check_dkim(dns, [key], [DOMAIN])[0].detail.endswith("revoked (empty p=)")
    resolver.records[(f"s1._domainkey.{DOMAIN}", "TXT")] = [rsa[1]]
    [good] = check_dkim(dns, [key], [DOMAIN])
    assert (good.status, good.detail) == ("ok", f"s1._domainkey.{DOMAIN}: published key matches the RSA 2048 key file")
    [_good, misaligned] = check_dkim(dns, [key], ["example.net"])
    assert misaligned.status == "fail" and "DRIP_DKIM_DOMAIN=example.net" in misaligned.fix


@pytest.mark.parametrize(("records", "status", "text"), [
    ([], "fail", "no DMARC record"),
    (["v=DMARC1; p=none"], "warn", "policy none"),
    (["v=DMARC1; p=quarantine; pct=100"], "ok", "policy quarantine"),
    (["v=DMARC1; rua=mailto:x@y.example"], "fail", "no valid p="),
    (["v=DMARC1; p=reject", "v=DMARC1; p=none"], "fail", "2 DMARC records"),
])
def test_dmarc_verdicts(zone, records: list[str], status: str, text: str) -> None:
    """DMARC: present or not, and its policy."""
    resolver, server = zone
    resolver.records[(f"_dmarc.{DOMAIN}", "TXT")] = records
    finding = check_dmarc(make_resolver(server), DOMAIN)
    assert (finding.status, text in finding.detail) == (status, True)


def test_bounce_mx_verdicts(zone) -> None:
    """Bounce domain: unset is a warning, no MX a failure, an MX passes."""
    resolver, server = zone
    dns = make_resolver(server)
    assert check_bounce_mx(dns, None).status == "warn"
    missing = check_bounce_mx(dns, f"bounce.{DOMAIN}")
    assert missing.status == "fail" and missing.fix.startswith(f"publish MX bounce.{DOMAIN}")
    resolver.records[(f"bounce.{DOMAIN}", "MX")] = [f"mx.{DOMAIN}"]
    assert check_bounce_mx(dns, f"bounce.{DOMAIN}").detail == f"bounce.{DOMAIN}: MX mx.{DOMAIN}"


def test_configuration_checks() -> None:
    """https base URL, postal address and free-mail From domains."""
    assert check_base_url("https://drip.example.org").status == "ok"
    assert "DRIP_BASE_URL=https://" in check_base_url("http://drip.example.org").fix
    assert check_postal_address(True).status == "fail" and check_postal_address(False).status == "ok"
    assert check_free_mail("yahoo.com").status == "fail" and check_free_mail(DOMAIN).status == "ok"


def test_an_sqlite_file_other_accounts_can_read_is_pointed_at_with_the_chmod_that_fixes_it(tmp_path: Path) -> None:
    """A database file made private by Drip passes; one restored from a backup with the umask's 644 (and its
    write-ahead log likewise) is a warning naming each file and the command; PostgreSQL is not judged here."""
    db = tmp_path / "drip.sqlite3"
    url = f"sqlite:///{db}"
    assert "not created yet" in check_database_file(url).detail
    from service.core.db import make_engine

    engine = make_engine(url)  # Drip creates it: owner only
    with engine.connect() as conn:
        conn.exec_driver_sql("CREATE TABLE t (x)")
    engine.dispose()
    assert check_database_file(url).status == "ok"
    db.chmod(0o644)
    (tmp_path / "drip.sqlite3-wal").write_bytes(b"")
    (tmp_path / "drip.sqlite3-wal").chmod(0o640)
    found = check_database_file(url)
    assert found.status == "warn" and "drip.sqlite3 644" in found.detail and "drip.sqlite3-wal 640" in found.detail
    assert found.fix == f"chmod 600 {db} {db}-wal"
    assert check_database_file("postgresql+psycopg://postgres@127.0.0.1:5432/test") is None
    result = CliRunner().invoke(main, ["doctor", "--timeout", "0.5"],
                                env={"DRIP_SECRET_KEY": "k" * 32, "DATABASE_URL": url,
                                     "DRIP_DNS_SERVER": f"127.0.0.1:{free_port()}"})
    assert f"fix: chmod 600 {db} {db}-wal" in result.output


def test_relay_verdicts(tls_relay, smtp) -> None:
    """Relay: STARTTLS completed, STARTTLS not used by the URL, not offered, and nothing listening."""
    url = f"smtp://127.0.0.1:{tls_relay}?verify=false"
    assert check_relay(relay_of(url + "&starttls=true"), 3).status == "ok"
    unused = check_relay(relay_of(url), 3)
    assert unused.status == "fail" and unused.fix == "add ?starttls=true to DRIP_EMAIL_URL"
    assert "does not offer STARTTLS" in check_relay(relay_of(smtp.url), 3).detail
    assert "not reachable" in check_relay(relay_of(f"smtp://127.0.0.1:{free_port()}"), 3).detail
    assert "written to files" in check_relay(relay_of("file://outbox")).detail


def test_a_dead_dns_server_fails_the_dns_checks_only() -> None:
    """No DNS answer is a failure of the DNS checks, named as such, not a crash."""
    findings = run_checks(resolver=make_resolver(("127.0.0.1", free_port()), 0.5), from_domains=[DOMAIN], keys=[],
                          email_url="file://outbox", base_url="https://x.example", postal_placeholder=False,
                          bounce_domain=f"bounce.{DOMAIN}")
    by_check = {f.check: f for f in findings}
    assert "DNS lookup of TXT" in by_check["SPF"].detail and "DNS lookup of MX" in by_check["Bounces"].detail
    assert by_check["Base URL"].status == "ok"
