"""The SMTP worker's channel to the main process (``correo.workers``): what a worker
writes for a batch of mailbox changes and a queue wake-up is what the main process
parses back, over a real socketpair, however many changes one batch holds."""

from __future__ import annotations

import asyncio
import socket

from correo.workers import CHANNEL_LINE_LIMIT, PAIRS_PER_LINE, _Channel, _pairs


async def test_batches_round_trip_in_bounded_lines() -> None:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, _w = await asyncio.open_unix_connection(sock=a, limit=CHANNEL_LINE_LIMIT)
    _r, writer = await asyncio.open_unix_connection(sock=b)
    channel = _Channel(writer)
    batch = tuple((mailbox, 10**9 + mailbox) for mailbox in range(1, 2 * PAIRS_PER_LINE + 2))
    channel.changed(batch)
    channel.changed(())  # nothing changed: nothing sent
    channel.wake()
    channel.ready()
    await writer.drain()
    lines = [await reader.readline() for _ in range(5)]
    assert [line[:1] for line in lines] == [b"M", b"M", b"M", b"Q", b"R"]
    assert all(len(line) < CHANNEL_LINE_LIMIT for line in lines)
    got = [p for line in lines[:3] for p in _pairs(line.rstrip(b"\n").partition(b" ")[2])]
    assert tuple(got) == batch
    writer.close()
    _w.close()


def test_malformed_pairs_are_skipped() -> None:
    assert _pairs(b"1:2 x:3 4: :5 6:7 8-9") == [(1, 2), (6, 7)]
