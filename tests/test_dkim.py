"""DKIM round trip: messages received by the real SMTP server verify with dkimpy against the public key.

Keys come from `openssl genpkey`, and the DNS TXT records the verifier reads are built from `openssl pkey
-pubout`, not from our own code, so a wrong public key derivation or a wrong signature both fail.
"""
from __future__ import annotations

import base64
import email
import email.policy
import re
import subprocess
from dataclasses import replace
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from conftest import at
from sqlalchemy import select

from service.audience.signups import ConsentMeta, parse_signup, signup
from service.cli import main
from service.compose import as_sent
from service.core.config import ConfigError, Settings
from service.core.dkim_keys import load_key
from service.core.models import MessageContent
from service.runtime import build_runtime

T0 = at("2026-03-02T15:00:00")
DOMAIN = "backpainwarriors.example"


def genkey(path: Path, algorithm: str) -> str:
    """Write a private key with openssl; return the DKIM TXT record of its public half (openssl's view)."""
    opts = ["-pkeyopt", "rsa_keygen_bits:2048"] if algorithm == "rsa" else []
    subprocess.run(["openssl", "genpkey", "-algorithm", "RSA" if algorithm == "rsa" else "ed25519", *opts,
                    "-out", str(path)], check=True, capture_output=True)
    der = subprocess.run(["openssl", "pkey", "-in", str(path), "-pubout", "-outform", "DER"], check=True,
                         capture_output=True).stdout
    if algorithm == "rsa":
        return f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode()}"
    return f"v=DKIM1; k=ed25519; p={base64.b64encode(der[-32:]).decode()}"


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, str]]:
    d = tmp_path_factory.mktemp("dkim")
    return {alg: (d / f"{alg}.pem", genkey(d / f"{alg}.pem", alg)) for alg in ("rsa", "ed25519")}


def dns_of(records: dict[str, str]):
    def dnsfunc(name: bytes, timeout: float = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value is not None else None
    return dnsfunc


def send_to(rt, *addresses: str) -> list[bytes]:
    for address in addresses:
        data = parse_signup({"email": address, "name": "Ada Lovelace"}, campaigns=rt.campaigns,
                            default_campaign=rt.settings.default_campaign)
        with rt.sessions() as s, s.begin():
            signup(s, data, campaign=rt.campaigns[data.campaign], meta=ConsentMeta("json"), now=T0)
    assert rt.dispatcher().run_pass(T0).sent == len(addresses)
    return [raw for _f, _r, raw in rt.smtp.handler.accepted]


def signed_headers(raw: bytes) -> list[list[str]]:
    msg = email.message_from_bytes(raw, policy=email.policy.compat32)
    out = []
    for sig in msg.get_all("DKIM-Signature") or []:
        h = re.search(r"\bh=([^;]+)", re.sub(r"\s+", "", sig)).group(1)
        out.append([name.lower() for name in h.split(":")])
    return out


@pytest.fixture
def rt_for(settings, smtp, keys):
    built = []

    def make(**changes: object):
        rt = build_runtime(replace(settings, **changes))
        rt.smtp = smtp
        built.append(rt)
        return rt
    yield make
    for rt in built:
        rt.sessions.kw["bind"].dispose()


@pytest.mark.parametrize("algorithm", ["rsa", "ed25519"])
def test_every_sent_message_verifies_and_signs_both_list_headers(rt_for, keys, algorithm: str) -> None:
    """Each message the SMTP server received carries a signature that verifies against the published key,
    and h= covers the RFC 8058 pair plus the identity and MIME headers."""
    path, txt = keys[algorithm]
    rt = rt_for(dkim_domain=DOMAIN, dkim_selector="s1", dkim_key_file=str(path))
    received = send_to(rt, "ada@example.com", "bob@example.net")
    assert len(received) == 2
    dnsfunc = dns_of({f"s1._domainkey.{DOMAIN}": txt})
    for raw in received:
        assert dkim.verify(raw, dnsfunc=dnsfunc), "signature does not verify"
        [h] = signed_headers(raw)
        for name in ("list-unsubscribe", "list-unsubscribe-post", "from", "to", "subject", "date", "message-id",
                     "mime-version", "content-type", "list-id", "feedback-id"):
            assert name in h, f"{name} is outside h="
        assert f"a={algorithm}-sha256".encode() in raw.replace(b"\r\n ", b"").replace(b" ", b"")
    # the "as sent" copy (stored as a layout) reads back as the signed bytes the server received
    with rt.sessions() as s:
        stored = [as_sent.read(s, c.raw) for c in s.scalars(select(MessageContent))]
    assert sorted(r.replace(b"\r\n", b"\n") for r in stored) == sorted(r.replace(b"\r\n", b"\n") for r in received)


def test_a_tampered_message_fails_verification(rt_for, keys) -> None:
    """Changing a signed header or one byte of the body breaks the signature."""
    path, txt = keys["rsa"]
    rt = rt_for(dkim_domain=DOMAIN, dkim_selector="s1", dkim_key_file=str(path))
    [raw] = send_to(rt, "ada@example.com")
    dnsfunc = dns_of({f"s1._domainkey.{DOMAIN}": txt})
    assert dkim.verify(raw, dnsfunc=dnsfunc)
    unsub = re.search(rb"List-Unsubscribe: <https://[^>]+>", raw).group(0)
    assert not dkim.verify(raw.replace(unsub, unsub[:-2] + b"x>"), dnsfunc=dnsfunc)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert not dkim.verify(head + b"\r\n\r\n" + body.replace(b"psoas", b"ps0as", 1), dnsfunc=dnsfunc)
    # nor does a key of another type published under the selector
    other = dns_of({f"s1._domainkey.{DOMAIN}": keys["ed25519"][1]})
    with pytest.raises(ValueError, match="signature"):  # dkimpy rejects an RSA signature under an Ed25519 key
        dkim.verify(raw, dnsfunc=other)


def test_two_keys_during_rotation_both_verify(rt_for, keys) -> None:
    """With the second key configured every message carries two signatures, each valid under its selector."""
    rt = rt_for(dkim_domain=DOMAIN, dkim_selector="old", dkim_key_file=str(keys["rsa"][0]),
                dkim_selector_2="new", dkim_key_file_2=str(keys["ed25519"][0]))
    [raw] = send_to(rt, "ada@example.com")
    dnsfunc = dns_of({f"old._domainkey.{DOMAIN}": keys["rsa"][1], f"new._domainkey.{DOMAIN}": keys["ed25519"][1]})
    verifier = dkim.DKIM(raw)
    assert verifier.verify(idx=0, dnsfunc=dnsfunc) and verifier.verify(idx=1, dnsfunc=dnsfunc)
    assert all("list-unsubscribe-post" in h for h in signed_headers(raw))
    assert len(signed_headers(raw)) == 2


def test_dkimpy_raw_seed_format_is_accepted(tmp_path: Path, keys) -> None:
    """dkimpy's own Ed25519 key format (base64 seed) gives the same public key as the PEM of that seed."""
    der = base64.b64decode("".join(keys["ed25519"][0].read_text().splitlines()[1:-1]))
    seed_file = tmp_path / "seed.key"
    seed_file.write_text(base64.b64encode(der[-32:]).decode() + "\n")
    key = load_key(str(seed_file), domain=DOMAIN, selector="s", variable="DRIP_DKIM_KEY_FILE")
    assert key.txt_record() == keys["ed25519"][1]


@pytest.mark.parametrize(("content", "env", "message"), [
    ("not a key", {}, "DRIP_DKIM_KEY_FILE: "),
    (None, {}, "DRIP_DKIM_KEY_FILE: cannot read"),
    ("-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n", {}, "DRIP_DKIM_KEY_FILE: "),
    ("", {"DRIP_DKIM_DOMAIN": ""}, "DRIP_DKIM_DOMAIN: required"),
    ("", {"DRIP_DKIM_SELECTOR_2": "new"}, "DRIP_DKIM_KEY_FILE_2: must be set"),
])
def test_bad_dkim_configuration_stops_start_up_naming_the_variable(tmp_path: Path, keys, content, env,
                                                                   message: str) -> None:
    """A broken key or half a configuration is refused at start-up, never silently unsigned."""
    path = tmp_path / "key.pem"
    if content:
        path.write_text(content)
    elif content == "":
        path = keys["rsa"][0]
    base = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_DKIM_DOMAIN": DOMAIN, "DRIP_DKIM_SELECTOR": "s1",
            "DRIP_DKIM_KEY_FILE": str(path)}
    with pytest.raises(ConfigError, match=re.escape(message)):
        Settings.from_env({**base, **env})


def test_the_cli_refuses_to_start_with_a_bad_key(tmp_path: Path) -> None:
    """`drip tick` exits non-zero with the variable's name instead of sending unsigned mail."""
    bad = tmp_path / "bad.pem"
    bad.write_text("garbage")
    env = {"DRIP_SECRET_KEY": "k" * 32, "DRIP_DKIM_DOMAIN": DOMAIN, "DRIP_DKIM_SELECTOR": "s1",
           "DRIP_DKIM_KEY_FILE": str(bad), "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = CliRunner().invoke(main, ["tick"], env=env)
    assert result.exit_code != 0
    assert "DRIP_DKIM_KEY_FILE" in result.output
