"""Campaigns are data: `email_templates/<key>/campaign.toml` plus its Jinja2 templates. This module loads
and checks the files and says, with file and line, what is wrong in them."""
from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import replace
from email.headerregistry import Address
from email.utils import parseaddr
from pathlib import Path

from service.campaigns.model import ALL_DAYS, DAY_NAMES, KEY_RE, Campaign, CampaignError, Delay, Step
from service.campaigns.schedule import valid_timezone


def load_campaigns(templates_dir: Path) -> dict[str, Campaign]:
    """Every `<dir>/<key>/campaign.toml`, checked. Raises CampaignError naming the file."""
    campaigns: dict[str, Campaign] = {}
    for path in sorted(templates_dir.glob("*/campaign.toml")):
        campaign = load_campaign(path)
        campaigns[campaign.key] = campaign
    if not campaigns:
        raise CampaignError(f"no campaign files found under {templates_dir}/<campaign>/campaign.toml")
    check_set(campaigns)
    return campaigns


def check_set(campaigns: Mapping[str, Campaign]) -> None:
    """What one campaign may say about the others: its digest, continuation and invitation name real ones."""
    for campaign in campaigns.values():
        if campaign.digest and (campaign.digest not in campaigns or campaign.digest == campaign.key):
            raise CampaignError(f"{campaign.where}: digest {campaign.digest!r} is not another campaign")
        check_continuation(campaign, campaigns)
        check_invitation(campaign, campaigns)


def check_invitation(campaign: Campaign, campaigns: Mapping[str, Campaign]) -> None:
    """`invite_to` names another loaded campaign, `invite_at` one of its steps, and `invite_wording` says
    what the reader is asked (their consent is those words)."""
    source = campaign.read("campaign.toml") or ""
    n = toml_line(source, "invite_to")
    where = f"{campaign.where}:{n}" if n else campaign.where
    if not campaign.invite_to:
        if campaign.invite_at or campaign.invite_wording:
            raise CampaignError(f"{where}: 'invite_at' and 'invite_wording' need 'invite_to'")
        return
    target = campaigns.get(campaign.invite_to)
    if target is None or target.key == campaign.key:
        raise CampaignError(f"{where}: invite_to {campaign.invite_to!r} is not another campaign")
    if campaign.continue_into:
        raise CampaignError(f"{where}: a campaign either continues into another or invites to it, not both")
    if target.step_by_key(campaign.invite_at or target.steps[0].key) is None:
        raise CampaignError(f"{where}: invite_at {campaign.invite_at!r} is not a step of {target.key!r}")
    if not campaign.invite_wording:
        raise CampaignError(f"{where}: 'invite_to' needs 'invite_wording', the question the reader says yes to")


def check_continuation(campaign: Campaign, campaigns: Mapping[str, Campaign]) -> None:
    """`continue_into` names another loaded campaign and `continue_at` one of its step keys."""
    source = campaign.read("campaign.toml") or ""
    target_ok = campaign.continue_into in campaigns and campaign.continue_into != campaign.key
    n = toml_line(source, "continue_at" if not campaign.continue_into or target_ok else "continue_into")
    where = f"{campaign.where}:{n}" if n else campaign.where
    if not campaign.continue_into:
        if campaign.continue_at:
            raise CampaignError(f"{where}: 'continue_at' needs 'continue_into'")
        return
    target = campaigns.get(campaign.continue_into)
    if target is None or target.key == campaign.key:
        raise CampaignError(f"{where}: continue_into {campaign.continue_into!r} is not another campaign "
                            f"(have: {', '.join(sorted(k for k in campaigns if k != campaign.key))})")
    at = campaign.continue_at or target.steps[0].key
    if target.step_by_key(at) is None:
        raise CampaignError(f"{where}: continue_at {at!r} is not a step of {target.key!r} "
                            f"(steps: {', '.join(s.key for s in target.steps)})")


def parse_days(value: object, where: str) -> frozenset[int]:
    """`send_days = ["mon", "wed"]` -> weekday numbers; an empty or unknown list is an error."""
    if not isinstance(value, list) or not value or not all(isinstance(d, str) for d in value):
        raise CampaignError(f"{where}: send_days must be a non-empty list such as [\"mon\", \"thu\"]")
    days = [d.strip().lower() for d in value]
    unknown = [d for d in days if d not in DAY_NAMES]
    if unknown:
        raise CampaignError(f"{where}: send_days: unknown day {unknown[0]!r} (use {', '.join(DAY_NAMES)})")
    return frozenset(DAY_NAMES.index(d) for d in days)


def parse_hour(value: object, where: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 23:
        raise CampaignError(f"{where}: send_hour must be an integer 0-23, got {value!r}")
    return value


def load_campaign(path: Path) -> Campaign:
    """One campaign folder: `<key>/campaign.toml` and its templates."""
    directory = path.parent
    return parse_campaign(directory.name, path.read_text(encoding="utf-8"), where=str(path),
                          has_file=lambda name: (directory / name).is_file(), directory=directory)


def campaign_from_files(key: str, files: Mapping[str, str], *, version: int) -> Campaign:
    """One campaign from its files held in memory (a version stored in the database, or a draft):
    {"campaign.toml": ..., "week-01.md": ...}. The same checks as a folder on disk."""
    source = files.get("campaign.toml")
    where = f"{key} version {version}" if version > 0 else f"{key} (draft)"
    if source is None:
        raise CampaignError(f"{where}: no campaign.toml")
    campaign = parse_campaign(key, source, where=where, has_file=files.__contains__, directory=Path(key))
    return replace(campaign, version=version, files=dict(files))


def parse_campaign(key: str, source: str, *, where: str, has_file: Callable[[str], bool],
                   directory: Path) -> Campaign:
    """A campaign from its campaign.toml text; `has_file` says which template files exist."""
    try:
        data = tomllib.loads(source)
    except tomllib.TOMLDecodeError as exc:
        raise CampaignError(f"{where}: {exc}") from None
    if not KEY_RE.match(key):
        raise CampaignError(f"{where}: folder name {key!r} is not a valid campaign key (a-z, 0-9, -)")

    def text(name: str, table: dict = data, required: bool = True) -> str:
        value = table.get(name, "")
        if not isinstance(value, str) or (required and not value.strip()):
            raise CampaignError(f"{where}: {name!r} must be a non-empty string")
        return value.strip()

    from_address = text("from")
    _check_from(from_address, where)
    tz = text("timezone")
    def top(field: str) -> str:  # "file:line" of a top-level key, for error messages
        n = toml_line(source, field)
        return f"{where}:{n}" if n else where

    if not valid_timezone(tz):
        raise CampaignError(f"{top('timezone')}: timezone {tz!r} is not an IANA time zone")
    send_hour = parse_hour(data.get("send_hour", 9), top("send_hour"))
    send_days = parse_days(data["send_days"], top("send_days")) if "send_days" in data else ALL_DAYS
    resources = data.get("resources", {})
    if not isinstance(resources, dict) or not all(
        isinstance(v, str) and v.startswith(("https://", "http://")) for v in resources.values()
    ):
        raise CampaignError(f"{where}: [resources] must map names to http(s) URLs")
    thank_you = data.get("thank_you", {})
    reply_to = text("reply_to", required=False)
    if reply_to:
        _check_from(reply_to, where, "reply_to")
    return Campaign(
        key=key,
        title=text("title"),
        from_address=from_address,
        timezone=tz,
        send_hour=send_hour,
        consent=text("consent"),
        why=text("why"),
        thank_you_title=text("title", thank_you, required=False) or "Thank you!",
        thank_you_body=text("body", thank_you, required=False) or "Please check your inbox.",
        steps=_load_steps(data.get("steps"), where, has_file, source, directory),
        resources=dict(resources),
        directory=directory,
        reply_to=reply_to,
        digest=text("digest", required=False),
        utm=_load_utm(data.get("utm", {}), where),
        continue_into=text("continue_into", required=False),
        continue_at=text("continue_at", required=False),
        send_days=send_days,
        double_opt_in=_flag(data, "double_opt_in", where),
        confirm_subject=text("confirm_subject", required=False) or "Please confirm your email address",
        invite_to=text("invite_to", required=False),
        invite_at=text("invite_at", required=False),
        invite_wording=text("invite_wording", required=False),
    )


UTM_KEYS = ("source", "medium", "campaign")
TEMPLATE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,62}$")  # a file in the campaign's own folder, no path


def _load_utm(raw: object, where: str) -> dict[str, str]:
    """`utm = {source = "...", medium = "...", campaign = "..."}`: all three, short plain values."""
    if raw == {}:
        return {}
    if not (isinstance(raw, dict) and set(raw) == set(UTM_KEYS) and all(
            isinstance(v, str) and re.fullmatch(r"[A-Za-z0-9._~-]{1,64}", v) for v in raw.values())):
        raise CampaignError(f"{where}: utm must be {{source=..., medium=..., campaign=...}} with values of "
                            "letters, digits, '.', '_', '~' or '-'")
    return {k: raw[k] for k in UTM_KEYS}




def _flag(data: dict, name: str, where: str) -> bool:
    value = data.get(name, False)
    if not isinstance(value, bool):
        raise CampaignError(f"{where}: {name!r} must be true or false, got {value!r}")
    return value


def toml_line(text: str, field: str, step: int | None = None) -> int | None:
    """1-based line of `field = ...` at the top level (step None) or in the step-th [[steps]] table
    (0-based); the table's own header line when the field is not written there. For error messages."""
    lines = text.splitlines()
    tables = [n for n, line in enumerate(lines) if line.strip().startswith("[")]
    if step is None:
        start, end = 0, tables[0] if tables else len(lines)
    else:
        heads = [n for n in tables if lines[n].strip() == "[[steps]]"]
        if step >= len(heads):
            return None
        start = heads[step]
        end = next((n for n in tables if n > start), len(lines))
    pattern = re.compile(rf"^\s*{re.escape(field)}\s*=")
    found = next((n for n in range(start, end) if pattern.match(lines[n])), None)
    return found + 1 if found is not None else (start + 1 if step is not None else None)


def _load_steps(raw: object, where: str, has_file: Callable[[str], bool], text: str,
                directory: Path) -> tuple[Step, ...]:
    if not isinstance(raw, list) or not raw:
        raise CampaignError(f"{where}: at least one [[steps]] entry is required")
    steps: list[Step] = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        def line(field: str, i: int = i) -> str:  # "file:line" for each error
            n = toml_line(text, field, i)
            return f"{where}:{n}" if n else where

        if not isinstance(entry, dict):
            raise CampaignError(f"{where}: step {i + 1} must be a table")
        key = entry.get("key")
        if not isinstance(key, str) or not KEY_RE.match(key):
            raise CampaignError(f"{line('key')}: step {i + 1} needs a key of a-z, 0-9 and -")
        if key in seen:
            raise CampaignError(f"{line('key')}: duplicate step key {key!r}")
        seen.add(key)
        try:
            delay = Delay.parse(entry.get("delay", "7d"))
        except ValueError as exc:
            raise CampaignError(f"{line('delay')}: step {key!r}: {exc}") from None
        template = entry.get("template", key)
        if not isinstance(template, str) or not TEMPLATE_RE.match(template):
            raise CampaignError(f"{line('template')}: step {key!r}: template must be a file name (letters, digits, "
                                "'-' and '_', without extension)")
        # A Markdown body (<template>.md) makes both parts; else the hand-written pair .html + .txt.
        if not has_file(f"{template}.md"):
            for ext in ("html", "txt"):
                if not has_file(f"{template}.{ext}"):
                    raise CampaignError(f"{line('template')}: step {key!r}: missing template "
                                        f"{directory / f'{template}.{ext}'} (or {template}.md)")
        subject = entry.get("subject")
        if not isinstance(subject, str) or not subject.strip() or "\n" in subject or "\r" in subject:
            raise CampaignError(f"{line('subject')}: step {key!r} needs a one-line subject")
        at = f"{line('send_days' if 'send_days' in entry else 'send_hour')}: step {key!r}"
        steps.append(Step(key=key, index=i, delay=delay, subject=subject.strip(), template=template,
                          preheader=str(entry.get("preheader", "")).strip(),
                          send_hour=parse_hour(entry["send_hour"], at) if "send_hour" in entry else None,
                          send_days=parse_days(entry["send_days"], at) if "send_days" in entry else None))
    return tuple(steps)


# Every start parses the campaigns (folders and published versions), so their From and Reply-To lines are
# checked each time. Importing email_validator compiles its patterns: ~70 ms of a `drip tick` with nothing
# due. A plain ASCII address at an ordinary domain is accepted by this pattern instead, which accepts only
# what validate_email accepts (no quoting, no IDN or "--" labels, a letters-only top-level domain, not one of
# its special-use domains, within its lengths); anything else goes to validate_email.
# tests/test_fast_paths.py compares both on generated addresses and the special-use list with the library's.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_FROM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*@((?:[A-Za-z0-9](?:[A-Za-z0-9-]{{0,61}}[A-Za-z0-9])?\.)+"
                         r"[A-Za-z]{2,63})")
SPECIAL_USE_DOMAINS = ("arpa", "invalid", "local", "localhost", "onion")  # "test": allowed in campaign files


def plain_from(addr: str) -> bool:
    """True when `addr` is a plain address validate_email (test_environment=True) accepts as it is."""
    match = _PLAIN_FROM.fullmatch(addr)
    if match is None or len(addr) > 254 or len(addr.partition("@")[0]) > 64:
        return False
    domain = match.group(1).lower()
    return len(domain) <= 253 and "--" not in domain and not any(
        domain == d or domain.endswith("." + d) for d in SPECIAL_USE_DOMAINS)


def _check_from(value: str, where: str, key: str = "from") -> None:
    name, addr = parseaddr(value)
    try:
        if not plain_from(addr):
            from email_validator import EmailNotValidError, validate_email

            try:
                validate_email(addr, check_deliverability=False, test_environment=True)
            except EmailNotValidError as exc:
                raise ValueError(str(exc)) from None
        Address(display_name=name, addr_spec=addr)
    except (ValueError, IndexError) as exc:
        raise CampaignError(f"{where}: {key!r} {value!r} is not a valid address: {exc}") from None
