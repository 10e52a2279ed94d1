"""Builds the long-lived parts from Settings: the session factory, campaigns, composer, dispatcher.

The web app, `drip worker`, `drip serve` and `drip tick` all start here, so they agree on everything.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from .campaigns import Campaign, load_campaigns
from .compose import Composer
from .config import Settings
from .db import make_sessionmaker
from .dispatch import Dispatcher, RetryPolicy
from .dkim import load_keys
from .tokens import make_confirm_token, make_unsubscribe_token
from .transports import make_transport


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    campaigns: dict[str, Campaign]
    composer: Composer

    def unsubscribe_url(self, public_id: str, campaign: str) -> str:
        token = make_unsubscribe_token(self.settings.secret_key, public_id=public_id, campaign=campaign)
        return f"{self.settings.base_url}/unsubscribe/{token}"

    def confirm_url(self, public_id: str, campaign: str) -> str:
        """Issue 5 double opt-in: the signed link in a confirmation email."""
        token = make_confirm_token(self.settings.secret_key, public_id=public_id, campaign=campaign)
        return f"{self.settings.base_url}/confirm/{token}"

    def dispatcher(self, **overrides) -> Dispatcher:  # noqa: ANN003
        s = self.settings
        kwargs = dict(
            sessions=self.sessions, campaigns=self.campaigns, composer=self.composer,
            transport_factory=partial(make_transport, s.email_url), unsubscribe_url=self.unsubscribe_url,
            lease=timedelta(seconds=s.lease_seconds), batch_size=s.batch_size,
            retry=RetryPolicy(base_seconds=s.retry_base_seconds, cap_seconds=s.retry_cap_seconds,
                              max_attempts=s.max_attempts),
            limits=s.send_limits,
            max_per_day=s.max_emails_per_day,
            confirm_url=self.confirm_url, confirm_expiry=timedelta(days=s.confirm_expiry_days),
        )
        kwargs.update(overrides)
        return Dispatcher(**kwargs)


def build_runtime(settings: Settings, *, pool_size: int = 5) -> Runtime:
    campaigns = load_campaigns(Path(settings.templates_dir))
    if settings.default_campaign not in campaigns:
        from .campaigns import CampaignError

        raise CampaignError(f"DRIP_DEFAULT_CAMPAIGN: no campaign named {settings.default_campaign!r} "
                            f"(have: {', '.join(sorted(campaigns))})")
    composer = Composer(templates_dir=Path(settings.templates_dir), base_url=settings.base_url,
                        postal_address=settings.postal_address, from_override=settings.from_address,
                        unsubscribe_mailto=settings.unsubscribe_mailto, dkim_keys=load_keys(settings),
                        feedback_id_sender=settings.feedback_id_sender, bounce_domain=settings.bounce_domain,
                        reply_to=settings.reply_to)
    return Runtime(settings=settings, sessions=make_sessionmaker(settings, pool_size=pool_size),
                   campaigns=campaigns, composer=composer)
