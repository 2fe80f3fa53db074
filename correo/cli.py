"""The ``correo`` command: init, serve, and the operator's admin commands.

Every command loads the config the same way (``-c``, then ``$CORREO_CONFIG``, then
``./correo.toml``) and opens the store the same way (applying pending migrations), so
admin commands work on a fresh database before any ``serve``. Errors print one line and
exit non-zero; listings print aligned tables.
"""

from __future__ import annotations

import asyncio
import getpass
import secrets
import sys
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import click

from correo import __version__
from correo.config import ConfigError, Settings, config_path, load
from correo.store.base import AlreadyExists, NotFound, Store, StoreError

T = TypeVar("T")


class Fail(click.ClickException):
    """One-line error, exit status 1."""

    def show(self, file: Any = None) -> None:
        click.echo(f"correo: {self.format_message()}", err=True)


def _settings(obj: dict[str, Any]) -> Settings:
    if "settings" not in obj:
        try:
            obj["settings"] = load(config_path(obj.get("config")))
        except ConfigError as exc:
            raise Fail(str(exc)) from None
    settings: Settings = obj["settings"]
    return settings


def with_store(obj: dict[str, Any], fn: Callable[[Store, Settings], Awaitable[T]]) -> T:
    """Open the store (migrating it), run ``fn``, close it; store errors become one line."""
    settings = _settings(obj)

    async def run() -> T:
        from correo.store import open_store

        store = await open_store(settings)
        try:
            return await fn(store, settings)
        finally:
            await store.close()

    try:
        return asyncio.run(run())
    except (AlreadyExists, NotFound) as exc:
        raise Fail(str(exc)) from None
    except StoreError as exc:
        raise Fail(f"store: {exc}") from None


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> None:
    """Print an aligned table (numbers right-aligned)."""
    cells = [[str(c) for c in row] for row in rows]
    widths = [len(h) for h in headers]
    for row in cells:
        for i, c in enumerate(row):
            widths[i] = max(widths[i], len(c))
    numeric = [all(_isnum(r[i]) for r in cells) and bool(cells) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        out = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(out).rstrip()

    click.echo(line(list(headers)))
    for row in cells:
        click.echo(line(row))
    if not rows:
        click.echo("(none)")


def _isnum(s: str) -> bool:
    return s.replace(".", "", 1).replace(" ", "").rstrip("KMGB%").isdigit()


def human_size(n: int) -> str:
    for unit, size in (("G", 1024**3), ("M", 1024**2), ("K", 1024)):
        if n >= size:
            return f"{n / size:.1f}{unit}"
    return f"{n}B"


def read_password(password_stdin: bool, confirm: bool = True) -> str:
    if password_stdin:
        pw = sys.stdin.readline().rstrip("\r\n")
    else:
        pw = getpass.getpass("Password: ")
        if confirm and getpass.getpass("Again: ") != pw:
            raise Fail("passwords differ")
    if not pw:
        raise Fail("empty password")
    return pw


def hash_for(settings: Settings, password: str) -> str:
    from correo.auth.passwords import hash_password

    return hash_password(password, settings.auth)


# --------------------------------------------------------------------------- root


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "-c",
    "--config",
    type=click.Path(dir_okay=False),
    help="Config file (default: $CORREO_CONFIG, then ./correo.toml, then"
    " ./correo-data/correo.toml as made by `make run`).",
)
@click.version_option(__version__, prog_name="correo")
@click.pass_context
def main(ctx: click.Context, config: str | None) -> None:
    """correo: a mail server for your domains (SMTP, POP3, IMAP, outbound queue).

    Start with `correo init DIR --domain example.org`, then
    `correo -c DIR/correo.toml serve`. Add accounts with `correo user add`.
    """
    ctx.ensure_object(dict)
    ctx.obj["config"] = config


# --------------------------------------------------------------------------- init


DEFAULT_PORTS = {
    "smtp": 2525,
    "submission": 2587,
    "submissions": 2465,
    "pop3": 2110,
    "pop3s": 2995,
    "imap": 2143,
    "imaps": 2993,
}


def render_config(hostname: str, srs_secret: str) -> str:
    """The config ``correo init`` writes: loopback listeners, the self-signed pair."""
    listen = "\n".join(f'{name} = ["127.0.0.1:{port}"]' for name, port in DEFAULT_PORTS.items())
    return (
        "# correo configuration, written by `correo init`.\n"
        "# Every key and its default is documented in correo.example.toml (in the source).\n"
        f'hostname = "{hostname}"\n'
        'data_dir = "data"\n\n'
        "[listen]\n"
        "# Loopback only; for production use the standard ports on public addresses:\n"
        '# smtp = ["0.0.0.0:25"], submission = ["0.0.0.0:587"], submissions = ["0.0.0.0:465"],\n'
        '# pop3 = ["0.0.0.0:110"], pop3s = ["0.0.0.0:995"], imap = ["0.0.0.0:143"],\n'
        '# imaps = ["0.0.0.0:993"]\n'
        f"{listen}\n\n"
        "[tls]\n"
        "# Self-signed; replace with your CA-issued files (reloaded on SIGHUP).\n"
        'cert = "tls/cert.pem"\n'
        'key = "tls/key.pem"\n\n'
        "[relay]\n"
        f'srs_secret = "{srs_secret}"\n'
    )


@main.command()
@click.argument("directory", type=click.Path(file_okay=False), default=".")
@click.option(
    "--hostname",
    default="localhost",
    show_default=True,
    help="This server's name (EHLO, Received:, certificate).",
)
@click.option("--domain", "domains", multiple=True, help="A domain to host (repeatable).")
@click.option(
    "--demo-user",
    default=None,
    help="Also create this local part in the first domain with a random password (printed).",
)
def init(directory: str, hostname: str, domains: tuple[str, ...], demo_user: str | None) -> None:
    """Create DIRECTORY/correo.toml, a self-signed certificate and the database.

    Refuses to overwrite an existing config. Listeners are on loopback ports 2525 (SMTP),
    2587 (submission), 2465 (submissions), 2110/2995 (POP3/POP3S), 2143/2993 (IMAP/IMAPS).
    """
    from correo.net.tls import make_self_signed

    root = Path(directory)
    cfg = root / "correo.toml"
    if cfg.exists():
        raise Fail(f"{cfg}: already exists; not overwriting")
    if demo_user and not domains:
        raise Fail("--demo-user needs --domain")
    root.mkdir(parents=True, exist_ok=True)
    (root / "tls").mkdir(exist_ok=True)
    make_self_signed(hostname, root / "tls" / "cert.pem", root / "tls" / "key.pem")
    cfg.write_text(render_config(hostname, secrets.token_hex(16)))
    click.echo(f"wrote {cfg}")
    obj: dict[str, Any] = {"config": str(cfg)}
    password = secrets.token_urlsafe(12)

    async def populate(store: Store, settings: Settings) -> None:
        for d in domains:
            await store.add_domain(d)
            click.echo(f"domain {d.lower()} added")
        if demo_user:
            address = f"{demo_user}@{domains[0]}".lower()
            await store.add_account(address, hash_for(settings, password))
            click.echo(f"user {address} added; password: {password}")
            for d in domains:  # RFC 5321 §4.5.1: every domain needs a postmaster
                if address != f"postmaster@{d.lower()}":
                    await store.add_alias(f"postmaster@{d}", [address])
                    click.echo(f"alias postmaster@{d.lower()} -> {address} added")

    with_store(obj, populate)
    click.echo(f"database ready in {_settings(obj).data_dir}")
    click.echo(f"start with: correo -c {cfg} serve")


# --------------------------------------------------------------------------- serve


@main.command()
@click.pass_obj
def serve(obj: dict[str, Any]) -> None:
    """Run every configured listener in one process until SIGTERM/SIGINT.

    SIGHUP reloads the TLS certificates. Started as root, correo binds its ports and then
    drops to [server] user.
    """
    from correo.server import Server, configure_logging, install_event_loop_policy
    from correo.workers import WorkerError

    settings = _settings(obj)
    configure_logging(settings.server.log_level)
    loop_name = install_event_loop_policy()
    server = Server(settings)

    def ready(srv: Server) -> None:
        assert srv.runner is not None
        click.echo(
            f"correo {__version__} serving {settings.hostname} ({loop_name}); "
            f"data in {settings.data_dir}"
        )
        for name, addrs in srv.runner.bound.items():
            for addr in addrs:
                click.echo(f"  {name:<12} {addr!s:<22} {try_line(name, addr)}")
        click.echo("Ctrl-C stops.", err=False)
        sys.stdout.flush()

    try:
        asyncio.run(server.serve_forever(ready))
    except ConfigError as exc:
        raise Fail(str(exc)) from None
    except OSError as exc:
        raise Fail(f"cannot start: {exc.strerror or exc}") from None
    except WorkerError as exc:
        raise Fail(f"cannot start: {exc}") from None


def try_line(service: str, addr: object) -> str:
    """A copy-paste command to try the service (curl prompts for the password)."""
    host, port = str(addr).rsplit(":", 1)
    user = "USER@example.test"
    return {
        "smtp": f"swaks --server {host}:{port} --to {user}",
        "submission": f"swaks --server {host}:{port} --tls --auth --au {user} --to {user}",
        "submissions": f"swaks --server {host}:{port} --tlsc --auth --au {user} --to {user}",
        "pop3": f"curl -k --ssl-reqd pop3://{host}:{port}/ -u {user}",
        "pop3s": f"curl -k pop3s://{host}:{port}/ -u {user}",
        "imap": f"curl -k --ssl-reqd 'imap://{host}:{port}/INBOX' -u {user}",
        "imaps": f"curl -k 'imaps://{host}:{port}/INBOX' -u {user}",
    }.get(service, "")


# --------------------------------------------------------------------------- domains


@main.group()
def domain() -> None:
    """Add, list and remove hosted domains."""


@domain.command("add")
@click.argument("name")
@click.pass_obj
def domain_add(obj: dict[str, Any], name: str) -> None:
    """Host mail for NAME."""

    async def run(store: Store, _s: Settings) -> None:
        d = await store.add_domain(name)
        click.echo(f"domain {d.name} added")
        click.echo(
            f"hint: give it a postmaster (RFC 5321 §4.5.1): correo alias add postmaster@{d.name}"
            f" you@{d.name}, or set [smtp] postmaster"
        )

    with_store(obj, run)


@domain.command("list")
@click.pass_obj
def domain_list(obj: dict[str, Any]) -> None:
    """List hosted domains with their account and alias counts."""

    async def run(store: Store, _s: Settings) -> None:
        rows = []
        for d in await store.list_domains():
            accounts = await store.list_accounts(d.name)
            aliases = await store.list_aliases(d.name)
            rows.append((d.name, len(accounts), len(aliases)))
        table(("DOMAIN", "ACCOUNTS", "ALIASES"), rows)

    with_store(obj, run)


@domain.command("remove")
@click.argument("name")
@click.option("--force", is_flag=True, help="Also remove its accounts, aliases and mail.")
@click.pass_obj
def domain_remove(obj: dict[str, Any], name: str, force: bool) -> None:
    """Stop hosting NAME (refused while it has users, unless --force)."""

    async def run(store: Store, _s: Settings) -> None:
        await store.remove_domain(name, force=force)
        click.echo(f"domain {name.lower()} removed")

    with_store(obj, run)


from correo import cli_accounts, cli_queue, cli_store  # noqa: E402  (they import cli)

for _group in (cli_accounts, cli_queue, cli_store):
    _group.register(main)
