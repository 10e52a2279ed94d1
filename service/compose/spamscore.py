"""SpamAssassin's score for every step of every campaign, from its local rules only.

A real filter catches what our own lint cannot guess (a CSS trick it counts as hidden text, a header it
dislikes). We run Debian's `spamassassin` with `-L` (local tests: no DNS blocklists, no network), Bayes
off (so the result does not depend on what this machine has learnt) and HOME pointed at a throwaway
folder (it would otherwise create ~/.spamassassin). All messages go through one run in mbox form: loading
the rules costs seconds, scoring a message milliseconds. Absent the program, nothing is scored and the
caller says so; `make spamassassin` installs it.
"""
from __future__ import annotations

import mailbox
import os
import re
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, replace
from pathlib import Path

from service.core.addresses import new_message_id

# The limit every shipped email is held to: SpamAssassin's spam threshold is 5, but a newsletter should
# score nothing much at all with local rules (a fresh install scores our emails 0.0).
LIMIT = 0.5
_STATUS = re.compile(rb"^X-Spam-Status: (?:Yes|No), score=(-?\d+(?:\.\d+)?) required=\S+\s+tests=(.*?)\s+autolearn=",
                     re.MULTILINE | re.DOTALL)
_ID = "X-Drip-Score-Id"
_NUMBER = re.compile(rb"^X-Drip-Score-Id: (\d+)\r?$", re.MULTILINE)
# Rules about how a message travelled (no Received header, a test port in a link): true of any email
# scored before it is sent, so they say nothing about the content. They score 0 in 4.0 anyway.
NOT_ABOUT_CONTENT = frozenset({"NO_RECEIVED", "NO_RELAYS", "WEIRD_PORT"})


@dataclass(frozen=True)
class SpamScore:
    score: float
    tests: tuple[str, ...]

    @property
    def content_tests(self) -> tuple[str, ...]:
        return tuple(t for t in self.tests if t not in NOT_ABOUT_CONTENT)


def spamassassin_path() -> str | None:
    return shutil.which("spamassassin")


def score_messages(raws: list[bytes], *, program: str | None = None, timeout: float = 600) -> list[SpamScore]:
    """One SpamScore per message, in order. Raises RuntimeError when the program is missing or fails."""
    program = program or spamassassin_path()
    if program is None:
        raise RuntimeError("spamassassin is not installed (Debian: apt-get install spamassassin, or make spamassassin)")
    if not raws:
        return []
    with tempfile.TemporaryDirectory(prefix="drip-spamassassin-") as home:
        box_path = Path(home) / "messages.mbox"
        box = mailbox.mbox(str(box_path))
        for n, raw in enumerate(raws):
            # SpamAssassin's mbox reader sorts messages by date, so the output order is not the input's: each
            # message carries its number in a header of its own, read back next to its score.
            box.add(mailbox.mboxMessage(f"{_ID}: {n}\r\n".encode() + raw))
        box.flush()
        box.close()
        env = {**os.environ, "HOME": home}
        with box_path.open("rb") as stdin:
            done = subprocess.run(
                [program, "-L", "-x", "--mbox", "--cf=use_bayes 0", "--cf=bayes_auto_learn 0"],
                stdin=stdin, capture_output=True, env=env, timeout=timeout, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"spamassassin failed ({done.returncode}): {done.stderr.decode(errors='replace')[-500:]}")
    scores: dict[int, SpamScore] = {}
    for chunk in re.split(rb"^From ", done.stdout, flags=re.MULTILINE):
        number, status = _NUMBER.search(chunk), _STATUS.search(chunk)
        if number is not None and status is not None:
            scores[int(number.group(1))] = SpamScore(float(status.group(1)), _tests(status.group(2)))
    if sorted(scores) != list(range(len(raws))):
        raise RuntimeError(f"spamassassin scored {len(scores)} of {len(raws)} messages")
    return [scores[n] for n in range(len(raws))]


def _tests(raw: bytes) -> tuple[str, ...]:
    names = (name.decode("ascii", "replace") for name in re.split(rb"[\s,]+", raw.strip()))
    return tuple(name for name in names if name and name != "none")


def score_campaigns(campaigns, composer) -> list[tuple[str, str, SpamScore]]:
    """(campaign key, step key, score) for every step, composed as sent (headers, both parts) for a sample
    reader; a step that does not render is left out (`drip campaigns check` reports it as an error)."""
    from service.compose.lint import sample_job

    keys, raws = [], []
    for campaign in campaigns.values():
        for step in campaign.steps:
            try:
                job = sample_job(campaign, step, composer.base_url)
                # A real Message-ID's shape (the sample's short one trips MSGID_SHORT, which no sent email has).
                job = replace(job, message_id=new_message_id(campaign.from_address, 1, secrets.token_hex(10)))
                raw = composer.compose(job).raw
            except Exception:  # noqa: S112 - reported by the lint; nothing to score
                continue
            keys.append((campaign.key, step.key))
            raws.append(raw)
    return [(c, s, score) for (c, s), score in zip(keys, score_messages(raws), strict=True)]
