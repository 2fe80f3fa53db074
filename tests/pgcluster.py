"""A throwaway PostgreSQL cluster for the tests (as pytest-postgresql does).

``initdb`` + ``pg_ctl`` in a temp dir, listening on a free loopback port and a private
socket dir, stopped at the end. PostgreSQL refuses to run as root, so as root the server
runs as the ``postgres`` user (``runuser``). When no server binaries are found the tests
that need it are skipped with the reason — unless ``CORREO_REQUIRE_POSTGRES=1`` (set by
``.ci/run``), where they fail.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def find_bindir() -> Path | None:
    env = os.environ.get("CORREO_PG_BINDIR")
    if env:
        return Path(env)
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    if found:
        return Path(found[0]).parent
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_owner(cmd: list[str]) -> list[str]:
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--", *cmd]
    return cmd


@contextmanager
def postgres_cluster() -> Iterator[str]:
    """Yield a DSN for a fresh cluster with database ``correo``; stop it afterwards."""
    bindir = find_bindir()
    if bindir is None:
        raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found")
    root = Path(tempfile.mkdtemp(prefix="correo-pg-"))
    data, sock = root / "data", root / "sock"
    sock.mkdir()
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(sock, "postgres")
        os.chmod(root, 0o755)
    port = _free_port()
    log = root / "log"
    subprocess.run(
        _as_owner(
            [
                str(bindir / "initdb"),
                "-D",
                str(data),
                "-U",
                "correo",
                "-A",
                "trust",
                "-E",
                "UTF8",
                "--no-locale",
                "--no-sync",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    opts = (
        f"-c listen_addresses=127.0.0.1 -c port={port} -c unix_socket_directories={sock} "
        "-c fsync=on -c max_connections=200 -c shared_buffers=64MB"
    )
    subprocess.run(
        _as_owner(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-o",
                opts,
                "-w",
                "-t",
                "60",
                "start",
            ]
        ),
        check=True,
        capture_output=True,
        timeout=90,
    )
    try:
        dsn_admin = f"postgresql://correo@127.0.0.1:{port}/postgres"
        deadline = time.monotonic() + 30
        while True:
            r = subprocess.run(
                _as_owner(
                    [
                        str(bindir / "createdb"),
                        "-h",
                        "127.0.0.1",
                        "-p",
                        str(port),
                        "-U",
                        "correo",
                        "correo",
                    ]
                ),
                capture_output=True,
                timeout=30,
            )
            if r.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        del dsn_admin
        yield f"postgresql://correo@127.0.0.1:{port}/correo"
    finally:
        subprocess.run(
            _as_owner([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop"]),
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)


def require_postgres() -> bool:
    return os.environ.get("CORREO_REQUIRE_POSTGRES") == "1"
