"""Crash safety: ``correo serve`` killed with SIGKILL in the middle of a delivery loses
nothing; after a restart the unfinished recipient is delivered (at-least-once)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from test_queue_relay import MESSAGE, Script, Sink, wait_for

from correo import config
from correo.mail.message import prepare
from correo.store import open_store
from correo.store.base import QueueRecipient, QueueRequest
from correo.store.queue import RecipientState, queue_store_for


def write_config(root: Path, port: int) -> Path:
    cfg = root / "correo.toml"
    cfg.write_text(
        'hostname = "mx.example.test"\n'
        f'data_dir = "{root / "data"}"\n'
        "[queue]\n"
        'lease = "2s"\n'
        "[relay.routes]\n"
        f'"remote.test" = "127.0.0.1:{port}"\n'
    )
    return cfg


def serve(cfg: Path) -> subprocess.Popen[bytes]:
    """Start ``correo serve``; its output goes to a file (a pipe nobody reads could fill
    up and stall the server)."""
    log = cfg.parent / f"serve-{time.monotonic_ns()}.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "correo", "-c", str(cfg), "serve"],
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if b"serving" in log.read_bytes():
            return proc
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    proc.kill()
    raise AssertionError("correo serve did not start:\n" + log.read_text(errors="replace"))


def queue_state(cfg: Path) -> list[Any]:
    async def go() -> list[Any]:
        store = await open_store(config.load(cfg))
        try:
            return [
                (r.address, r.state, r.attempts)
                for e in await queue_store_for(store).list_entries()
                for r in e.recipients
            ]
        finally:
            await store.close()

    return asyncio.run(go())


def test_sigkill_mid_delivery_then_restart_delivers(tmp_path: Path) -> None:
    holding = Sink(script=Script(data=["hold"]))
    good: Sink | None = None
    proc: subprocess.Popen[bytes] | None = None
    try:
        cfg = write_config(tmp_path, holding.port)

        async def setup() -> None:
            store = await open_store(config.load(cfg))
            try:
                await store.add_domain("example.test")
                await store.add_account("alice@example.test", "x")
                req = QueueRequest(
                    sender="alice@example.test", recipients=(QueueRecipient("bob@remote.test"),)
                )
                await store.deliver(prepare(MESSAGE), [], req)
            finally:
                await store.close()

        asyncio.run(setup())
        proc = serve(cfg)
        wait_for(lambda: holding.handler.attempts == 1, timeout=20)  # DATA sent, no reply
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        assert queue_state(cfg) == [("bob@remote.test", RecipientState.PENDING, 0)]

        good = Sink()
        cfg = write_config(tmp_path, good.port)
        proc = serve(cfg)
        received = wait_for(lambda: good.received, timeout=30)
        assert received[0].rcpts == ["bob@remote.test"]
        assert b"Hello Bob." in received[0].data
        wait_for(lambda: queue_state(cfg) == [], timeout=10)
    finally:
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
        holding.close()
        if good is not None:
            good.close()
