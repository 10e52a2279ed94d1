"""Builds the long-lived parts from Settings: the session factory, campaigns, composer, dispatcher.

The web app, `drip worker`, `drip serve` and `drip tick` all start here, so they agree on everything.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy.orm import Session, sessionmaker

from service.campaigns.catalog import Catalog
from service.campaigns.loader import load_campaigns
from service.core.config import ConfigError, Settings
from service.core.db import make_sessionmaker
from service.core.tokens import (
    make_confirm_token,
    make_join_token,
    make_preferences_token,
    make_unsubscribe_token,
    make_view_token,
)
from service.dispatch.dispatcher import Dispatcher
from service.dispatch.policy import RetryPolicy
from service.feedback.delivery import Policy
from service.transports import make_transport

if TYPE_CHECKING:
    from service.compose.composer import Composer


@dataclass
class Runtime:
    settings: Settings
    sessions: sessionmaker[Session]
    campaigns: Catalog  # the folders, each replaced by its newest published version (campaigns/catalog.py)
    # Built on first use (`composer`): a process that sends nothing (a `drip tick` with nothing due, most
    # commands) never imports Jinja, markdown-it or the DKIM and DNS modules (~0.15 s of start-up).
    _composer: Composer | None = field(default=None, repr=False)
    _composer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @property
    def composer(self) -> Composer:
        if self._composer is None:
            with self._composer_lock:  # the web's threads: one composer, so one cache of compiled templates
                if self._composer is None:
                    composer = make_composer(self.settings)
                    composer.reader_links = self.reader_links  # here, as the footer's links are signed with the key
                    composer.invite_link = self.invite_url
                    self._composer = composer
        return self._composer

    def unsubscribe_url(self, public_id: str, campaign: str) -> str:
        token = make_unsubscribe_token(self.settings.secret_key, public_id=public_id, campaign=campaign)
        return f"{self.settings.base_url}/unsubscribe/{token}"

    def delivery_policy(self) -> Policy:
        s = self.settings
        return Policy(soft_threshold=s.soft_bounce_threshold, soft_window=timedelta(days=s.soft_bounce_window_days),
                      deferred_deadline=timedelta(hours=s.deferred_deadline_hours))

    def reader_links(self, public_id: str, message_pk: int) -> dict[str, str]:
        """The preference page and view-in-browser links in every email's footer."""
        key, base = self.settings.secret_key, self.settings.base_url
        return {"preferences_url": f"{base}/preferences/{make_preferences_token(key, public_id=public_id)}",
                "view_url": f"{base}/view/{make_view_token(key, message_pk=message_pk)}"}

    def invite_url(self, public_id: str, campaign: str) -> str:
        """An inviting campaign's "yes, sign me up" link (the page asks before anything is joined)."""
        token = make_join_token(self.settings.secret_key, public_id=public_id, campaign=campaign)
        return f"{self.settings.base_url}/join/{token}"

    def confirm_url(self, public_id: str, campaign: str) -> str:
        """Double opt-in: the signed link in a confirmation email."""
        token = make_confirm_token(self.settings.secret_key, public_id=public_id, campaign=campaign)
        return f"{self.settings.base_url}/confirm/{token}"

    def preview_composer(self) -> Composer:
        """A composer of its own for the console's drafts and previews: what it compiles (a draft changes with
        every keystroke) goes with it, never into the long-lived one that sends."""
        return make_composer(self.settings, plan_renders=False)

    def transport(self):
        return make_transport(self.settings.email_url)

    def dispatcher(self, **overrides) -> Dispatcher:
        s = self.settings
        kwargs = dict(
            sessions=self.sessions, campaigns=self.campaigns, composer=_OnFirstUse(lambda: self.composer),
            transport_factory=partial(make_transport, s.email_url), unsubscribe_url=self.unsubscribe_url,
            event_retention_days=s.event_retention_days,
            lease=timedelta(seconds=s.lease_seconds), batch_size=s.batch_size,
            retry=RetryPolicy(base_seconds=s.retry_base_seconds, cap_seconds=s.retry_cap_seconds,
                              max_attempts=s.max_attempts),
            limits=s.send_limits,
            delivery_policy=self.delivery_policy(),
            max_per_day=s.max_emails_per_day,
            confirm_url=self.confirm_url, confirm_expiry=timedelta(days=s.confirm_expiry_days),
        )
        kwargs.update(overrides)
        return Dispatcher(**kwargs)


class _OnFirstUse:
    """The dispatcher's composer, built when the dispatcher first uses it (a pass that queues or sends)."""

    def __init__(self, build) -> None:
        self._build = build

    def __getattr__(self, name: str):
        return getattr(self._build(), name)


def make_composer(settings: Settings, *, plan_renders: bool = True) -> Composer:
    from service.compose.composer import Composer
    from service.core.dkim_keys import load_keys

    return Composer(templates_dir=Path(settings.templates_dir), base_url=settings.base_url,
                    postal_address=settings.postal_address, from_override=settings.from_address,
                    unsubscribe_mailto=settings.unsubscribe_mailto, dkim_keys=load_keys(settings),
                    feedback_id_sender=settings.feedback_id_sender, bounce_domain=settings.bounce_domain,
                    reply_to=settings.reply_to, secret_key=settings.secret_key, tracking=settings.tracking,
                    plan_renders=plan_renders)


def check_postal_address(settings: Settings) -> None:
    """A service that sends for real must show a real postal address in every footer (CAN-SPAM). An https
    DRIP_BASE_URL is the sign of production: there the placeholder stops `drip serve` and `drip worker`
    before anything is sent; on the embedded default (http, a local outbox) it is only a warning."""
    if settings.postal_address_is_placeholder and settings.base_url.lower().startswith("https://"):
        raise ConfigError("DRIP_POSTAL_ADDRESS is not set, and DRIP_BASE_URL is https (a production service): set "
                          "DRIP_POSTAL_ADDRESS to the sender's postal address, shown in every email's footer, "
                          "before sending")


def build_runtime(settings: Settings, *, pool_size: int = 5) -> Runtime:
    campaigns = load_campaigns(Path(settings.templates_dir))
    if settings.default_campaign not in campaigns:
        from service.campaigns.model import CampaignError

        raise CampaignError(f"DRIP_DEFAULT_CAMPAIGN: no campaign named {settings.default_campaign!r} "
                            f"(have: {', '.join(sorted(campaigns))})")
    make_transport(settings.email_url).close()  # a malformed DRIP_EMAIL_URL fails at start, naming the variable
    sessions = make_sessionmaker(settings, pool_size=pool_size)
    catalog = Catalog(campaigns, sessions)
    catalog.refresh()  # versions published in the console replace their folders from the first request on
    return Runtime(settings=settings, sessions=sessions, campaigns=catalog)
