"""Opening message bodies in the SQLite store (``Store.open_body``), one at a time or a
batch at a time.

Both run on the event loop thread on the read-only connection, each as one statement in
autocommit mode (a lone SELECT is its own read transaction). They are on the hot path of
POP3 RETR and IMAP body FETCH, so:

* :func:`open_body` looks for a body too big to be inline as a file first: blob files are
  content-addressed and renamed into place whole, so a file of the expected size *is*
  the body, and the database is asked only when there is none (the body is inline after
  all, e.g. ``inline_threshold`` was lowered since, or it is gone: NotFound);
* :func:`open_bodies` answers for the next few messages of a mailbox with one query (a
  POP3 client walking RETR 1, RETR 2, ... needs no statement per message).
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Sequence

from correo.store import sqlite_rows as rows
from correo.store.base import Body, NotFound, StoredMessage
from correo.store.blobs import BlobFiles, FileBody, InlineBody
from correo.store.sqlite_schema import map_error

BODY_SQL = "SELECT size, data FROM blobs WHERE sha = ?"
BODIES_SQL = (
    "SELECT m.uid, m.prefix, m.blob_id, b.size, b.data FROM messages m"
    " JOIN blobs b ON b.sha = m.blob_id WHERE m.mailbox_id = ?"
    " AND m.uid IN (SELECT value FROM json_each(?))"
)
MAX_BATCH = 256
"""Bodies per :func:`open_bodies` call (inline ones are loaded: at most this many times
``inline_threshold`` octets)."""


def _body(files: BlobFiles, prefix: bytes, sha: str, size: int, data: bytes | None) -> Body:
    if data is not None:
        return InlineBody(prefix, bytes(data))
    return FileBody(prefix, files.file_name(sha), int(size))


def open_body(
    conn: sqlite3.Connection, files: BlobFiles, inline_threshold: int, message: StoredMessage
) -> Body:
    """The octets of ``message`` (prefix + shared body); NotFound if the body is gone."""
    body_size = message.size - len(message.prefix)
    if body_size > inline_threshold:
        name = files.file_name(message.blob_id)
        try:
            found_size = os.stat(name).st_size
        except OSError:
            found_size = -1
        if found_size == body_size:
            return FileBody(message.prefix, name, body_size)
    try:
        found = conn.execute(BODY_SQL, (message.blob_id,)).fetchone()
    except sqlite3.Error as exc:
        raise map_error(exc) from exc
    if found is None:
        raise NotFound(f"no body {message.blob_id}")
    return _body(files, message.prefix, message.blob_id, found[0], found[1])


def open_bodies(
    conn: sqlite3.Connection, files: BlobFiles, mailbox_id: int, uids: Sequence[int]
) -> dict[int, Body]:
    """Bodies of the messages ``uids`` of the mailbox, by uid; absent uids (expunged)
    are left out."""
    if len(uids) > MAX_BATCH:
        raise ValueError(f"at most {MAX_BATCH} bodies at a time")
    try:
        found = conn.execute(BODIES_SQL, (mailbox_id, rows.uid_list(uids))).fetchall()
    except sqlite3.Error as exc:
        raise map_error(exc) from exc
    return {
        uid: _body(files, bytes(prefix), sha, size, data) for uid, prefix, sha, size, data in found
    }
