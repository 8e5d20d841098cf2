"""Development delivery: each message becomes one JSON line in a file instead of an SMS.

Anyone running the agent locally reads the code from ``MFA_OUTBOX`` (the body
holds it). Writes go through a worker thread so the event loop never waits on
the disk, and a lock keeps lines whole when several sends finish together.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

from engine.codes import Message
from engine.delivery import Receipt
from engine.models import utc_now_iso
from engine.private_files import PRIVATE_FILE, make_private, private_folder


class OutboxDelivery:
    """Appends ``{"to", "channel", "body", "at"}`` lines to a JSON-lines file.

    The lines hold codes, so the file is private to this user: created 0600 in
    a folder made 0700, and made private when built (at start) if others could
    read it.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = asyncio.Lock()
        make_private(path)

    reports_delivery = False  # a file reports nothing back

    async def deliver(
        self, to: str, channel: str, message: Message, *, reference: str | None = None
    ) -> Receipt:
        body = message.text()  # the SMS text, also for a call: the file stands in for the phone
        line = json.dumps({"to": to, "channel": channel, "body": body, "at": utc_now_iso()}) + "\n"
        async with self._lock:
            await asyncio.to_thread(self._append, line)
        return Receipt()

    def _append(self, line: str) -> None:
        private_folder(self.path.parent)
        # O_APPEND keeps each line whole even if another process writes the same file.
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, PRIVATE_FILE)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
