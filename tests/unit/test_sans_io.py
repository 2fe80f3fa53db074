"""DESIGN.md principle 1: protocol cores import no asyncio, socket, ssl or store code.

Every module named here is checked by parsing its imports (not by grepping), so a
core that reaches for the network or the database fails this test."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[2] / "correo"
BANNED = (
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "sqlite3",
    "asyncpg",
    "correo.store.sqlite",
    "correo.store.postgres",
    "correo.net",
)
CORE_NAMES = (
    "protocol",
    "parser",
    "encoder",
    "lexer",
    "grammar",
    "machine",
    "stuffing",
    "maildrop",
    "capa",
    "utf7",
    "sasl",
    "proxy",
    "view",
    "commands",
    "replies",
    "data",
)


def core_modules() -> list[Path]:
    found = [
        p
        for p in PKG.rglob("*.py")
        if p.stem in CORE_NAMES or p.stem.startswith(("protocol", "parser"))
    ]
    return sorted(found)


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_cores_exist() -> None:
    stems = {p.relative_to(PKG).as_posix() for p in core_modules()}
    for expected in (
        "smtp/protocol.py",
        "pop3/protocol.py",
        "imap/parser.py",
        "auth/sasl.py",
        "net/proxy.py",
    ):
        assert expected in stems


@pytest.mark.parametrize("path", core_modules(), ids=lambda p: p.relative_to(PKG).as_posix())
def test_core_is_sans_io(path: Path) -> None:
    bad = {n for n in imports(path) for b in BANNED if n == b or n.startswith(b + ".")}
    assert not bad, f"{path.relative_to(PKG)} imports {sorted(bad)}"
