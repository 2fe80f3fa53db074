"""``correo queue list/show/retry/bounce/remove`` against a running server's database,
following the acceptance story: the destination is down, the operator looks, the
destination comes back, ``retry --all`` delivers."""

from __future__ import annotations

import re
from typing import Any

import click.testing
import test_queue_relay
from click.testing import CliRunner
from test_queue_relay import (
    MESSAGE,
    Script,
    enqueue,
    inbox,
    queue_entries,
    routed,
    wait_for,
)

from correo.cli import main
from correo.store.queue import RecipientState, queue_store_for

sinks = test_queue_relay.sinks  # the fixture


def cli(ms: Any, *args: str) -> click.testing.Result:
    """The real ``correo`` command (``correo.cli`` registers ``correo.cli_queue``)."""
    args = ("-c", str(ms.config_path), "queue", *args)
    return CliRunner().invoke(main, args, catch_exceptions=False)


def deferred(ms: Any, qid: int) -> Any:
    e = ms.run(queue_store_for(ms.store).get_entry(qid))
    return e if e and e.recipients[0].state is RecipientState.DEFERRED else None


def test_list_retry_after_the_destination_returns(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks()
    sink.stop()  # down: connection refused
    ms = make_mailserver(routed(sink.port))
    qid = enqueue(ms)
    wait_for(lambda: deferred(ms, qid))
    out = cli(ms, "list")
    assert out.exit_code == 0, out.output
    header, row = out.output.splitlines()[:2]
    assert header.split()[:6] == ["ID", "AGE", "SENDER", "RECIPIENT", "STATE", "NEXT"]
    assert row.split()[0] == str(qid)
    assert "<alice@example.test>" in row and "bob@remote.test" in row
    assert re.search(
        r"deferred/1\s+in [45]m(\d+s)?\s+smtp; connect to 127.0.0.1:\d+: Connection refused", row
    )

    show = cli(ms, "show", str(qid))
    assert show.exit_code == 0
    assert "bob@remote.test: deferred/1" in show.output
    assert "Subject: queue test" in show.output

    sink.start()
    out = cli(ms, "retry", "--all")
    assert out.output.strip() == "1 recipient(s) due now"
    wait_for(lambda: sink.received, timeout=10)
    wait_for(lambda: not queue_entries(ms))
    assert cli(ms, "list").output.strip().endswith("(none)")


def test_bounce_and_remove(make_mailserver: Any, sinks: Any) -> None:
    sink = sinks(script=Script(data=["451 4.3.0 later"] * 100))
    ms = make_mailserver(routed(sink.port))
    q1 = enqueue(ms)
    q2 = enqueue(ms, data=MESSAGE + b"second\r\n")
    wait_for(lambda: deferred(ms, q1) and deferred(ms, q2))
    out = cli(ms, "bounce", str(q1))
    assert out.exit_code == 0 and "1 recipient(s) failed" in out.output
    [report] = wait_for(lambda: inbox(ms, "alice@example.test"), timeout=10)
    assert "Undelivered" in str(report["Subject"])
    assert "postmaster" in next(report.iter_parts()).get_content()
    out = cli(ms, "remove", str(q2))
    assert out.output.strip() == f"queued message {q2} removed"
    wait_for(lambda: not queue_entries(ms))
    assert len(inbox(ms, "alice@example.test")) == 1  # remove tells nobody
    bad = cli(ms, "remove", str(q2))
    assert bad.exit_code == 1 and "no queued message" in bad.output
    assert cli(ms, "retry").exit_code != 0  # neither id nor --all
