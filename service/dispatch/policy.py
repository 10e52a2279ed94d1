"""The small pure parts of a pass: what it counts (PassSummary) and when a failed attempt is tried again
or given up (RetryPolicy)."""
from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import datetime, timedelta

GIVE_UP_AFTER = timedelta(days=3)


@dataclass
class PassSummary:
    queued: int = 0
    sent: int = 0
    deferred: int = 0
    failed: int = 0
    bounced: int = 0
    suppressed: int = 0
    reclaimed: int = 0
    completed: int = 0
    paused: int = 0  # 1 when sending is paused (a provider refused our credentials)

    def line(self) -> str:
        return ", ".join(f"{k} {v}" for k, v in vars(self).items())


@dataclass(frozen=True)
class RetryPolicy:
    base_seconds: int = 60
    cap_seconds: int = 6 * 3600
    max_attempts: int = 12
    give_up_after: timedelta = GIVE_UP_AFTER

    def delay(self, attempts: int, retry_after: float | None = None, rng: random.Random | None = None) -> float:
        """Capped exponential backoff with +-20 % jitter; a server's Retry-After is a floor."""
        raw = min(self.cap_seconds, self.base_seconds * 2 ** max(0, attempts - 1))
        jittered = raw * (rng or random).uniform(0.8, 1.2)
        return max(jittered, retry_after or 0.0)

    def exhausted(self, attempts: int, first_attempt_at: datetime | None, now: datetime) -> bool:
        return attempts >= self.max_attempts or (
            first_attempt_at is not None and now - first_attempt_at >= self.give_up_after)
