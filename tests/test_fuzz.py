"""Property-based tests: the signup parser, the schedule arithmetic and the token codecs never
misbehave on any input, and neither the API (schemathesis: test_api_v1.py) nor POST /signup
answers 5xx to anything. Example counts are bounded so the file runs in well under a minute."""
from __future__ import annotations

import json
import string
import unicodedata
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from service.audience.signups import SignupError, clean_name, normalize_email, parse_signup
from service.campaigns.model import Delay
from service.campaigns.schedule import due_at
from service.compose.composer import ComposeJob, check_header_block, header_text
from service.core.db import utcnow
from service.core.tokens import BadToken, make_unsubscribe_token, read_unsubscribe_token
from service.operator.accounts import check_token, create_token

FAST = settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
SLOW = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
CAMPAIGN = "back-pain-bundle"

# Text that leans on what breaks parsers: controls, CR/LF, encoded words, bidi marks, quotes, at-signs.
nasty = st.text(st.sampled_from(list("\r\n\x00\t\x7f\x85\u2028\u202e\u200b\ud800@.\"<>=?_ ") + list("aZé宮"))
                | st.characters(), max_size=60)
json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | nasty,
                          lambda c: st.lists(c, max_size=3) | st.dictionaries(nasty, c, max_size=3), max_leaves=6)


def _has_control(text: str) -> bool:
    return any(unicodedata.category(ch) in ("Cc", "Cf", "Cs") or ch in "\u2028\u2029" for ch in text)


# -- the signup parser -----------------------------------------------------------------------------------
@FAST
@given(data=st.dictionaries(st.sampled_from(["email", "name", "campaign", "timezone", "x"]), json_value))
def test_parse_signup_raises_only_signup_error(runtime, data: dict) -> None:
    """Whatever the body holds, parse_signup returns clean values or raises SignupError, nothing else."""
    try:
        parsed = parse_signup(data, campaigns=runtime.campaigns, default_campaign=CAMPAIGN)
    except SignupError as exc:
        assert exc.code and exc.message
        return
    assert not _has_control(parsed.email + parsed.name)
    assert parsed.email_key == parsed.email.lower()
    assert parsed.campaign in runtime.campaigns


@FAST
@given(local=st.text(string.ascii_letters + string.digits + ".+_-", min_size=1, max_size=20),
       domain=st.sampled_from(["Example.COM", "exa mple.com", "bücher.example", "ＤＯＭＡＩＮ.com", "x.org"]),
       pad=st.sampled_from(["", " ", "\t", "\n"]))
def test_normalize_email_is_idempotent(local: str, domain: str, pad: str) -> None:
    """A normalised address normalises to itself, has no control characters and a lower-case key."""
    try:
        stored, key = normalize_email(pad + local + "@" + domain + pad)
    except SignupError:
        return
    assert normalize_email(stored) == (stored, key)
    assert key == stored.lower() and not _has_control(stored)


@FAST
@given(raw=nasty | st.text(max_size=300))
def test_clean_name_strips_controls_and_is_idempotent(raw: str) -> None:
    """clean_name leaves no control or format character, is idempotent, and refuses what is too long."""
    try:
        name = clean_name(raw)
    except SignupError as exc:
        assert exc.field == "name"
        return
    assert not _has_control(name) and len(name) <= 100
    assert clean_name(name) == name


@FAST
@given(raw=nasty)
def test_header_text_never_carries_a_newline_or_encoded_word(raw: str) -> None:
    """Text bound for a header is one line with no RFC 2047 encoded word (cpython#121650)."""
    out = header_text(raw)
    assert "\r" not in out and "\n" not in out and "=?" not in out
    assert header_text(out) == out


# -- header injection through every field, end to end -----------------------------------------------------
@SLOW
@given(name=nasty, tz=st.sampled_from(["", "Europe/Paris"]))
def test_no_field_can_inject_a_header(runtime, name: str, tz: str) -> None:
    """Any name (encoded newlines, trailing LF, NUL, bidi) composes to a message whose header block holds
    exactly the headers we set: one To, no Bcc, nothing after a blank line."""
    campaign = runtime.campaigns[CAMPAIGN]
    for step in campaign.steps[:2]:
        job = ComposeJob(message_pk=1, message_id="<1.x@example.org>", campaign=campaign, step=step,
                         to_email="reader@example.org", name=name,
                         unsubscribe_url="https://drip.example.org/unsubscribe/t", now=datetime.now(UTC))
        out = runtime.composer.compose(job)
        head = out.raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
        names = [line.split(":", 1)[0].lower() for line in head.split("\r\n") if line and line[0] not in " \t"]
        assert names.count("to") == 1 and "bcc" not in names and "cc" not in names
        check_header_block(out.raw, frozenset(n for n in names))


# -- schedule arithmetic ----------------------------------------------------------------------------------
moments = st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2060, 1, 1),
                       timezones=st.just(UTC))
delays = st.builds(Delay, days=st.integers(0, 400), seconds=st.integers(0, 86400 * 3)) | \
    st.builds(Delay, days=st.integers(1, 60))


@FAST
@given(delay=delays, after=moments, tz=st.timezone_keys(allow_prefix=False), hour=st.integers(0, 23))
def test_due_at_is_never_before_after(delay: Delay, after: datetime, tz: str, hour: int) -> None:
    """A step with a non-negative delay is never due before the previous send."""
    assume(tz not in ("Factory", "localtime"))
    result = due_at(delay=delay, after=after, tz_name=tz, send_hour=hour)
    assert result.tzinfo is not None and result >= after


@FAST
@given(days=st.integers(1, 60), after=moments, tz=st.timezone_keys(allow_prefix=False), hour=st.integers(0, 23))
def test_day_delays_land_on_the_send_hour(days: int, after: datetime, tz: str, hour: int) -> None:
    """A whole-day delay lands on the send hour in the reader's zone, except when that hour does not exist
    that day (a spring-forward gap), where it lands just after."""
    assume(tz not in ("Factory", "localtime"))
    zone = ZoneInfo(tz)
    result = due_at(delay=Delay(days=days), after=after, tz_name=tz, send_hour=hour).astimezone(zone)
    assert result.date() == after.astimezone(zone).date() + timedelta(days=days) or result.hour != hour
    wall = datetime.combine(result.date(), datetime.min.time()).replace(hour=hour, tzinfo=zone)
    exists = wall.astimezone(UTC).astimezone(zone).replace(tzinfo=None) == wall.replace(tzinfo=None)
    assert result.hour == hour if exists else result > wall.astimezone(UTC) - timedelta(hours=3)


@FAST
@given(delay=delays, a=moments, b=moments, tz=st.sampled_from(["UTC", "America/New_York", "Europe/Paris",
                                                                "Australia/Lord_Howe", "Asia/Kathmandu"]))
def test_due_at_is_monotonic_in_after(delay: Delay, a: datetime, b: datetime, tz: str) -> None:
    """A later previous send never makes the next step due earlier."""
    lo, hi = min(a, b), max(a, b)
    assert due_at(delay=delay, after=lo, tz_name=tz, send_hour=9) <= due_at(delay=delay, after=hi, tz_name=tz,
                                                                          send_hour=9)


# -- token codecs -----------------------------------------------------------------------------------------
ids = st.text(string.ascii_letters + string.digits + "-_", min_size=1, max_size=30)


@FAST
@given(public_id=ids, campaign=ids, pos=st.integers(0, 10_000), ch=st.sampled_from(string.ascii_letters + "-_."))
def test_unsubscribe_token_round_trip_and_mutation(public_id: str, campaign: str, pos: int, ch: str) -> None:
    """A token reads back to exactly what was signed; any changed character is refused (or, where base64's
    spare bits make two spellings of the same bytes, reads back to the very same claim: nobody else's);
    a token from another key is refused."""
    token = make_unsubscribe_token("k" * 32, public_id=public_id, campaign=campaign)
    claim = read_unsubscribe_token("k" * 32, token, max_age_days=400)
    assert (claim.public_id, claim.campaign) == (public_id, campaign)
    i = pos % len(token)
    assume(token[i] != ch)
    mutated = token[:i] + ch + token[i + 1:]
    try:
        again = read_unsubscribe_token("k" * 32, mutated, max_age_days=400)
    except BadToken:
        pass
    else:
        assert (again.public_id, again.campaign) == (public_id, campaign)
    with pytest.raises(BadToken):
        read_unsubscribe_token("other" * 8, token, max_age_days=400)


def test_api_tokens_refuse_every_mutation(runtime) -> None:
    """An API token is found by its SHA-256; the token with any one character changed finds nothing."""
    with runtime.sessions() as s, s.begin():
        token = create_token(s, "fuzz", now=utcnow())
    with runtime.sessions() as s:
        assert check_token(s, token, now=utcnow()) is not None
        for i in range(len(token)):
            mutated = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1:]
            assert check_token(s, mutated, now=utcnow()) is None
        assert check_token(s, token + "x", now=utcnow()) is None
        assert check_token(s, "", now=utcnow()) is None


@SLOW
@given(body=st.dictionaries(st.sampled_from(["email", "name", "campaign", "timezone", "website", "source_url"]),
                            json_value, max_size=5),
       as_form=st.booleans(), path=st.sampled_from(["/signup", "/signup/back-pain-bundle", "/signup/nope"]))
def test_signup_never_answers_5xx(client, body: dict, as_form: bool, path: str) -> None:
    """POST /signup with any JSON body or form fields answers 2xx/3xx/4xx, never 5xx."""
    if as_form:
        form = {k: (v if isinstance(v, str) else json.dumps(v)) for k, v in body.items()}
        form = {k: v.encode("utf-8", "surrogatepass").decode("utf-8", "replace") for k, v in form.items()}
        r = client.post(path, data=form)
    else:
        raw = json.dumps(body).encode("utf-8", "surrogatepass")
        r = client.post(path, data=raw, content_type="application/json")
    assert r.status_code < 500, (body, r.get_data(as_text=True)[:300])


def test_nul_bytes_found_by_fuzzing_are_refused_cleanly(app, client, runtime) -> None:
    """Regression for what schemathesis found on PostgreSQL: a NUL in an API filter or in a signup's
    source_url answered 500 (PostgreSQL refuses NUL in text); now the filter ignores it and the consent
    keeps the URL without it."""
    with runtime.sessions() as s, s.begin():
        token = create_token(s, "nul", now=utcnow())
    auth = {"Authorization": f"Bearer {token}"}
    for query in ("campaign=%00", "email=a%00b", "step=%00", "status=%00", "before=99999999999999999999"):
        assert client.get(f"/api/v1/messages?{query}", headers=auth).status_code < 500, query
    r = client.post("/signup", data=json.dumps({"email": "nul@example.org", "source_url": "https://a\x00b",
                                                "name": "Lo\ud800ne"}), content_type="application/json")
    assert r.status_code == 201  # a lone surrogate in the name (found by hypothesis) is dropped, not a 500
    from sqlalchemy import select

    from service.core.models import Consent
    with runtime.sessions() as s:
        assert s.scalar(select(Consent.source_url)) == "https://ab"
