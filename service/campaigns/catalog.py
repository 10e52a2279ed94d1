"""The campaigns a process sends and shows: the folders under DRIP_TEMPLATES_DIR, each replaced by its
newest version published in the database when it has one.

Workers call `refresh` before every pass and web processes at most once a second: one small query
(versions.stamp) tells whether anything was published since, and only then are the versions loaded. So a
publish in the console reaches every process on its next pass, with no restart, and an email is always
composed from the version that was newest when its pass began.
"""
from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator, Mapping

from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session, sessionmaker

from service.campaigns import versions
from service.campaigns.loader import campaign_from_files, check_set
from service.campaigns.model import Campaign, CampaignError

log = logging.getLogger(__name__)


class Catalog(Mapping[str, Campaign]):
    def __init__(self, folders: Mapping[str, Campaign], sessions: sessionmaker[Session] | None = None) -> None:
        self.folders = dict(folders)
        self.sessions = sessions
        self._current: dict[str, Campaign] = dict(folders)  # replaced whole, never changed in place
        self._stamp: tuple[int, int] | None = None
        self._checked = float("-inf")
        self._lock = threading.Lock()

    # -- a read-only mapping of the current campaigns --------------------------------------------------
    def __getitem__(self, key: str) -> Campaign:
        return self._current[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self._current)

    def __len__(self) -> int:
        return len(self._current)

    def __contains__(self, key: object) -> bool:
        return key in self._current

    def get(self, key: str, default=None):
        return self._current.get(key, default)

    def keys(self):
        return self._current.keys()

    def values(self):
        return self._current.values()

    def items(self):
        return self._current.items()

    # -- replacing a campaign in this process only (tests, tools): it stays until a version of it is published
    def __setitem__(self, key: str, campaign: Campaign) -> None:
        self.folders[key] = campaign
        self._current = {**self._current, key: campaign}

    def update(self, other: Mapping[str, Campaign]) -> None:
        for key, campaign in other.items():
            self[key] = campaign

    # -- picking up a publish ---------------------------------------------------------------------------------
    def refresh(self, *, at_most_every: float = 0.0) -> bool:
        """Load what was published since the last call; True when the campaigns changed. Never raises for
        the database: a process whose database is not migrated yet keeps sending the folders."""
        if self.sessions is None or time.monotonic() - self._checked < at_most_every:
            return False
        if not self._lock.acquire(blocking=False):  # another thread of this process is at it
            return False
        try:
            self._checked = time.monotonic()
            with self.sessions() as session:
                stamp = versions.stamp(session)
                if stamp == self._stamp:
                    return False
                rows = versions.published(session)
            self._current = self.load(rows)
            self._stamp = stamp
            return True
        except DBAPIError as exc:  # the table is missing (database not migrated) or the database is away
            log.debug("campaign versions not read: %s", exc)
            return False
        finally:
            self._lock.release()

    def load(self, rows: list) -> dict[str, Campaign]:
        current = dict(self.folders)
        for row in rows:
            try:
                current[row.campaign] = campaign_from_files(row.campaign, row.files, version=row.version)
            except CampaignError as exc:  # checked when published; only a hand-edited row gets here
                log.error("campaign %s version %s cannot be loaded, sending the previous one: %s",
                          row.campaign, row.version, exc)
                if row.campaign in self._current:
                    current[row.campaign] = self._current[row.campaign]
        try:
            check_set(current)
        except CampaignError as exc:
            log.error("published campaigns do not fit together, keeping the previous set: %s", exc)
            return self._current
        return current

    def with_draft(self, campaign: Campaign) -> dict[str, Campaign]:
        """The current campaigns with `campaign` in place of its published one, checked as a set (a draft
        must not break another campaign's continuation or digest). Raises CampaignError."""
        trial = {**self._current, campaign.key: campaign}
        check_set(trial)
        return trial
