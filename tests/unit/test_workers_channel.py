"""The SMTP worker's channel to the main process (``correo.workers``): what a worker
writes for mailbox changes and queue wake-ups is what the main process parses back, over
a real socketpair: gathered for a few milliseconds, merged per mailbox, in bounded lines
however many changes there are."""

from __future__ import annotations

import asyncio
import socket

from correo.workers import CHANNEL_LINE_LIMIT, FLUSH_DELAY, PAIRS_PER_LINE, _Channel, _pairs

_KEEP: list[object] = []
"""The unused halves of each stream pair: a StreamWriter that is garbage collected
closes its socket."""


async def channel_pair() -> tuple[asyncio.StreamReader, _Channel, asyncio.StreamWriter]:
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    reader, unused_writer = await asyncio.open_unix_connection(sock=a, limit=CHANNEL_LINE_LIMIT)
    unused_reader, writer = await asyncio.open_unix_connection(sock=b)
    _KEEP.extend((unused_writer, unused_reader))
    return reader, _Channel(writer), writer


def pairs_of(lines: list[bytes]) -> list[tuple[int, int]]:
    return [p for line in lines for p in _pairs(line.rstrip(b"\n").partition(b" ")[2])]


async def test_changes_are_gathered_merged_and_sent_in_bounded_lines() -> None:
    reader, channel, writer = await channel_pair()
    batch = tuple((mailbox, 10**9 + mailbox) for mailbox in range(1, 2 * PAIRS_PER_LINE + 2))
    channel.changed(batch)
    channel.changed(((1, 5), (2, 10**10)))  # mailbox 1: older modseq; mailbox 2: newer
    channel.changed(())
    channel.wake()
    channel.wake()
    await asyncio.sleep(FLUSH_DELAY / 2)
    assert reader._buffer == b""  # type: ignore[attr-defined]  # nothing sent yet
    lines = [await asyncio.wait_for(reader.readline(), 5) for _ in range(4)]
    assert [line[:1] for line in lines] == [b"M", b"M", b"M", b"Q"]
    assert all(len(line) < CHANNEL_LINE_LIMIT for line in lines)
    want = dict(batch) | {2: 10**10}
    assert dict(pairs_of(lines[:3])) == want and len(pairs_of(lines[:3])) == len(want)
    channel.ready()  # sent at once
    assert await asyncio.wait_for(reader.readline(), 5) == b"R\n"
    writer.close()


async def test_flush_sends_what_is_pending_at_once() -> None:
    reader, channel, writer = await channel_pair()
    channel.changed(((7, 70),))
    channel.flush()
    await writer.drain()
    assert await asyncio.wait_for(reader.readline(), 1) == b"M 7:70\n"
    channel.flush()  # nothing pending: nothing sent
    channel.ready()
    assert await asyncio.wait_for(reader.readline(), 1) == b"R\n"
    writer.close()


def test_malformed_pairs_are_skipped() -> None:
    assert _pairs(b"1:2 x:3 4: :5 6:7 8-9") == [(1, 2), (6, 7)]
