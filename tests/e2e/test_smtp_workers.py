"""The MX listener served by worker processes (``[smtp] workers``, ``correo.workers``).

Real sockets, real processes, a real SQLite file: mail sent to the shared port lands in
the INBOX; an IMAP IDLE in the main process sees a worker's delivery at once; a
forwarding alias handled by a worker wakes the main process's queue runner; a worker
killed with SIGKILL is replaced and the port keeps answering; and with ``correo serve``
itself, a message answered 250 by a worker survives SIGKILL of every process, and
workers do not outlive their main process.
"""

from __future__ import annotations

import asyncio
import errno
import os
import re
import signal
import smtplib
import socket
import sqlite3
import ssl
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import test_queue_relay
import test_real_clients_smtp as real
from cryptography import x509
from imapclient import IMAPClient
from test_queue_relay import inbox, wait_for
from test_real_clients import USER, describe, need_swaks_tls, texts

from correo import config
from correo.mail.message import prepare
from correo.net.tls import make_self_signed
from correo.queue import runner as queue_runner
from correo.server import Server
from correo.store.base import LocalDelivery
from correo.store.sqlite import SqliteStore
from correo.workers import WorkerError

sinks = test_queue_relay.sinks  # the fixture

WORKERS = "[smtp]\nworkers = 2\n"
REPO = Path(__file__).resolve().parent.parent.parent


def message(n: int) -> bytes:
    return (
        f"From: carol@origin.test\r\nTo: alice@example.test\r\nSubject: w{n}\r\n"
        f"Message-ID: <w{n}@origin.test>\r\n\r\nbody {n}\r\n"
    ).encode()


def send(port: int, n: int, rcpt: str = "alice@example.test") -> None:
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.ehlo("origin.test")
        assert client.sendmail("carol@origin.test", [rcpt], message(n)) == {}


def subjects(ms: Any) -> list[str]:
    return sorted(str(m["Subject"]) for m in inbox(ms, "alice@example.test"))


def test_mail_to_the_shared_port_lands_in_the_inbox(make_mailserver: Any) -> None:
    ms = make_mailserver(WORKERS)
    assert ms.server.workers is not None and len(ms.server.workers.pids) == 2
    assert ms.server.runner.bound["smtp"][0].port == ms.ports["smtp"]
    with ThreadPoolExecutor(8) as pool:
        list(pool.map(lambda n: send(ms.ports["smtp"], n), range(40)))
    assert subjects(ms) == sorted(f"w{n}" for n in range(40))


def test_idle_in_the_main_process_sees_a_worker_delivery(make_mailserver: Any) -> None:
    ms = make_mailserver(WORKERS)
    with IMAPClient(ms.host, port=ms.ports["imap"], ssl=False) as imap:
        imap.starttls(ms.client_tls())
        imap.login("alice@example.test", "secret")
        imap.select_folder("INBOX")
        imap.idle()
        started = time.monotonic()
        send(ms.ports["smtp"], 1)
        seen: list[Any] = []
        while time.monotonic() - started < 5 and not any(b"EXISTS" in r for r in seen):
            seen += imap.idle_check(timeout=1)
        imap.idle_done()
        assert (1, b"EXISTS") in seen
        assert time.monotonic() - started < 3


def test_swaks_starttls_through_a_worker(make_mailserver: Any, tmp_path: Path) -> None:
    """A real MTA-like client on the shared port: STARTTLS (RFC 3207) is served by the
    worker with the main process's certificate, and the Received field says so."""
    need_swaks_tls()
    ms = make_mailserver(WORKERS)
    data = real.message("worker-tls")
    proc = real.swaks(
        ms, "smtp", "-tls", "--tls-verify", "--tls-ca-path", str(ms.cafile), "--tls-sni",
        "localhost", "--from", "carol@elsewhere.test", "--to", USER,
        "--data", real.data_file(tmp_path, data),
    )  # fmt: skip
    assert proc.returncode == 0, describe(proc)
    (text,) = texts(ms, ms.alice)
    assert re.search(rb"\t\(using TLSv1\.[23] [A-Z0-9_-]+\)\r\n\twith ESMTPS id ", text)


def starttls_subject(port: int) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with smtplib.SMTP("127.0.0.1", port, timeout=30) as client:
        client.starttls(context=ctx)
        sock = client.sock
        assert isinstance(sock, ssl.SSLSocket)
        der = sock.getpeercert(binary_form=True)
        assert der is not None
    return x509.load_der_x509_certificate(der).subject.rfc4514_string()


def test_sighup_reaches_the_workers(make_mailserver: Any, tmp_path: Path) -> None:
    """A renewed certificate (SIGHUP: Server.reload_tls) is used by new STARTTLS
    handshakes in every worker, not only in the main process."""
    cert, key = tmp_path / "mx.pem", tmp_path / "mx.key"
    make_self_signed("first.example.test", cert, key)
    ms = make_mailserver(WORKERS + f'[tls]\ncert = "{cert}"\nkey = "{key}"\n')
    port = ms.ports["smtp"]
    assert {starttls_subject(port) for _ in range(6)} == {"CN=first.example.test"}
    make_self_signed("renewed.example.test", cert, key)

    async def hup() -> None:
        ms.server.reload_tls()

    ms.run(hup())
    # the kernel spreads connections over both workers: eight in a row all renewed
    wait_for(
        lambda: {starttls_subject(port) for _ in range(8)} == {"CN=renewed.example.test"},
        timeout=10,
    )


def test_forwarding_through_a_worker_wakes_the_queue_runner(
    make_mailserver: Any, sinks: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Without the worker's "Q" the runner would only look again after RECHECK seconds.
    monkeypatch.setattr(queue_runner, "RECHECK", 60.0)
    sink = sinks()
    ms = make_mailserver(
        WORKERS
        + '[relay]\nsrs_secret = "s3cret"\n'
        + f'[relay.routes]\n"remote.test" = "127.0.0.1:{sink.port}"\n'
    )
    ms.run(ms.store.add_alias("fwd@example.test", ["someone@remote.test"]))
    time.sleep(0.5)  # let the runner settle into its (now long) wait
    send(ms.ports["smtp"], 7, rcpt="fwd@example.test")
    (got,) = wait_for(lambda: sink.received, timeout=10)
    assert got.rcpts == ["someone@remote.test"]


def test_connection_limits_hold_across_processes(make_mailserver: Any) -> None:
    """max_connections_per_ip counts the client's connections in every process: two on
    the MX port (wherever the kernel put them) and one to IMAP in the main process use
    up a limit of 3, so both another MX and another IMAP connection are refused."""
    ms = make_mailserver("[smtp]\nworkers = 2\n[limits]\nmax_connections_per_ip = 3\n")
    port = ms.ports["smtp"]
    held = [smtplib.SMTP("127.0.0.1", port, timeout=30) for _ in range(2)]
    imap = IMAPClient(ms.host, port=ms.ports["imap"], ssl=False)
    try:
        for _ in range(4):  # each attempt may land on either worker
            with pytest.raises(smtplib.SMTPConnectError) as refused:
                smtplib.SMTP("127.0.0.1", port, timeout=30)
            assert refused.value.smtp_code == 421
        with socket.create_connection((ms.host, ms.ports["imap"]), timeout=30) as extra:
            assert extra.recv(200).startswith(b"* BYE")
    finally:
        for client in held:
            client.quit()
        imap.logout()

    def free_again() -> bool:  # once the processes have seen those sessions end
        try:
            send(port, 1)
        except smtplib.SMTPConnectError:
            return False
        return True

    wait_for(free_again, timeout=10)


def test_a_killed_worker_is_replaced_and_the_other_serves_meanwhile(make_mailserver: Any) -> None:
    ms = make_mailserver(WORKERS)
    pool = ms.server.workers
    victim = pool.pids[0]
    os.kill(victim, signal.SIGKILL)
    # every worker accepts on the same sockets: nothing waits for the replacement
    started = time.monotonic()
    for n in range(6):
        send(ms.ports["smtp"], n)
    assert time.monotonic() - started < 5
    wait_for(lambda: len(pool.pids) == 2 and victim not in pool.pids, timeout=20)
    with ThreadPoolExecutor(4) as executor:
        list(executor.map(lambda n: send(ms.ports["smtp"], n), range(6, 18)))
    assert len(subjects(ms)) == 18


def test_a_dead_workers_unreported_changes_are_announced(make_mailserver: Any) -> None:
    """A commit a worker made but had not reported yet (it died within the 5 ms it
    gathers changes) still reaches IDLE: the main process re-announces every watched
    mailbox when a worker exits. Stand-in for that commit: a delivery through a store
    of this test's own on the same database, which tells the server nothing."""
    ms = make_mailserver(WORKERS)
    other = SqliteStore(ms.settings.db_path, ms.settings.blob_dir)
    with IMAPClient(ms.host, port=ms.ports["imap"], ssl=False) as imap:
        imap.starttls(ms.client_tls())
        imap.login("alice@example.test", "secret")
        imap.select_folder("INBOX")
        imap.idle()

        async def deliver_unannounced() -> None:
            await other.open()
            try:
                await other.deliver(prepare(message(1)), [LocalDelivery(ms.alice.id)])
            finally:
                await other.close()

        asyncio.run(deliver_unannounced())
        assert not any(b"EXISTS" in r for r in imap.idle_check(timeout=1))
        os.kill(ms.server.workers.pids[0], signal.SIGKILL)
        seen: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and (1, b"EXISTS") not in seen:
            seen += imap.idle_check(timeout=1)
        imap.idle_done()
        assert (1, b"EXISTS") in seen


def test_the_port_cannot_be_taken_twice(make_mailserver: Any, tmp_path: Path) -> None:
    """Like any listener: a second server on the same MX port fails to start (it must not
    quietly share the port and half the mail)."""
    ms = make_mailserver(WORKERS)
    settings = config.loads(
        f'data_dir = "{tmp_path / "other"}"\n'
        f'[listen]\nsmtp = ["127.0.0.1:{ms.ports["smtp"]}"]\n' + WORKERS,
        tmp_path / "other.toml",
    )
    server = Server(settings)

    async def start() -> None:
        try:
            await server.start()
        finally:
            await server.stop()

    with pytest.raises(OSError) as failed:
        asyncio.run(start())
    assert failed.value.errno == errno.EADDRINUSE


async def test_a_worker_that_cannot_start_stops_start_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stands in for an interpreter that cannot import correo: the main process says so
    in one line instead of serving without its MX port."""
    settings = config.loads(
        f'data_dir = "{tmp_path / "data"}"\n[listen]\nsmtp = ["127.0.0.1:0"]\n' + WORKERS,
        tmp_path / "correo.toml",
    )
    monkeypatch.setattr(sys, "executable", "/bin/false")
    server = Server(settings)
    with pytest.raises(WorkerError, match=r"smtp worker 0 did not start \(exit status 1\)"):
        await server.start()
    await server.stop()


# ------------------------------------------------------------------ correo serve


def children(pid: int) -> list[int]:
    path = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in path.read_text().split()] if path.exists() else []


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


@pytest.mark.slow
def test_serve_with_workers_survives_sigkill_and_workers_follow_their_parent(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    cfg = tmp_path / "correo.toml"
    cfg.write_text(
        f'hostname = "mx.example.test"\ndata_dir = "{data}"\n'
        '[listen]\nsmtp = ["127.0.0.1:0"]\n' + WORKERS
    )
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": str(REPO)}
    # started from a directory holding a module named like one the workers import: they
    # run with -P and must not pick it up (the main process is the installed script)
    (tmp_path / "pickle.py").write_text(f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\n")
    script = Path(sys.executable).parent / "correo"
    entry = [str(script)] if script.exists() else [sys.executable, "-P", "-m", "correo"]
    correo = [*entry, "-c", str(cfg)]
    subprocess.run([*correo, "domain", "add", "example.test"], check=True, env=env)
    subprocess.run(
        [*correo, "user", "add", "alice@example.test", "--password-stdin"],
        input=b"secret\n",
        check=True,
        env=env,
    )
    proc = subprocess.Popen(
        [*correo, "serve"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
        cwd=tmp_path,
    )
    try:
        assert proc.stdout is not None
        port = 0
        for line in proc.stdout:
            parts = line.split()
            if parts[:1] == ["smtp"]:
                port = int(parts[1].rsplit(":", 1)[1])
            if "Ctrl-C stops." in line:
                break
        assert port, "no smtp port printed"
        workers = children(proc.pid)
        assert len(workers) == 2
        # no [tls] here: a SIGHUP (logrotate, systemctl reload) must not kill the workers
        proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert children(proc.pid) == workers and all(alive(w) for w in workers)
        for n in range(5):
            send(port, n)  # each answered 250 by one of the workers
        assert not (tmp_path / "PWNED").exists()
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        # the channel's EOF tells each worker its main process is gone
        wait_for(lambda: not any(alive(w) for w in workers), timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    db = sqlite3.connect(data / "correo.db")
    try:
        (count,) = db.execute(
            "SELECT count(*) FROM messages m JOIN mailboxes b ON b.id = m.mailbox_id"
            " JOIN accounts a ON a.id = b.account_id"
            " WHERE a.address = 'alice@example.test' AND b.name = 'INBOX'"
        ).fetchone()
    finally:
        db.close()
    assert count == 5
