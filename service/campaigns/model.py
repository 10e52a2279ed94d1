"""What a campaign is: its steps, their delays, send windows and texts (loaded by campaigns.loader from
`email_templates/<key>/campaign.toml`)."""
from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from email.utils import parseaddr
from pathlib import Path

DAY_NAMES = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
ALL_DAYS = frozenset(range(7))
KEY_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
DELAY_RE = re.compile(r"^\s*(\d+)\s*([wdhm]?)\s*$")


class CampaignError(ValueError):
    """A campaign file is invalid; the message names the file and the problem."""


@dataclass(frozen=True)
class Delay:
    """How long after the previous step's send a step is due.

    Whole days/weeks are calendar days in the reader's time zone, landing on the send hour; hours and
    minutes are exact durations (no send-hour snapping).
    """

    days: int = 0
    seconds: int = 0

    @classmethod
    def parse(cls, text: str) -> Delay:
        m = DELAY_RE.match(str(text))
        if not m:
            raise ValueError(f"bad delay {text!r}: use e.g. '0', '7d', '1w', '12h' or '30m'")
        n, unit = int(m.group(1)), m.group(2) or ("d" if int(m.group(1)) else "")
        if unit == "w":
            return cls(days=7 * n)
        if unit == "d":
            return cls(days=n)
        if unit == "h":
            return cls(seconds=3600 * n)
        if unit == "m":
            return cls(seconds=60 * n)
        return cls()

    @property
    def immediate(self) -> bool:
        return self.days == 0 and self.seconds == 0


@dataclass(frozen=True)
class Step:
    key: str
    index: int
    delay: Delay
    subject: str
    template: str
    preheader: str = ""
    # Send window overrides: None means "use the campaign's".
    send_hour: int | None = None
    send_days: frozenset[int] | None = None


@dataclass(frozen=True)
class Campaign:
    key: str
    title: str
    from_address: str
    timezone: str
    send_hour: int
    consent: str
    why: str
    thank_you_title: str
    thank_you_body: str
    steps: tuple[Step, ...]
    resources: dict[str, str] = field(default_factory=dict)
    directory: Path = Path(".")
    reply_to: str = ""  # optional `reply_to` key: where replies go, when not to the From address
    # `digest` names a campaign readers may switch to instead (e.g. weekly -> monthly), and
    # `utm = {source, medium, campaign}` tags the campaign's resource links; both optional.
    digest: str = ""
    utm: dict[str, str] = field(default_factory=dict)
    # After the last step the reader continues into another campaign's shared sequence.
    continue_into: str = ""
    continue_at: str = ""
    send_days: frozenset[int] = ALL_DAYS  # weekday numbers (Monday = 0) on which day-based steps may land
    # Double opt-in: the welcome waits until the reader clicks the link in a confirmation email.
    double_opt_in: bool = False
    confirm_subject: str = "Please confirm your email address"
    # An invitation instead of a continuation: the campaign's emails may carry `invite_url`, a signed link
    # whose page asks the reader (in `invite_wording`, stored as their consent) to join `invite_to` at
    # `invite_at`. Nothing is joined unless they click yes: for a form that promised only a download.
    invite_to: str = ""
    invite_at: str = ""
    invite_wording: str = ""
    # Where the campaign's files come from: the folder `directory` (version 0), or a version published
    # in the database (campaigns/versions.py), whose files travel with it as {file name: text}.
    version: int = 0
    files: Mapping[str, str] | None = None

    @property
    def template_root(self) -> str:
        """The Jinja2 folder name of this campaign's templates. Each published version has its own, so a
        template compiled for one version is never served for another."""
        return self.key if self.files is None else f"{self.key}@{self.version}"

    def read(self, name: str) -> str | None:
        """The text of one of the campaign's files (`campaign.toml`, `week-01.md`, ...), or None."""
        if self.files is not None:
            return self.files.get(name)
        path = self.directory / name
        return path.read_text(encoding="utf-8") if path.is_file() else None

    @property
    def where(self) -> str:
        """How error messages name the campaign's definition."""
        if self.files is None:
            return str(self.directory / "campaign.toml")
        return f"{self.key} version {self.version}" if self.version > 0 else f"{self.key} (draft)"

    @property
    def sender_name(self) -> str:
        return _display_name(self.from_address) or self.title

    def step(self, index: int) -> Step | None:
        return self.steps[index] if 0 <= index < len(self.steps) else None

    def step_by_key(self, key: str) -> Step | None:
        return next((s for s in self.steps if s.key == key), None)

    def window(self, step: Step) -> tuple[int, frozenset[int]]:
        """The (send hour, allowed weekdays) for `step`: the step's own, else the campaign's."""
        hour = step.send_hour if step.send_hour is not None else self.send_hour
        return hour, step.send_days if step.send_days is not None else self.send_days




@functools.lru_cache(maxsize=256)  # read for every email composed; parseaddr is not free
def _display_name(address: str) -> str:
    return parseaddr(address)[0]
