"""`drip bounces --maildir PATH | --imap URL`: read a bounce mailbox, turn DSNs into delivery events."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import click

from service.commands.context import load_runtime, load_settings


def register(main: click.Group) -> None:
    @main.command("bounces")
    @click.option("--maildir", "maildir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="Maildir folder the bounces+…@DRIP_BOUNCE_DOMAIN mail is delivered to")
    @click.option("--imap", "imap_url", metavar="URL", help="imaps://user:password@host[:port]/FOLDER")
    def bounces(maildir: Path | None, imap_url: str | None) -> None:
        """Parse every unseen message as an RFC 3464 DSN, apply it, and flag it seen.

        Messages that are not DSNs (out-of-office replies, humans) are flagged seen and never counted."""

        if (maildir is None) == (imap_url is None):
            raise click.UsageError("give exactly one of --maildir PATH or --imap URL")
        rt = load_runtime(load_settings())
        if maildir is not None:
            from service.feedback.dsn import maildir_messages, mark_seen

            items = ((raw, (lambda box=box, key=key: mark_seen(box, key))) for key, raw, box in
                     maildir_messages(maildir))
            counts = _process(rt, items)
        else:
            from service.feedback.dsn import ImapBox

            try:
                box = ImapBox(imap_url)
            except (ValueError, OSError) as exc:
                raise click.ClickException(f"--imap: {exc}") from None
            try:
                counts = _process(rt, ((raw, (lambda uid=uid: box.mark_seen(uid))) for uid, raw in box.unseen()))
            finally:
                box.close()
        click.echo("bounces: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _process(rt, items: Iterator[tuple[bytes, Callable[[], None]]]) -> dict[str, int]:
    from service.core.db import utcnow
    from service.feedback.delivery import apply
    from service.feedback.dsn import parse_dsn

    policy = rt.delivery_policy()
    counts = {"messages": 0, "not_dsn": 0, "applied": 0, "duplicate": 0, "unknown": 0}
    for raw, seen in items:
        counts["messages"] += 1
        found = parse_dsn(raw, secret=rt.settings.secret_key)
        counts["not_dsn"] += not found
        with rt.sessions() as session, session.begin():
            for ev in found:
                counts[apply(session, ev, now=utcnow(), policy=policy)] += 1
        seen()  # only after the events are committed
    return counts
