"""``correo user …``, ``correo alias …`` and ``correo backup``."""

from __future__ import annotations

import time
from typing import Any

import click

from correo.cli import Fail, hash_for, human_size, read_password, table, with_store
from correo.config import Settings, parse_size
from correo.store.base import Store


def _quota(value: str | None) -> int:
    if value is None:
        return 0
    try:
        return parse_size(value if not value.isdigit() else int(value))
    except ValueError as exc:
        raise Fail(f"--quota: {exc}") from None


@click.group()
def user() -> None:
    """Add, list, change and remove mail accounts."""


@user.command("add")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.option("--quota", default=None, help='Storage quota such as "2G" (default: unlimited).')
@click.pass_obj
def user_add(obj: dict[str, Any], address: str, password_stdin: bool, quota: str | None) -> None:
    """Create the account ADDRESS (its domain must be hosted) with the standard folders."""
    if "@" not in address:
        raise Fail(f"{address}: expected user@domain")
    q = _quota(quota)
    password = read_password(password_stdin)

    async def run(store: Store, settings: Settings) -> None:
        acct = await store.add_account(address, hash_for(settings, password), q)
        click.echo(f"user {acct.address} added")

    with_store(obj, run)


@user.command("list")
@click.option("--domain", default=None, help="Only this domain.")
@click.pass_obj
def user_list(obj: dict[str, Any], domain: str | None) -> None:
    """List accounts with quota, usage and state."""

    async def run(store: Store, _s: Settings) -> None:
        rows = [
            (
                a.address,
                human_size(a.quota) if a.quota else "unlimited",
                human_size(a.used),
                "disabled" if a.disabled else "active",
                time.strftime("%Y-%m-%d", time.localtime(a.created)),
            )
            for a in await store.list_accounts(domain)
        ]
        table(("ADDRESS", "QUOTA", "USED", "STATE", "CREATED"), rows)

    with_store(obj, run)


@user.command("passwd")
@click.argument("address")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input.")
@click.pass_obj
def user_passwd(obj: dict[str, Any], address: str, password_stdin: bool) -> None:
    """Set a new password for ADDRESS."""
    password = read_password(password_stdin)

    async def run(store: Store, settings: Settings) -> None:
        await store.set_password(address, hash_for(settings, password))
        click.echo(f"password of {address.lower()} changed")

    with_store(obj, run)


@user.command("quota")
@click.argument("address")
@click.argument("size")
@click.pass_obj
def user_quota(obj: dict[str, Any], address: str, size: str) -> None:
    """Set the storage quota of ADDRESS (0 = unlimited)."""
    q = _quota(size)

    async def run(store: Store, _s: Settings) -> None:
        await store.set_quota(address, q)
        click.echo(f"quota of {address.lower()} set to {human_size(q) if q else 'unlimited'}")

    with_store(obj, run)


def _set_disabled(obj: dict[str, Any], address: str, disabled: bool) -> None:
    async def run(store: Store, _s: Settings) -> None:
        await store.set_disabled(address, disabled)
        click.echo(f"user {address.lower()} {'disabled' if disabled else 'enabled'}")

    with_store(obj, run)


@user.command("disable")
@click.argument("address")
@click.pass_obj
def user_disable(obj: dict[str, Any], address: str) -> None:
    """Stop ADDRESS from logging in and sending (it still receives mail)."""
    _set_disabled(obj, address, True)


@user.command("enable")
@click.argument("address")
@click.pass_obj
def user_enable(obj: dict[str, Any], address: str) -> None:
    """Allow a disabled ADDRESS to log in and send again."""
    _set_disabled(obj, address, False)


@user.command("remove")
@click.argument("address")
@click.pass_obj
def user_remove(obj: dict[str, Any], address: str) -> None:
    """Delete ADDRESS and all of its mail."""

    async def run(store: Store, _s: Settings) -> None:
        await store.remove_account(address)
        click.echo(f"user {address.lower()} removed")

    with_store(obj, run)


@click.group()
def alias() -> None:
    """Map addresses to other addresses ("@domain" is a catch-all)."""


@alias.command("add")
@click.argument("source")
@click.argument("targets", nargs=-1, required=True)
@click.pass_obj
def alias_add(obj: dict[str, Any], source: str, targets: tuple[str, ...]) -> None:
    """Deliver mail for SOURCE to TARGETS (local or remote addresses)."""
    for t in targets:
        if "@" not in t or t.startswith("@"):
            raise Fail(f"{t}: expected user@domain")

    async def run(store: Store, _s: Settings) -> None:
        a = await store.add_alias(source, targets)
        click.echo(f"alias {a.source} -> {', '.join(a.targets)} added")

    with_store(obj, run)


@alias.command("list")
@click.option("--domain", default=None, help="Only this domain.")
@click.pass_obj
def alias_list(obj: dict[str, Any], domain: str | None) -> None:
    """List aliases."""

    async def run(store: Store, _s: Settings) -> None:
        rows = [(a.source, ", ".join(a.targets)) for a in await store.list_aliases(domain)]
        table(("ALIAS", "TARGETS"), rows)

    with_store(obj, run)


@alias.command("remove")
@click.argument("source")
@click.pass_obj
def alias_remove(obj: dict[str, Any], source: str) -> None:
    """Remove the alias SOURCE."""

    async def run(store: Store, _s: Settings) -> None:
        await store.remove_alias(source)
        click.echo(f"alias {source.lower()} removed")

    with_store(obj, run)


@click.command()
@click.argument("dest", type=click.Path(file_okay=False))
@click.pass_obj
def backup(obj: dict[str, Any], dest: str) -> None:
    """Write a consistent copy of the database and message files into DEST (safe while
    the server runs; copying a live WAL database with cp is not)."""

    async def run(store: Store, _s: Settings) -> None:
        await store.backup(dest)
        click.echo(f"backup written to {dest}")

    with_store(obj, run)


def register(main: click.Group) -> None:
    main.add_command(user)
    main.add_command(alias)
    main.add_command(backup)
