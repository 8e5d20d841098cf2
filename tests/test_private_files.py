"""Data files are readable by the agent's user alone.

The SQLite file holds the server keys (code digests, function tokens) and full
phone numbers, and the outbox holds codes: another local user must read
neither. New files are made 0600 in a folder made 0700; an existing file that
others can read is made private at start, with a warning naming it.
"""

from __future__ import annotations

import logging
import sqlite3
import stat
from pathlib import Path

import pytest

from engine.codes import Message
from engine.delivery.outbox import OutboxDelivery
from engine.runtime import Runtime
from engine.stores import SqliteStore
from tests.platform import settings_for


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


async def test_a_new_store_and_outbox_are_private(tmp_path: Path) -> None:
    database = tmp_path / "data" / "store" / "mfa.sqlite3"
    store = SqliteStore(str(database))
    await store.open()
    try:
        await store.put_record("call", "a", {"verified": True}, ttl=60)  # the WAL files now exist
        files = [database, database.with_name("mfa.sqlite3-wal"), database.with_name("mfa.sqlite3-shm")]
        assert {path.name: mode(path) for path in files} == {path.name: 0o600 for path in files}
    finally:
        await store.close()
    assert mode(tmp_path / "data") == 0o700
    assert mode(tmp_path / "data" / "store") == 0o700

    outbox = tmp_path / "messages" / "outbox.jsonl"
    await OutboxDelivery(outbox).deliver("+12025550143", "sms", Message("Your code is", "123456"))
    assert mode(outbox) == 0o600
    assert mode(outbox.parent) == 0o700


async def test_files_others_can_read_are_made_private_at_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    folder = tmp_path / "shared"
    folder.mkdir(mode=0o755)
    database = folder / "mfa.sqlite3"
    sqlite3.connect(database).close()
    outbox = folder / "outbox.jsonl"
    outbox.write_text('{"body": "Your code is 654321"}\n')
    for path in (database, outbox):
        path.chmod(0o644)

    caplog.set_level(logging.WARNING)
    runtime = Runtime(settings_for(tmp_path, mfa_store=f"sqlite:///{database}", mfa_outbox=outbox))
    await runtime.start()
    await runtime.close()

    assert mode(database) == 0o600
    assert mode(outbox) == 0o600
    assert mode(folder) == 0o755  # a folder we did not make is not ours to change
    warnings = [record.getMessage() for record in caplog.records if "readable" in record.getMessage()]
    assert any(str(database) in line for line in warnings), caplog.text
    assert any(str(outbox) in line for line in warnings), caplog.text
    assert "654321" not in caplog.text
