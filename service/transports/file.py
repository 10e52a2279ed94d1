"""The file transport (the embedded default): every email becomes an `.eml` file in a folder.

Each file is written to a temporary name and renamed, so a reader never sees half an email; a full
disk fails that one email as a transient error and it is retried later.
"""
from __future__ import annotations

import os
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from service.transports.base import OutboundEmail, SendResult, TransportError


class FileTransport:
    name = "file"
    sends_mime = True

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def send(self, batch: Iterable[OutboundEmail]) -> Iterator[SendResult]:
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # an unusable folder defers the batch instead of crashing the pass
            raise TransportError(f"cannot use outbox folder {self.directory}: {exc.strerror or exc}") from None
        for item in batch:
            stamp = time.strftime("%Y%m%d-%H%M%S", time.gmtime())
            final = self.directory / f"{stamp}-{item.message_pk:08d}.eml"
            tmp = final.with_suffix(".eml.tmp")
            try:
                with open(tmp, "wb") as f:
                    f.write(item.raw)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, final)
            except OSError as exc:
                tmp.unlink(missing_ok=True)
                yield SendResult(ok=False, error=f"cannot write {final.name}: {exc.strerror or exc}")
                continue
            yield SendResult(ok=True, provider_id=final.name)

    def close(self) -> None:
        pass
