"""Every kind of email Drip sends carries DKIM signatures (RSA-2048 and Ed25519 at once, as during a key
rotation) that dkimpy, an independent implementation, verifies: each step of every campaign (welcome,
weekly, the monthly digest), the double opt-in confirmation, `drip send-test`, readers with non-ASCII or
long names, non-ASCII subjects, lines too long for 7bit, and bodies in both transfer encodings.

Keys come from `openssl genpkey` and the DNS records the verifier reads from `openssl pkey -pubout`
(tests/test_dkim.py), so neither the key loading nor the signer checks itself.
"""
from __future__ import annotations

import email
import email.policy
import re
import shutil
from datetime import UTC, datetime
from pathlib import Path

import dkim
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from test_dkim import dns_of, genkey

from service.campaigns.loader import load_campaigns
from service.cli import main
from service.compose import dkim as signer
from service.compose.composer import ComposeJob, Composer, compose_confirmation
from service.core.config import PROJECT_ROOT
from service.core.dkim_keys import load_key

DOMAIN = "backpainwarriors.example"
NOW = datetime(2026, 3, 3, 14, 0, tzinfo=UTC)
NAMES = ("Ada Lovelace", "Zoë Ångström-Łukasiewicz", "山田 太郎", "", "Bartholomew " + "Fitzgerald-" * 25 + "Smith",
         "=?utf-8?q?sneaky?= Name")


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory):
    d = tmp_path_factory.mktemp("keys")
    records = {}
    keys = []
    for alg, selector in (("rsa", "s2026"), ("ed25519", "ed2026")):
        path = d / f"{alg}.pem"
        records[f"{selector}._domainkey.{DOMAIN}"] = genkey(path, alg)
        keys.append(load_key(str(path), domain=DOMAIN, selector=selector, variable="DRIP_DKIM_KEY_FILE"))
    return tuple(keys), dns_of(records), {"paths": [d / "rsa.pem", d / "ed25519.pem"]}


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real templates plus one step whose text has a 1,500-character line and non-ASCII text, so its
    parts must go out quoted-printable; the real templates' short ASCII parts go out 7bit."""
    dest = tmp_path_factory.mktemp("templates")
    shutil.copytree(PROJECT_ROOT / "email_templates", dest, dirs_exist_ok=True)
    camp = dest / "glute-guide"
    long_line = " ".join(["stretch"] * 215)  # ~1,500 characters on one line
    (camp / "long.txt").write_text('{% extends "_base/email.txt" %}{% block content %}'
                                   f"{long_line}\nÇa va? 背中 ✓ — tabs\there,  two spaces, trailing   \n"
                                   "{% endblock %}", encoding="utf-8")
    (camp / "long.html").write_text('{% extends "_base/email.html" %}{% block content %}'
                                    f"<p>{long_line}</p><p>Ça va? 背中 ✓</p>{{% endblock %}}", encoding="utf-8")
    toml = camp / "campaign.toml"
    toml.write_text(toml.read_text(encoding="utf-8") + '\n[[steps]]\nkey = "long"\ndelay = "7d"\n'
                    'subject = "Ça marche, {{ subscriber.first_name }} — 腰痛 🙂"\ntemplate = "long"\n',
                    encoding="utf-8")
    return dest


def verify_all(raw: bytes, dnsfunc, count: int = 2) -> list[list[str]]:
    """Each DKIM-Signature of `raw` verifies; returns each one's h= names."""
    verifier = dkim.DKIM(raw)
    names = []
    for idx in range(count):
        assert verifier.verify(idx=idx, dnsfunc=dnsfunc), f"signature {idx} does not verify"
        h = re.sub(rb"\s+", b"", verifier.signature_fields[b"h"]).decode().split(":")
        names.append(h)
    assert raw.count(b"DKIM-Signature:") == count
    return names


def composer_for(templates: Path, keys) -> Composer:
    return Composer(templates_dir=templates, base_url="https://drip.example.org", postal_address="12 Test Street",
                    dkim_keys=keys, secret_key="s" * 32)


def test_every_step_of_every_campaign_verifies_for_every_kind_of_reader(templates: Path, keypair) -> None:
    """Welcome, weekly and monthly-digest steps, for readers with ASCII, accented, CJK, empty and very long
    names, each verify under both keys; h= names both List-Unsubscribe headers and From twice."""
    keys, dnsfunc, _ = keypair
    composer = composer_for(templates, keys)
    encodings: set[bytes] = set()
    checked = 0
    for campaign in load_campaigns(templates).values():
        for step in campaign.steps:
            for n, name in enumerate(NAMES):
                item = composer.compose(ComposeJob(
                    message_pk=1000 + checked, message_id=f"<m{checked}@{DOMAIN}>", campaign=campaign, step=step,
                    to_email=f"reader{n}@exämple.org" if n == 1 else f"reader{n}@example.org", name=name,
                    unsubscribe_url=f"https://drip.example.org/unsubscribe/tok{checked}", now=NOW,
                    public_id=f"pub{n}"))
                for h in verify_all(item.raw, dnsfunc):
                    assert h.count("from") == 2 and "list-unsubscribe" in h and "list-unsubscribe-post" in h
                encodings.update(re.findall(rb"Content-Transfer-Encoding: ([\w-]+)", item.raw))
                checked += 1
    assert {b"7bit", b"quoted-printable"} <= encodings
    assert checked > 100
    # the long step: a non-ASCII subject, RFC 2047 encoded, signed as written
    long_step = load_campaigns(templates)["glute-guide"].step_by_key("long")
    item = composer.compose(ComposeJob(message_pk=1, message_id=f"<long@{DOMAIN}>",
                                       campaign=load_campaigns(templates)["glute-guide"], step=long_step,
                                       to_email="a@example.org", name="Zoë", unsubscribe_url="https://d.example/u/t",
                                       now=NOW))
    assert b"Subject: =?utf-8?" in item.raw and b"quoted-printable" in item.raw
    verify_all(item.raw, dnsfunc)


def test_confirmation_email_verifies(templates: Path, keypair) -> None:
    """The double opt-in confirmation (built by the email package, not the lean writer) verifies too."""
    keys, dnsfunc, _ = keypair
    composer = composer_for(templates, keys)
    campaign = load_campaigns(templates)["back-pain-bundle"]
    for name in NAMES:
        item = compose_confirmation(composer, campaign=campaign, to_email="new@example.org", name=name,
                                    confirm_url="https://drip.example.org/confirm/abc", now=NOW,
                                    unsubscribe_url="https://drip.example.org/unsubscribe/abc", pending_id=7,
                                    expiry_days=7)
        verify_all(item.raw, dnsfunc)


def test_send_test_email_verifies_as_received(runtime, smtp, keypair, tmp_path, monkeypatch) -> None:
    """`drip send-test` through the real SMTP server: the bytes the server received verify under both keys."""
    _keys, dnsfunc, extra = keypair
    monkeypatch.chdir(tmp_path)
    rsa_path, ed_path = extra["paths"]
    env = {"DATABASE_URL": runtime.settings.database_url, "DRIP_SECRET_KEY": runtime.settings.secret_key,
           "DRIP_EMAIL_URL": smtp.url, "DRIP_BASE_URL": "https://drip.example.org",
           "DRIP_POSTAL_ADDRESS": "1 Preview Street", "DRIP_DKIM_DOMAIN": DOMAIN,
           "DRIP_DKIM_SELECTOR": "s2026", "DRIP_DKIM_KEY_FILE": str(rsa_path),
           "DRIP_DKIM_SELECTOR_2": "ed2026", "DRIP_DKIM_KEY_FILE_2": str(ed_path)}
    result = CliRunner().invoke(main, ["send-test", "back-pain-bundle", "week-02", "--to", "me@example.org",
                                       "--name", "Zoë Ångström"], env=env)
    assert result.exit_code == 0, result.output
    [(_from, _rcpt, raw)] = smtp.handler.accepted
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg["X-Drip-Test"] == "1"
    verify_all(raw, dnsfunc)


@pytest.mark.parametrize("body", [
    b"plain line\r\n",
    b"tabs\tand  runs   of spaces \t\r\ntrailing blanks   \r\n\r\n\r\n",
    b"no final line end",
    b"",
    b"\r\n\r\n",
    b"bare\nline\nfeeds\n \n",
])
def test_relaxed_body_edge_cases_verify(keypair, body: bytes) -> None:
    """Bodies that leave the fast path (tabs, runs of spaces, trailing blanks and empty lines, no final CRLF,
    an empty body, bare LF line ends) are canonicalized as RFC 6376 says: dkimpy agrees."""
    keys, dnsfunc, _ = keypair
    head = (b"From: \"Coach\" <c@backpainwarriors.example>\r\nTo: r@example.org\r\nSubject:  folded\r\n\tsubject"
            b"   here \r\nDate: Tue, 03 Mar 2026 14:00:00 +0000\r\nMessage-ID: <x@y>\r\n")
    raw = head + b"\r\n" + body
    verify_all(signer.sign(raw, keys), dnsfunc)


def test_over_signing_refuses_an_added_from_or_reply_to(keypair) -> None:
    """A second From, or a Reply-To the message did not have, added after signing breaks the signature;
    so does a changed Subject. Without those changes it verifies."""
    keys, dnsfunc, _ = keypair
    raw = (b"From: Coach <c@backpainwarriors.example>\r\nTo: r@example.org\r\nSubject: hello\r\n"
           b"Date: Tue, 03 Mar 2026 14:00:00 +0000\r\nMessage-ID: <x@y>\r\n\r\nbody\r\n")
    signed = signer.sign(raw, keys)
    verify_all(signed, dnsfunc)
    for tampered in (signed.replace(b"\r\n\r\n", b"\r\nFrom: evil@example.net\r\n\r\n", 1),
                     signed.replace(b"\r\n\r\n", b"\r\nReply-To: evil@example.net\r\n\r\n", 1),
                     signed.replace(b"Subject: hello", b"Subject: hellO")):
        verifier = dkim.DKIM(tampered)
        assert not verifier.verify(idx=0, dnsfunc=dnsfunc) and not verifier.verify(idx=1, dnsfunc=dnsfunc)


def without_field(raw: bytes, index: int) -> bytes:
    """`raw` without its `index`-th DKIM-Signature field (continuation lines included)."""
    head, _, body = raw.partition(b"\r\n\r\n")
    fields: list[bytes] = []
    for line in head.split(b"\r\n"):
        if line[:1] in (b" ", b"\t"):
            fields[-1] += b"\r\n" + line
        else:
            fields.append(line)
    signatures = [i for i, f in enumerate(fields) if f.startswith(b"DKIM-Signature:")]
    del fields[signatures[index]]
    return b"\r\n".join(fields) + b"\r\n\r\n" + body


def test_each_signature_verifies_alone(templates: Path, keypair) -> None:
    """Each of the two signatures verifies without the other, so a receiver that knows only one selector
    (the old one, or the new one during a rotation) still finds a valid signature."""
    keys, dnsfunc, _ = keypair
    campaign = load_campaigns(templates)["back-pain-bundle"]
    job = ComposeJob(message_pk=5, message_id=f"<five@{DOMAIN}>", campaign=campaign, step=campaign.steps[0],
                     to_email="a@example.org", name="Ada", unsubscribe_url="https://d.example/u/t", now=NOW)
    item = composer_for(templates, keys).compose(job)
    for index in (0, 1):
        alone = without_field(item.raw, index)
        assert alone.count(b"DKIM-Signature:") == 1 and dkim.verify(alone, dnsfunc=dnsfunc)
    single = composer_for(templates, keys[:1]).compose(job)
    assert single.raw.count(b"DKIM-Signature:") == 1 and dkim.verify(single.raw, dnsfunc=dnsfunc)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.text(alphabet=" \tab=", max_size=12), max_size=8))
def test_relaxed_body_matches_dkimpy_on_any_lines(lines: list[str]) -> None:
    """The canonical body (with its C fast path for runs of spaces) equals dkimpy's for any CRLF-ended lines
    made of spaces, tabs and text."""
    from dkim.canonicalization import Relaxed

    body = b"".join(line.encode() + b"\r\n" for line in lines)
    assert signer.relaxed_body(body) == Relaxed.canonicalize_body(body)


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=" \tab:", max_size=20), st.lists(st.text(alphabet=" \tab", max_size=10), max_size=3))
def test_relaxed_header_matches_dkimpy(value: str, folds: list[str]) -> None:
    """Header canonicalization (folded lines, tabs, runs of spaces, blanks at either end) equals dkimpy's."""
    from dkim.canonicalization import Relaxed

    raw = value.encode() + b"".join(b"\r\n " + f.encode() for f in folds)
    [(name, canonical)] = Relaxed.canonicalize_headers([(b"Subject", raw)])
    assert signer.relaxed_header(b"Subject", raw) == name + b":" + canonical


_BODY_PIECES = [b"a", b" ", b"\t", b"  ", b"\r\n", b"x \r\n", b"\r", b"\n", b"<td>  x</td>\r\n", b"--", b"=_b",
                b"\t \r\n"]


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(_BODY_PIECES), st.booleans()), max_size=30))
def test_the_body_hashed_piece_by_piece_is_the_whole_body_hash(pieces: list) -> None:
    """The composer's path hashes the body from the MIME writer's pieces, keeping the canonical form of the
    pieces every email shares (`mime.Fixed`); for any pieces (runs of spaces and tabs inside, across and at
    the end of pieces, lines split over pieces, empty lines at the end, no final CRLF) the hash is that of
    the whole body canonicalized, twice in a row (the second time from the kept forms)."""
    import hashlib

    from service.compose.mime import Fixed

    body = [Fixed(data) if fixed else data for data, fixed in pieces]
    want = hashlib.sha256(signer.relaxed_body(b"".join(body))).digest()
    assert signer._body_digest(body) == want
    assert signer._body_digest(body) == want


def test_signing_from_the_writers_pieces_is_signing_the_whole_message(templates: Path, keypair) -> None:
    """The signatures the composer adds from the MIME writer's pieces (no bare-LF scan, shared lines
    canonicalized once) are byte for byte those of signing the finished message, for every step, a
    second reader of a step included (its shared lines then come canonicalized already); dkimpy verifies."""
    keys, dnsfunc, _ = keypair
    composer = composer_for(templates, keys)
    for campaign in load_campaigns(templates).values():
        for step in campaign.steps:
            for n, name in enumerate(("Ada  Lovelace", "Zoë\tÅngström", "Bob")):
                job = ComposeJob(message_pk=n, message_id=f"<p{n}@{DOMAIN}>", campaign=campaign, step=step,
                                 to_email=f"r{n}@example.org", name=name, now=NOW,
                                 unsubscribe_url=f"https://drip.example.org/unsubscribe/t{n}")
                item = composer.compose(job)
                unsigned = item.raw[item.raw.index(b"\r\nFrom: ") + 2:]  # the signatures come first
                stamp = re.search(rb"t=(\d+);", item.raw).group(1)
                assert item.raw == signer.sign(unsigned, keys, now=int(stamp))
                verify_all(item.raw, dnsfunc)
