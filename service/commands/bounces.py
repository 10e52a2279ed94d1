"""`drip bounces --maildir PATH | --imap URL`: read a bounce mailbox, turn DSNs into delivery events (issue 4)."""
from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import click


def register(main: click.Group) -> None:
    @main.command("bounces")
    @click.option("--maildir", "maildir", type=click.Path(exists=True, file_okay=False, path_type=Path),
                  help="Maildir folder the bounces+…@DRIP_BOUNCE_DOMAIN mail is delivered to")
    @click.option("--imap", "imap_url", metavar="URL", help="imaps://user:password@host[:port]/FOLDER")
    def bounces(maildir: Path | None, imap_url: str | None) -> None:
        """Parse every unseen message as an RFC 3464 DSN, apply it, and flag it seen.

        Messages that are not DSNs (out-of-office replies, humans) are flagged seen and never counted."""
        from ..cli import _runtime, _settings

        if (maildir is None) == (imap_url is None):
            raise click.UsageError("give exactly one of --maildir PATH or --imap URL")
        rt = _runtime(_settings())
        if maildir is not None:
            from ..bounces import maildir_messages, mark_seen

            items = ((raw, (lambda box=box, key=key: mark_seen(box, key))) for key, raw, box in
                     maildir_messages(maildir))
            counts = _process(rt, items)
        else:
            from ..bounces import ImapBox

            try:
                box = ImapBox(imap_url)
            except (ValueError, OSError) as exc:
                raise click.ClickException(f"--imap: {exc}") from None
            try:
                counts = _process(rt, ((raw, (lambda uid=uid: box.mark_seen(uid))) for uid, raw in box.unseen()))
            finally:
                box.close()
        click.echo("bounces: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


def _process(rt, items: Iterator[tuple[bytes, Callable[[], None]]]) -> dict[str, int]:  # noqa: ANN001
    from ..bounces import parse_dsn
    from ..db import utcnow
    from ..delivery import apply

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
