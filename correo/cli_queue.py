"""``correo queue …``: look at and act on the outbound queue.

The commands work on the database directly, so they also work while the server runs
(its runner notices changes within seconds: ``correo.queue.runner.RECHECK``).

``correo.cli`` is imported inside the commands: ``correo.cli`` registers this module when
it loads, so a top-level import would be circular whichever module is imported first.
"""

from __future__ import annotations

import time
from typing import Any

import click

from correo.config import Settings, format_duration
from correo.store.base import Store
from correo.store.queue import QueuedRecipient, QueueEntry, queue_store_for


def _age(seconds: float) -> str:
    """``4d23h``, ``1h5m``, ``3m20s``, ``42s``: the two largest units."""
    s = max(int(seconds), 0)
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    for i, (unit, size) in enumerate(units):
        if s >= size or unit == "s":
            text = f"{s // size}{unit}"
            if i + 1 < len(units):
                small, small_size = units[i + 1]
                rest = (s % size) // small_size
                if rest:
                    text += f"{rest}{small}"
            return text
    return "0s"


def _when(ts: float, now: float) -> str:
    if ts <= now:
        return "now"
    return "in " + _age(ts - now)


def _state(r: QueuedRecipient) -> str:
    text = r.state.value
    if r.attempts:
        text += f"/{r.attempts}"
    if r.dsn_pending:
        text += f" ({r.dsn_pending.value} report owed)"
    return text


def _next(entry: QueueEntry, now: float) -> str:
    waiting = [r.next_attempt for r in entry.recipients if not r.state.final]
    return _when(min(waiting), now) if waiting else "-"


def _short(text: str | None, width: int = 60) -> str:
    if not text:
        return ""
    return text if len(text) <= width else text[: width - 1] + "…"


@click.group()
def queue() -> None:
    """Show and manage the outbound queue (mail waiting for other domains)."""


@queue.command("list")
@click.pass_obj
def queue_list(obj: dict[str, Any]) -> None:
    """One line per queued recipient: id, age, sender, recipient and state, next try,
    last error."""
    from correo.cli import table, with_store

    async def run(store: Store, _s: Settings) -> None:
        now = time.time()
        rows = []
        for entry in await queue_store_for(store).list_entries():
            m = entry.message
            for r in entry.recipients:
                rows.append(
                    (
                        m.id,
                        _age(now - m.created),
                        f"<{m.sender}>",
                        r.address,
                        _state(r),
                        _when(r.next_attempt, now) if not r.state.final else "-",
                        _short(r.last_error),
                    )
                )
        table(("ID", "AGE", "SENDER", "RECIPIENT", "STATE", "NEXT", "LAST ERROR"), rows)

    with_store(obj, run)


@queue.command("show")
@click.argument("queue_id", type=int)
@click.pass_obj
def queue_show(obj: dict[str, Any], queue_id: int) -> None:
    """Everything about one queued message."""
    from correo.cli import Fail, human_size, with_store

    async def run(store: Store, settings: Settings) -> None:
        qs = queue_store_for(store)
        entry = await qs.get_entry(queue_id)
        if entry is None:
            raise Fail(f"no queued message {queue_id}")
        m = entry.message
        now = time.time()
        expires = m.created + settings.queue.expire_after
        click.echo(f"id:        {m.id}")
        click.echo(
            f"queued:    {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(m.created))}"
            f" ({_age(now - m.created)} ago)"
        )
        click.echo(
            f"expires:   {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(expires))}"
            f" ({_when(expires, now)}; expire_after {format_duration(settings.queue.expire_after)})"
        )
        click.echo(f"sender:    <{m.sender}>")
        click.echo(f"size:      {human_size(m.size)}")
        flags = [f for f, on in (("SMTPUTF8", m.smtputf8), ("8BITMIME", m.body_8bit)) if on]
        if m.envid or m.ret or flags:
            options = [f"ENVID={m.envid or '-'}", f"RET={m.ret or '-'}", *flags]
            click.echo(f"options:   {' '.join(options)}")
        click.echo(f"next try:  {_next(entry, now)}")
        click.echo("")
        for r in entry.recipients:
            click.echo(f"  {r.address}: {_state(r)}")
            if r.notify or r.orcpt:
                click.echo(f"    NOTIFY={','.join(sorted(r.notify)) or '-'} ORCPT={r.orcpt or '-'}")
            if not r.state.final:
                click.echo(f"    next attempt {_when(r.next_attempt, now)}")
            if r.status or r.last_error:
                click.echo(f"    last: {r.status or ''} {r.last_error or ''}".rstrip())
            if r.remote_mta:
                click.echo(f"    remote: {r.remote_mta}")
            if r.lease_owner and r.lease_until and r.lease_until > now:
                click.echo(f"    being delivered by {r.lease_owner}")
        body = await qs.read_body(m)
        head = (m.prefix + body).split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        click.echo("")
        click.echo(head)

    with_store(obj, run)


@queue.command("retry")
@click.argument("queue_id", type=int, required=False)
@click.option("--all", "all_", is_flag=True, help="Every queued message.")
@click.pass_obj
def queue_retry(obj: dict[str, Any], queue_id: int | None, all_: bool) -> None:
    """Try QUEUE_ID (or --all) again now."""
    from correo.cli import Fail, with_store

    if (queue_id is None) == (not all_):
        raise Fail("give a queue id or --all (not both)")

    async def run(store: Store, _s: Settings) -> None:
        qs = queue_store_for(store)
        if queue_id is not None and await qs.get_entry(queue_id) is None:
            raise Fail(f"no queued message {queue_id}")
        n = await qs.retry(queue_id, time.time())
        click.echo(f"{n} recipient(s) due now")

    with_store(obj, run)


@queue.command("bounce")
@click.argument("queue_id", type=int)
@click.pass_obj
def queue_bounce(obj: dict[str, Any], queue_id: int) -> None:
    """Give up on QUEUE_ID: its unfinished recipients fail and the sender gets a bounce."""
    from correo.cli import with_store

    async def run(store: Store, _s: Settings) -> None:
        n = await queue_store_for(store).bounce(
            queue_id, "x-local; returned to sender by the postmaster", time.time()
        )
        click.echo(f"{n} recipient(s) failed; the sender will get a bounce")

    with_store(obj, run)


@queue.command("remove")
@click.argument("queue_id", type=int)
@click.pass_obj
def queue_remove(obj: dict[str, Any], queue_id: int) -> None:
    """Delete QUEUE_ID without delivering it and without telling the sender."""
    from correo.cli import Fail, with_store

    async def run(store: Store, _s: Settings) -> None:
        if not await queue_store_for(store).remove(queue_id):
            raise Fail(f"no queued message {queue_id}")
        click.echo(f"queued message {queue_id} removed")

    with_store(obj, run)


def register(main: click.Group) -> None:
    main.add_command(queue)
