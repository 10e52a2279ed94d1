"""The fast paths taken for speed give exactly what the slow paths they skip give."""
from __future__ import annotations

import pytest
from itsdangerous import URLSafeTimedSerializer

from service.core.addresses import _ascii_address, ascii_address
from service.core.tokens import UNSUBSCRIBE_SALT, make_unsubscribe_token, read_unsubscribe_token


@pytest.mark.parametrize("address", [
    "reader@example.com", "Reader.Name+tag@example.co.uk", "x@xn--bcher-kva.example", "a@localhost",
    "not-an-address", "a..b@example.com", "user@Example.COM", "user@bücher.example", "o'neil@example.org",
    "trailing@example.com.", "",
])
def test_ascii_fast_path_matches_email_validator(address: str) -> None:
    assert ascii_address(address) == _ascii_address.__wrapped__(address)


def test_tokens_with_the_key_derived_once_are_plain_itsdangerous_tokens() -> None:
    """Links already in inboxes keep working, and ours verify with the library's own serializer."""
    secret = "s" * 32
    plain = URLSafeTimedSerializer(secret, salt=UNSUBSCRIBE_SALT)
    ours = make_unsubscribe_token(secret, public_id="abc123", campaign="back-pain-bundle")
    assert plain.loads(ours) == ["abc123", "back-pain-bundle"]
    old = plain.dumps(["def456", "glute-guide"])
    assert read_unsubscribe_token(secret, old, max_age_days=400).public_id == "def456"
    with pytest.raises(ValueError, match="Signature"):  # another secret's token is still refused
        read_unsubscribe_token("t" * 32, ours, max_age_days=400)


@pytest.mark.parametrize("token", ["abc.DEF-_~123", "a b", "x/y?z", "é", ""])
def test_mailto_subject_fast_path_matches_quote(token: str) -> None:
    from urllib.parse import quote

    from service.compose.composer import _mailto_subject

    assert _mailto_subject(token) == quote("unsubscribe " + token)


@pytest.mark.parametrize("text", ["a\nb\n", "a\r\nb", "a\rb\n", "", "\r", "no newline"])
def test_crlf_fast_path_matches_the_full_normalisation(text: str) -> None:
    from service.compose.mime import crlf

    assert crlf(text) == text.replace("\r\n", "\n").replace("\r", "\n").replace("\n", "\r\n").encode()


@pytest.mark.parametrize("obj", [["abc123", "back-pain-bundle"], [42], ["Zoë", "ünïcode"], ["x" * 300, "y" * 300], [],
                                 [1234567], [12345678], ["aaaaaa"], ["aaaaaaa"], ["aaaaaaaaaaaa"],
                                 ["Hq3xT0b-YpWmZr8sK1uVdA", "back-pain-bundle"], ["Hq3xT0b-YpWmZr8sK1uVdA"]])
@pytest.mark.parametrize("salt", ["drip.unsubscribe.v1", "drip.view.v1"])
def test_our_token_writer_gives_itsdangerous_bytes(monkeypatch, obj: list, salt: str) -> None:
    """With the clock frozen, `_dumps` writes exactly the library's token wherever the library does not
    compress (every payload Drip makes: a random id, a campaign key, a row id), and the library reads
    every token it writes, the ones it would have compressed too."""
    import time

    from service.core.tokens import _dumps

    monkeypatch.setattr(time, "time", lambda: 1_790_000_000.25)
    secret = "s" * 40
    plain = URLSafeTimedSerializer(secret, salt=salt)
    ours, library = _dumps(secret, salt, obj), plain.dumps(obj)
    assert plain.loads(ours) == obj
    if library.startswith("."):  # the library compressed this one: ours is the same payload, not compressed
        assert ours.count(".") == 2 and len(ours) > len(library)
    else:
        assert ours == library


def test_a_compressed_token_made_before_still_reads() -> None:
    """Tokens in emails already sent may be compressed (Drip used the library's own choice before)."""
    from service.core.tokens import UNSUBSCRIBE_SALT, read_unsubscribe_token

    secret = "s" * 40
    token = URLSafeTimedSerializer(secret, salt=UNSUBSCRIBE_SALT).dumps(["a" * 40, "b" * 40])
    assert token.startswith(".")
    claim = read_unsubscribe_token(secret, token, max_age_days=400)
    assert (claim.public_id, claim.campaign) == ("a" * 40, "b" * 40)


def _validator_answer(address: str) -> str | None:
    from email_validator import EmailNotValidError, validate_email

    try:
        return validate_email(address, check_deliverability=False, allow_smtputf8=False).normalized
    except EmailNotValidError:
        return None


@pytest.mark.parametrize("address", [
    "reader@example.com", "Reader.Name+tag@Example.CO.uk", "o'neil@example.org", "x@xn--bcher-kva.example",
    "a@localhost", "a@foo.local", "a@onion", "a@x.onion", "POSTMASTER@example.com", "Info@example.com",
    "a..b@example.com", ".a@example.com", "a.@example.com", "a@-x.com", "a@x-.com", "a@x.c0m", "a@x.123",
    "a@a--b.com", "a@example.com.", "a" * 64 + "@example.com", "a" * 65 + "@example.com",
    "a@" + "b" * 63 + ".com", "a@" + "b" * 64 + ".com", "a@" + ("b" * 60 + ".") * 4 + "com",
    "x@" + "y." * 124 + "com", "a@b.c", "\"q\"@example.com", "user@bücher.example",
])
def test_plain_address_fast_path_matches_email_validator(address: str) -> None:
    """The signup's fast path accepts only addresses validate_email accepts, and normalizes them alike."""
    from service.audience.signups import plain_address

    fast = plain_address(address)
    assert fast is None or fast == _validator_answer(address)


def generated_addresses():
    """Addresses near the edges of a plain one: odd characters, empty and over-long parts and labels, "--",
    special-use and one-letter top-level domains."""
    from hypothesis import strategies as st

    atom = st.text(alphabet="aZ09.-_+!'`{|}~@" + "é", min_size=0, max_size=70)
    label = st.text(alphabet="abcXYZ019-", min_size=0, max_size=66)
    tld = st.sampled_from(["com", "ORG", "c", "x1", "test", "local", "arpa", "io", "localhost", "onion"])
    return st.builds(lambda local, labels, top: local + "@" + ".".join([*labels, top]),
                     atom, st.lists(label, min_size=0, max_size=5), tld)


def test_plain_address_fast_path_on_generated_addresses() -> None:
    from hypothesis import given, settings

    from service.audience.signups import plain_address

    @settings(max_examples=3000, deadline=None)
    @given(generated_addresses())
    def check(address: str) -> None:
        fast = plain_address(address)
        assert fast is None or fast == _validator_answer(address), address

    check()
    assert plain_address("Reader.Name@Example.COM") == "Reader.Name@example.com"  # the common case is fast


def test_campaign_from_fast_path_accepts_only_what_email_validator_accepts() -> None:
    """The campaign loader's check of From and Reply-To skips email_validator for plain addresses; each one it
    accepts, validate_email (as the loader calls it) accepts too, and its special-use list is the library's."""
    from email_validator import SPECIAL_USE_DOMAIN_NAMES, EmailNotValidError, validate_email
    from hypothesis import given, settings

    from service.campaigns.loader import SPECIAL_USE_DOMAINS, plain_from

    assert set(SPECIAL_USE_DOMAINS) == set(SPECIAL_USE_DOMAIN_NAMES) - {"test"}

    @settings(max_examples=2000, deadline=None)
    @given(generated_addresses())
    def check(address: str) -> None:
        if plain_from(address):
            try:
                validate_email(address, check_deliverability=False, test_environment=True)
            except EmailNotValidError as exc:
                raise AssertionError(f"{address}: {exc}") from None

    check()
    assert plain_from("coach@backpainwarriors.example") and plain_from("Coach.Name+news@Mail.Example.ORG")
    assert not plain_from("coach@localhost") and not plain_from("coach@") and not plain_from("co ach@x.org")


def test_sqlite_driver_time_is_sqlalchemys_text_form() -> None:
    """Datetimes for SQLite's hand-written statements are written as SQLAlchemy writes them, so
    stored values sort and compare as text with the rest."""
    from datetime import UTC, datetime, timedelta, timezone

    from sqlalchemy.dialects import sqlite

    from service.core.db import driver_time

    process = sqlite.DATETIME().bind_processor(sqlite.dialect())
    for value in (datetime(2026, 3, 3, 15, 0, tzinfo=UTC), datetime(2026, 3, 3, 15, 0, 0, 7, tzinfo=UTC),
                  datetime(2031, 12, 31, 23, 59, 59, 999999, tzinfo=timezone(timedelta(hours=-5)))):
        assert driver_time("sqlite", value) == process(value.astimezone(UTC).replace(tzinfo=None))


def test_driver_transaction_commits_or_rolls_back_and_returns_its_connection(database_url: str) -> None:
    """The signup's transaction straight on a pooled driver connection commits what its block
    wrote, writes nothing when the block raises, and leaves no lock held nor connection checked out."""
    from sqlalchemy import text

    from service.core import db
    from service.core.db import DriverSQL, driver_transaction, make_engine

    engine = make_engine(database_url, pool_size=1)
    insert = DriverSQL("INSERT INTO suppressions (email_hash, reason, created_at) VALUES (:h, 'complaint', :at)")
    at = "2026-11-24 10:00:00.000000" if database_url.startswith("sqlite") else "2026-11-24T10:00:00+00:00"
    with driver_transaction(engine) as conn:
        insert.first(conn, {"h": "kept", "at": at})
    with pytest.raises(RuntimeError), driver_transaction(engine) as conn:
        insert.first(conn, {"h": "dropped", "at": at})
        raise RuntimeError("the block failed")
    assert engine.pool.checkedout() == 0
    assert not db._lock_holders  # SQLite: the writer lock was dropped after the commit and the rollback
    with engine.begin() as conn:
        hashes = set(conn.execute(text("SELECT email_hash FROM suppressions")).scalars())
    assert hashes == {"kept"}
    engine.dispose()


def test_driver_transaction_raises_the_blocks_error_when_even_the_rollback_fails(database_url: str) -> None:
    """A connection lost inside the block (here closed under it): the rollback fails too, and what is
    raised is still the block's own error; the dead connection is dropped from the pool, not reused."""
    from service.core.db import driver_transaction, make_engine

    engine = make_engine(database_url, pool_size=1)
    with pytest.raises(RuntimeError, match="the block failed"), driver_transaction(engine) as conn:
        conn.connection.driver_connection.close()
        raise RuntimeError("the block failed")
    assert engine.pool.checkedout() == 0
    with driver_transaction(engine) as conn:  # a fresh connection
        assert conn.connection.driver_connection.execute("SELECT 1").fetchone()[0] == 1
    engine.dispose()


def test_ascii_names_are_cleaned_as_the_full_path_cleans_them() -> None:
    """An ASCII name skips NFC and the per-character category check; the result is the same."""
    import unicodedata

    from hypothesis import given, settings
    from hypothesis import strategies as st

    from service.audience.signups import _CONTROL, clean_name

    def full(raw: str) -> str:
        text = _CONTROL.sub(" ", unicodedata.normalize("NFC", raw))
        return " ".join("".join(ch for ch in text if unicodedata.category(ch) not in ("Cf", "Cs")).split())

    @settings(max_examples=2000, deadline=None)
    @given(st.text(alphabet=st.characters(max_codepoint=127), max_size=100))
    def check(raw: str) -> None:
        assert clean_name(raw) == full(raw)

    check()
    assert clean_name(" Bench\tReader\x00 ") == "Bench Reader"
    assert clean_name("Zoe\u0301 \u202eRTL") == "Zoé RTL"  # not ASCII: the full path
