"""SMTP receiving throughput: messages/s accepted *and durably stored* in local INBOXes.

Usage::

    .venv/bin/python bench/smtp_in.py [--seconds 5] [--sizes 4096,65536] [--conns 1,20]
    # also Postfix's smtp-source against correo, and against the reference Postfix of
    # ../shared/peers (peers-setup.sh setup && start) in the same run:
    .venv/bin/python bench/smtp_in.py --smtp-source --postfix 127.0.0.1:10025

``smtp-source`` runs go through ``../shared/peers/smtp-bench.sh`` and honour its
environment: ``REUSE=1`` keeps each session for many messages (``-d``), ``MSG_FILE=``
sends the same prepared message to both servers. ``--profile FILE`` writes the server's
cProfile statistics.

The script starts its own correo server in a separate process (temporary data directory,
ephemeral loopback ports, real SQLite store with ``synchronous=FULL``), creates
``bench@example.test``, and for each message size and connection count runs N client
connections for a fixed time. Each connection pipelines ``MAIL``, ``RCPT`` and ``DATA``
in one write (RFC 2920: DATA ends a group), then sends the text and waits for the reply:
a 250 comes only after the store committed (DESIGN.md "never lose mail"). At the end the
server is stopped and the INBOX rows are counted in the database to check that every
accepted message is there. Memory is the server processes' summed peak RSS (``VmHWM``).
``--workers N`` serves the MX port from N worker processes (``[smtp] workers``).

The client is Python asyncio in another process: on a 2-core machine client and server
each get roughly one core, so the figure is a floor for the server.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import re
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

RCPT = "bench@example.test"


# --------------------------------------------------------------------------- server side


def write_config(root: Path, workers: int) -> Path:
    cfg = root / "correo.toml"
    cfg.write_text(
        'hostname = "mx.example.test"\n'
        f'data_dir = "{root / "data"}"\n'
        '[listen]\nsmtp = ["127.0.0.1:0"]\n'
        '[limits]\nmax_connections_per_ip = 1000\nmax_message_size = "50M"\n'
        "[auth]\nargon2_time_cost = 1\nargon2_memory_cost = 8\nargon2_parallelism = 1\n"
        '[server]\nlog_level = "WARNING"\n'
        f"[smtp]\nworkers = {workers}\n"
    )
    return cfg


async def serve(config_path: str) -> None:
    """Child process: run correo, create the test account, print the port, wait for stdin
    to close, stop cleanly."""
    import logging

    from correo import config
    from correo.auth.passwords import hash_password
    from correo.server import Server, install_event_loop_policy

    del install_event_loop_policy  # the policy is chosen in main() before the loop starts
    logging.basicConfig(level=logging.WARNING)
    settings = config.load(config_path)
    server = Server(settings)
    await server.start()
    assert server.ctx is not None and server.runner is not None
    store = server.ctx.store
    if not await store.is_local_domain("example.test"):
        await store.add_domain("example.test")
    if await store.get_account(RCPT) is None:
        await store.add_account(RCPT, hash_password("x", settings.auth))
    port = server.runner.bound["smtp"][0].port
    loop_name = os.environ.get("CORREO_BENCH_LOOP", "asyncio")
    pids = [os.getpid(), *(server.workers.pids if server.workers else [])]
    print(json.dumps({"port": port, "pids": pids, "loop": loop_name}), flush=True)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, done.set)
    loop.add_reader(sys.stdin.fileno(), lambda: done.set() if not sys.stdin.read(1) else None)
    await done.wait()
    await server.stop()


def peak_rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


# --------------------------------------------------------------------------- client side


def make_message(size: int) -> bytes:
    """A plain text message of exactly ``size`` octets with 70-octet lines."""
    head = (
        b"From: sender@elsewhere.test\r\nTo: bench@example.test\r\n"
        b"Subject: benchmark\r\nMessage-ID: <x@elsewhere.test>\r\n\r\n"
    )
    line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghij\r\n"
    n = size - len(head)
    body = (line * (n // len(line) + 1))[: n - 2].rstrip(b"\r\n")
    return head + body + b"x" * (n - 2 - len(body)) + b"\r\n"


async def read_reply(reader: asyncio.StreamReader) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line[3:4] != b"-":
            return line


async def client(port: int, message: bytes, until: float, counts: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    await read_reply(reader)
    writer.write(b"EHLO bench.test\r\n")
    await read_reply(reader)
    group = f"MAIL FROM:<sender@elsewhere.test> SIZE={len(message)}\r\nRCPT TO:<{RCPT}>\r\nDATA\r\n"
    payload = message + b".\r\n"
    while time.monotonic() < until:
        writer.write(group.encode())
        for expect in (b"250", b"250", b"354"):
            reply = await read_reply(reader)
            if not reply.startswith(expect):
                raise RuntimeError(f"unexpected reply {reply!r}")
        writer.write(payload)
        reply = await read_reply(reader)
        if not reply.startswith(b"250"):
            raise RuntimeError(f"message refused: {reply!r}")
        counts[0] += 1
    writer.write(b"QUIT\r\n")
    await read_reply(reader)
    writer.close()


async def run_load(port: int, size: int, conns: int, seconds: float) -> tuple[int, float]:
    message = make_message(size)
    counts = [0]
    start = time.monotonic()
    until = start + seconds
    await asyncio.gather(*(client(port, message, until, counts) for _ in range(conns)))
    return counts[0], time.monotonic() - start


def stored_messages(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM messages").fetchone()[0])


def conditions() -> str:
    cpu = "unknown"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            cpu = line.split(":", 1)[1].strip()
            break
    return (
        f"cpu: {cpu}; cores: {os.cpu_count()}; python {platform.python_version()}; "
        f"sqlite {sqlite3.sqlite_version}; {platform.system()} {platform.release()}; "
        f"load average {os.getloadavg()[0]:.1f} (other work on the machine skews results)"
    )


PEERS = ROOT.parent / "shared" / "peers"


def smtp_bench(host: str, port: int, to: str, postfix_conf: str = "") -> str:
    """``../shared/peers/smtp-bench.sh`` (Postfix's smtp-source, 20 sessions x 5000
    messages of 4 KB, a new connection per message) against one server."""
    script = PEERS / "smtp-bench.sh"
    if not script.exists() or not (
        shutil.which("smtp-source") or Path("/usr/sbin/smtp-source").exists()
    ):
        return "smtp-source: not installed (see ../shared/peers/README.md)"
    env = dict(os.environ, TO=to)
    if postfix_conf:
        env["POSTFIX_CONF"] = postfix_conf
    done = subprocess.run(
        [str(script), host, str(port)],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    lines = [ln for ln in (done.stdout + done.stderr).splitlines() if ln.strip()]
    shown = [ln for ln in lines if ln.startswith(("run ", "RESULT"))] or lines[-3:]
    return "\n".join("  " + ln for ln in shown)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--sizes", default="4096,65536")
    parser.add_argument("--conns", default="1,20")
    parser.add_argument(
        "--smtp-source",
        action="store_true",
        help="also drive correo with Postfix's smtp-source, if installed",
    )
    parser.add_argument(
        "--postfix",
        metavar="HOST:PORT",
        help="also run smtp-source against this Postfix (../shared/peers), "
        "e.g. 127.0.0.1:10025, waiting for its queue to drain to Maildir",
    )
    parser.add_argument("--postfix-conf", default="/tmp/harness/postfix/etc")
    parser.add_argument("--postfix-to", default="bench@test.local")
    parser.add_argument(
        "--profile", metavar="FILE", help="write the server's cProfile stats to FILE"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        help="[smtp] workers: processes serving the MX port (0: the main process)",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        from correo.server import install_event_loop_policy

        os.environ["CORREO_BENCH_LOOP"] = install_event_loop_policy()
        if args.profile:
            import cProfile

            cProfile.runctx("asyncio.run(serve(args.serve))", globals(), locals(), args.profile)
        else:
            asyncio.run(serve(args.serve))
        return

    with tempfile.TemporaryDirectory(prefix="correo-bench-") as tmp:
        root = Path(tmp)
        cfg = write_config(root, args.workers)
        extra = ["--profile", args.profile] if args.profile else []
        proc = subprocess.Popen(
            [sys.executable, __file__, "--serve", str(cfg), *extra],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stdout is not None
            info = json.loads(proc.stdout.readline())
            port, pids = info["port"], info["pids"]
            print(
                f"# correo SMTP in: {conditions()}; server loop: {info['loop']}; "
                f"[smtp] workers = {args.workers}"
            )
            print(f"# data dir {root} on {fs_of(root)}; each 250 follows a durable commit")
            accepted = 0
            for size in (int(s) for s in args.sizes.split(",")):
                for conns in (int(c) for c in args.conns.split(",")):
                    n, elapsed = asyncio.run(run_load(port, size, conns, args.seconds))
                    accepted += n
                    print(
                        f"{size // 1024:>4} KB  {conns:>3} conn(s), pipelined: "
                        f"{n / elapsed:>8,.0f} msgs/s  ({n} in {elapsed:.1f}s, "
                        f"{n * size / elapsed / 1e6:.1f} MB/s)",
                        flush=True,
                    )
            if args.smtp_source:
                print(f"smtp-source -> correo 127.0.0.1:{port} ({RCPT}, durable INBOX):")
                out = smtp_bench("127.0.0.1", port, RCPT)
                print(out, flush=True)
                accepted += sum(int(n) for n in re.findall(r"run \d+: (\d+) msgs", out))
            if args.postfix:
                host, _, pport = args.postfix.rpartition(":")
                print(f"smtp-source -> Postfix {args.postfix} ({args.postfix_to}, Maildir):")
                print(smtp_bench(host, int(pport), args.postfix_to, args.postfix_conf), flush=True)
            peak = sum(peak_rss_kb(pid) for pid in pids)
        finally:
            if proc.stdin:
                proc.stdin.close()
            proc.wait(30)
        stored = stored_messages(root / "data" / "correo.db")
        print(
            f"server peak RSS ({len(pids)} process(es)): {peak / 1024:.0f} MB; "
            f"accepted {accepted}, found in INBOX after shutdown: {stored}"
            f"{'' if stored >= accepted else '  <-- LOST MAIL'}"
        )


def fs_of(path: Path) -> str:
    out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout
    lines = out.splitlines()
    return " ".join(lines[1].split()[:2]) if len(lines) > 1 else "unknown"


if __name__ == "__main__":
    main()
