"""`drip preview CAMPAIGN STEP` writes one step, as it is sent now (the newest version published in the
console, else the campaign folder), rendered with sample data (.eml, .html, .txt) to a folder and opens
nothing; `drip send-test CAMPAIGN STEP --to ADDRESS` sends it through the configured transport, marked as
a test ("[TEST] " subject, `X-Drip-Test: 1`) and never recorded: no database row, no stats."""
from __future__ import annotations

from pathlib import Path

import click

from service.campaigns.loader import load_campaigns
from service.campaigns.model import Campaign, CampaignError, Step
from service.core.config import ConfigError, Settings


def register(main: click.Group) -> None:
    main.add_command(preview)
    main.add_command(send_test)


def _load(campaign_key: str, step_key: str) -> tuple[Settings, Campaign, Step]:
    from service.campaigns.catalog import Catalog
    from service.core.db import make_sessionmaker

    try:
        settings = Settings.from_env()
        folders = load_campaigns(Path(settings.templates_dir))
    except (ConfigError, CampaignError) as exc:
        raise click.ClickException(str(exc)) from None
    # The version being sent: published in the console when there is one, else the folder.
    sessions = make_sessionmaker(settings, pool_size=1)
    campaigns = Catalog(folders, sessions)
    campaigns.refresh()
    sessions.kw["bind"].dispose()
    campaign = campaigns.get(campaign_key)
    if campaign is None:
        raise click.ClickException(f"no campaign {campaign_key!r} (have: {', '.join(sorted(campaigns))})")
    step = campaign.step_by_key(step_key)
    if step is None:
        raise click.ClickException(f"campaign {campaign_key!r} has no step {step_key!r} "
                                   f"(steps: {', '.join(s.key for s in campaign.steps)})")
    return settings, campaign, step


def _compose(settings: Settings, campaign: Campaign, step: Step, *, to: str, name: str, test: bool):
    import secrets

    from service.compose.composer import ComposeJob, Composer
    from service.core.addresses import new_message_id
    from service.core.db import utcnow
    from service.core.dkim_keys import load_keys

    composer = Composer(templates_dir=Path(settings.templates_dir), base_url=settings.base_url,
                        postal_address=settings.postal_address, from_override=settings.from_address,
                        unsubscribe_mailto=settings.unsubscribe_mailto, dkim_keys=load_keys(settings),
                        feedback_id_sender=settings.feedback_id_sender, bounce_domain=settings.bounce_domain,
                        reply_to=settings.reply_to)
    job = ComposeJob(message_pk=0, message_id=new_message_id(composer.from_header(campaign), 0, secrets.token_hex(10)),
                     campaign=campaign, step=step, to_email=to, name=name,
                     unsubscribe_url=f"{settings.base_url}/unsubscribe/test-link-not-valid", now=utcnow(), test=test)
    return composer.compose(job)


@click.command("preview")
@click.argument("campaign")
@click.argument("step")
@click.option("--out", "out_dir", default="preview", type=click.Path(file_okay=False, path_type=Path),
              help="folder to write to (created if missing)")
@click.option("--name", default="Ada Lovelace", help="sample reader name ('' for none)")
def preview(campaign: str, step: str, out_dir: Path, name: str) -> None:
    """Write CAMPAIGN's STEP rendered with sample data as .eml, .html and .txt; opens nothing."""
    settings, c, s = _load(campaign, step)
    email = _compose(settings, c, s, to="reader@example.org", name=name, test=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    base = out_dir / f"{c.key}-{s.key}"
    for ext, data in (("eml", email.raw), ("html", email.html.encode()), ("txt", email.text.encode())):
        base.with_suffix(f".{ext}").write_bytes(data)
        click.echo(f"wrote {base.with_suffix(f'.{ext}')}")
    click.echo(f"subject: {email.subject}")


@click.command("send-test")
@click.argument("campaign")
@click.argument("step")
@click.option("--to", "to", required=True, help="address to send the test to")
@click.option("--name", default="", help="reader name to greet")
def send_test(campaign: str, step: str, to: str, name: str) -> None:
    """Send CAMPAIGN's STEP to ADDRESS through the configured transport, marked as a test, not recorded."""
    from service.audience.signups import SignupError, normalize_email
    from service.transports import make_transport

    try:
        address, _key = normalize_email(to)
    except SignupError as exc:
        raise click.BadParameter(exc.message, param_hint="--to") from None
    settings, c, s = _load(campaign, step)
    email = _compose(settings, c, s, to=address, name=name, test=True)
    transport = make_transport(settings.email_url)
    try:
        [result] = list(transport.send([email]))
    except Exception as exc:  # the transport's own error names the problem; no secret is in it
        raise click.ClickException(f"send-test failed: {exc}") from None
    finally:
        transport.close()
    if not result.ok:
        raise click.ClickException(f"send-test refused: {result.error}")
    click.echo(f"sent test of {c.key}/{s.key} to {address}: {email.subject}")
