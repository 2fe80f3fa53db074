"""``correo store copy``: move an installation between stores (SQLite ⇄ PostgreSQL).

The engine is ``correo.store.postgres_copy``; this is the command line around it:
configs, a progress bar, the final verification table and the exit status (1 when a
count differs).
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import click

from correo.cli import Fail, table
from correo.config import ConfigError, Settings, load
from correo.store.base import StoreError


def _load(path: str, option: str) -> Settings:
    try:
        return load(Path(path))
    except ConfigError as exc:
        raise Fail(f"{option}: {exc}") from None


def _describe(settings: Settings) -> str:
    s = settings.storage
    if s.backend == "postgresql":
        return f"postgresql ({s.blobs or 'database'} bodies)"
    return f"sqlite {settings.db_path}"


def _same_place(a: Settings, b: Settings) -> bool:
    if a.storage.backend != b.storage.backend:
        return False
    if a.storage.backend == "postgresql":
        return a.storage.url == b.storage.url
    return a.db_path.resolve() == b.db_path.resolve()


@click.group("store")
def store_group() -> None:
    """Operations on the whole store (moving an installation)."""


@store_group.command("copy")
@click.option(
    "--from", "source", required=True, type=click.Path(dir_okay=False), help="Source config."
)
@click.option(
    "--to", "dest", required=True, type=click.Path(dir_okay=False), help="Destination config."
)
def store_copy(source: str, dest: str) -> None:
    """Copy every domain, account, alias, mailbox, message, flag, UIDVALIDITY/UID/MODSEQ,
    change-log row and queue entry from the store of config SOURCE to that of DEST
    (SQLite to PostgreSQL or back), so IMAP and POP3 clients need not resynchronise.

    Stop correo on the source first. Safe to run again after an interruption: rows
    already copied are skipped. Ends by comparing counts; exits 1 when any differs.
    """
    try:
        from correo.store.postgres_copy import CopyError, copy_store, totals
        from correo.store.postgres_copy_io import side_for
    except ModuleNotFoundError as exc:  # asyncpg: the optional "postgresql" extra
        raise Fail(f"{exc.name} is not installed (pip install 'correo[postgresql]')") from None

    a, b = _load(source, "--from"), _load(dest, "--to")
    if _same_place(a, b):
        raise Fail("--from and --to name the same store")

    async def run() -> list[Any]:
        src, dst = side_for(a), side_for(b)
        await src.open(source=True)
        try:
            await dst.open(source=False)
            try:
                total = sum((await totals(src)).values())
                click.echo(f"copying {total} rows: {_describe(a)} -> {_describe(b)}")
                with click.progressbar(length=total, label="copying", show_pos=True) as bar:
                    return await copy_store(src, dst, bar.update)
            finally:
                await dst.close()
        finally:
            await src.close()

    try:
        checks = asyncio.run(run())
    except CopyError as exc:
        raise Fail(str(exc)) from None
    except (StoreError, OSError) as exc:
        raise Fail(f"store: {exc}") from None
    table(
        ("what", "source", "destination", "check"),
        [(c.table, c.source, c.destination, "ok" if c.ok else "DIFFERS") for c in checks],
    )
    bad = [c.table for c in checks if not c.ok]
    if bad:
        raise Fail(
            f"counts differ for {', '.join(bad)}: was the source changed during the copy?"
            " Stop correo on it and run the copy again"
        )
    click.echo("copy complete: every count matches")


def register(main: click.Group) -> None:
    main.add_command(store_group)
