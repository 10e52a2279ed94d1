"""`drip doctor`: check DNS authentication, configuration and the SMTP relay before the first send."""
from __future__ import annotations

import email.utils
import sys
from pathlib import Path

import click

from service.campaigns.loader import load_campaigns
from service.campaigns.model import CampaignError
from service.core.config import ConfigError, Settings


def register(main: click.Group) -> None:
    main.add_command(doctor)


@click.command()
@click.option("--timeout", default=5.0, show_default=True, help="seconds for each DNS and SMTP exchange")
def doctor(timeout: float) -> None:
    """Check SPF, DKIM, DMARC, bounce MX, https, postal address, From domain, the database file and the relay.

    Prints one line per check and a fix for each problem; exits 1 when a check fails."""
    from service.compose.composer import Composer
    from service.core.dkim_keys import load_keys
    from service.operator.doctor import format_report, make_resolver, run_checks

    try:
        settings = Settings.from_env()
        campaigns = load_campaigns(Path(settings.templates_dir))
        keys = load_keys(settings)
    except (ConfigError, CampaignError) as exc:
        raise click.ClickException(str(exc)) from None
    composer = Composer(templates_dir=Path(settings.templates_dir), base_url=settings.base_url,
                        postal_address=settings.postal_address, from_override=settings.from_address)
    domains = sorted({email.utils.parseaddr(composer.from_header(c))[1].rpartition("@")[2].lower()
                      for c in campaigns.values()})
    findings = run_checks(
        resolver=make_resolver(settings.dns_server, timeout), from_domains=domains, keys=keys,
        email_url=settings.email_url, base_url=settings.base_url,
        postal_placeholder=settings.postal_address_is_placeholder, bounce_domain=settings.bounce_domain,
        smtp_timeout=timeout, database_url=settings.database_url,
    )
    click.echo(format_report(findings))
    sys.exit(1 if any(f.status == "fail" for f in findings) else 0)
