"""Data files for the agent's user alone: what is at rest is as secret as what it holds.

The SQLite store keeps the server keys (which sign function tokens and make
code digests) and full phone numbers; the outbox keeps codes. With the usual
umask both would be created readable by every local user. New files are
created 0600 and new folders 0700; a file found readable by others is made
private, with a warning naming it (never its content), since something else
may have copied it meanwhile. A folder that already exists is left as it is:
it may be shared on purpose (the working directory, /tmp).
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

log = logging.getLogger(__name__)

PRIVATE_FILE = 0o600
PRIVATE_FOLDER = 0o700


def private_folder(folder: Path) -> None:
    """Create ``folder`` and any missing parents, each 0700; an existing one is not changed."""
    missing: list[Path] = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for path in reversed(missing):
        try:
            path.mkdir(mode=PRIVATE_FOLDER)
        except FileExistsError:
            continue  # another process made it meanwhile


def create_private(path: Path) -> None:
    """Create ``path`` empty and 0600 if it does not exist; make it private if it does.

    For a file that another program then opens and would otherwise create with
    its own mode (SQLite: 0644, and its -wal and -shm files after it).
    """
    try:
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE))
    except FileExistsError:
        make_private(path)


def make_private(path: Path) -> None:
    """If ``path`` exists and others may use it, take their permissions away and say so."""
    try:
        current = stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return
    if current & 0o077:
        private = current & PRIVATE_FILE
        path.chmod(private)
        log.warning(
            "%s was readable by other users (mode %o); made it private (mode %o)", path, current, private
        )
