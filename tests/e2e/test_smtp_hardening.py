"""Raw-socket transcripts against the real server: SMTP smuggling, STARTTLS injection,
line limits, NUL, error limits, disconnects mid-DATA, pipelining, and the
state-by-command matrix as a client sees it."""

from __future__ import annotations

import socket
import ssl
import time
from typing import Any

import pytest
from test_smtp_receive import SMTP_ONLY, inbox


@pytest.fixture(params=["main-process", "workers"])
def mailserver(make_mailserver: Any, request: pytest.FixtureRequest) -> Any:
    """Every transcript runs twice: against the MX port served by the main process, and
    by worker processes (``[smtp] workers``, the default on a multi-core machine)."""
    workers = "[smtp]\nworkers = 2\n" if request.param == "workers" else ""
    return make_mailserver(SMTP_ONLY + workers)


class Raw:
    """A byte-level SMTP client: send exactly these bytes, read exactly N replies."""

    def __init__(self, ms: Any, service: str = "smtp") -> None:
        self.sock: socket.socket | ssl.SSLSocket = socket.create_connection(
            (ms.host, ms.ports[service]), timeout=10
        )
        self.buf = b""
        self.greeting = self.replies(1)[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def replies(self, n: int) -> list[bytes]:
        """The next ``n`` complete replies (multi-line ones joined)."""
        out: list[bytes] = []
        current = b""
        while len(out) < n:
            while b"\r\n" not in self.buf:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise ConnectionError(f"closed after {out!r} {current!r}")
                self.buf += chunk
            line, self.buf = self.buf.split(b"\r\n", 1)
            current += line + b"\r\n"
            if line[3:4] != b"-":
                out.append(current)
                current = b""
        return out

    def codes(self, data: bytes, n: int) -> list[int]:
        self.send(data)
        return [int(r[:3]) for r in self.replies(n)]

    def closed(self) -> bool:
        try:
            return self.sock.recv(1) == b""
        except (ConnectionError, TimeoutError):
            return True

    def close(self) -> None:
        self.sock.close()


START = b"EHLO client.test\r\nMAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\n"


@pytest.mark.parametrize(
    "smuggle",
    [
        b"\n.\n",
        b"\r.\r",
        b"\n.\r\n",
        b"\r\n.\n",
        b"\r\n.\r",
        b"\r.\r\n",
        b"\r\n.\r\r\n",
        b"\n.\n\r\n",
        b"\r\n\x00.\r\n",
    ],
)
def test_smuggling_never_ends_data(mailserver: Any, smuggle: bytes) -> None:
    raw = Raw(mailserver)
    assert raw.codes(START + b"DATA\r\n", 4) == [250, 250, 250, 354]
    body = (
        b"Subject: outer\r\n\r\ntext"
        + smuggle
        + b"MAIL FROM:<admin@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
        + b"Subject: smuggled\r\n\r\nevil\r\n"
    )
    raw.send(body + b".\r\nQUIT\r\n")
    final = raw.replies(2)
    assert [r[:3] for r in final] == [b"554" if b"\x00" in smuggle else b"250", b"221"]
    assert inbox(mailserver, mailserver.bob) == []  # the smuggled transaction never ran
    if b"\x00" not in smuggle:
        (text,) = inbox(mailserver, mailserver.alice)
        assert b"Subject: smuggled" in text
        body_stored = text.split(b"\r\n\r\n", 1)[1]
        assert b"\n" not in body_stored.replace(b"\r\n", b"")  # CRLF line ends only


def test_bare_lf_message_is_stored_with_crlf(mailserver: Any) -> None:
    raw = Raw(mailserver)
    assert raw.codes(START + b"DATA\r\n", 4)[-1] == 354
    # the "." after a bare LF is text; only the CRLF . CRLF ends the message
    assert raw.codes(b"Subject: lf\n\nline1\nline2\n.\r\n.\r\n", 1) == [250]
    (text,) = inbox(mailserver, mailserver.alice)
    assert text.endswith(b"Subject: lf\r\n\r\nline1\r\nline2\r\n.\r\n")
    assert b"\n" not in text.replace(b"\r\n", b"")


def test_starttls_injection_is_discarded(mailserver: Any) -> None:
    """CVE-2011-0411: MAIL pipelined with STARTTLS must not run inside TLS."""
    raw = Raw(mailserver)
    raw.replies(0)
    raw.send(b"EHLO client.test\r\n")
    raw.replies(1)
    raw.send(b"STARTTLS\r\nMAIL FROM:<evil@elsewhere.test>\r\nRCPT TO:<alice@example.test>\r\n")
    assert raw.replies(1)[0].startswith(b"220 2.0.0")
    assert raw.buf == b""
    raw.sock = mailserver.client_tls().wrap_socket(raw.sock, server_hostname="localhost")
    raw.send(b"RCPT TO:<alice@example.test>\r\n")
    assert raw.replies(1)[0].startswith(b"503 5.5.1 Send HELO/EHLO first")
    raw.send(b"EHLO client.test\r\n")
    ehlo = raw.replies(1)[0]
    assert b"STARTTLS" not in ehlo  # RFC 3207 §4.2
    assert raw.codes(b"RCPT TO:<alice@example.test>\r\n", 1) == [503]  # no MAIL survived


def test_command_line_too_long_and_nul(mailserver: Any) -> None:
    raw = Raw(mailserver)
    assert raw.codes(b"EHLO client.test\r\n", 1) == [250]
    raw.send(b"NOOP " + b"x" * 600 + b"\r\n")
    assert raw.replies(1) == [b"500 5.5.2 Line too long\r\n"]
    raw.send(b"X" * 100_000 + b"\r\nNOOP\r\n")
    assert raw.replies(2) == [b"500 5.5.2 Line too long\r\n", b"250 2.0.0 OK\r\n"]
    raw.send(b"NO\x00OP\r\n")
    assert raw.replies(1) == [b"500 5.5.2 NUL octets are not allowed\r\n"]


def test_long_data_line_refused(mailserver: Any) -> None:
    raw = Raw(mailserver)
    assert raw.codes(START + b"DATA\r\n", 4)[-1] == 354
    raw.send(b"Subject: long\r\n\r\n" + b"z" * 5000 + b"\r\n.\r\n")
    assert raw.replies(1)[0].startswith(b"554 5.6.0")
    assert inbox(mailserver, mailserver.alice) == []


@pytest.mark.parametrize("workers", [0, 2])
def test_too_many_errors_closes(make_mailserver: Any, workers: int) -> None:
    ms = make_mailserver(SMTP_ONLY + f"[limits]\nmax_errors = 5\n[smtp]\nworkers = {workers}\n")
    raw = Raw(ms)
    raw.send(b"BOGUS\r\n" * 10)
    assert [r[:3] for r in raw.replies(5)] == [b"500"] * 4 + [b"421"]
    assert raw.closed()


def test_disconnect_mid_data_stores_nothing(mailserver: Any) -> None:
    raw = Raw(mailserver)
    assert raw.codes(START + b"DATA\r\n", 4)[-1] == 354
    raw.send(b"Subject: half\r\n\r\nhalf a message\r\n")
    raw.close()
    time.sleep(0.2)
    raw = Raw(mailserver)
    assert raw.codes(START + b"DATA\r\nSubject: whole\r\n\r\nok\r\n.\r\n", 5)[-1] == 250
    (text,) = inbox(mailserver, mailserver.alice)
    assert b"Subject: whole" in text


def test_pipelined_group_in_one_write(mailserver: Any) -> None:
    raw = Raw(mailserver)
    raw.send(b"EHLO client.test\r\n")
    raw.replies(1)
    group = (
        b"MAIL FROM:<x@elsewhere.test>\r\nRCPT TO:<nobody@example.test>\r\n"
        b"RCPT TO:<alice@example.test>\r\nRCPT TO:<bob@example.test>\r\nDATA\r\n"
    )
    raw.send(group)
    assert [r[:3] for r in raw.replies(5)] == [b"250", b"550", b"250", b"250", b"354"]
    assert raw.codes(b"hi\r\n.\r\nMAIL FROM:<>\r\nRSET\r\n", 3) == [250, 250, 250]
    assert len(inbox(mailserver, mailserver.bob)) == 1


STATES = {
    "connected": b"",
    "ready": b"EHLO client.test\r\n",
    "mail": b"EHLO client.test\r\nMAIL FROM:<x@elsewhere.test>\r\n",
    "rcpt": START,
}
# command: expected code per state (connected, ready, mail, rcpt) on the MX port
MATRIX: dict[bytes, tuple[int, int, int, int]] = {
    b"HELO client.test\r\n": (250, 250, 250, 250),
    b"EHLO client.test\r\n": (250, 250, 250, 250),
    b"MAIL FROM:<y@elsewhere.test>\r\n": (503, 250, 503, 503),
    b"RCPT TO:<bob@example.test>\r\n": (503, 503, 250, 250),
    b"DATA\r\n": (503, 503, 554, 354),
    b"BDAT 1 LAST\r\nx": (503, 503, 554, 250),
    b"RSET\r\n": (250, 250, 250, 250),
    b"NOOP\r\n": (250, 250, 250, 250),
    b"VRFY alice\r\n": (252, 252, 252, 252),
    b"EXPN list\r\n": (502, 502, 502, 502),
    b"HELP\r\n": (214, 214, 214, 214),
    b"STARTTLS\r\n": (503, 220, 503, 503),
    b"AUTH PLAIN AGFAYgBj\r\n": (503, 502, 503, 503),
    b"XYZZY\r\n": (500, 500, 500, 500),
    b"QUIT\r\n": (221, 221, 221, 221),
}


def test_state_command_matrix_on_the_wire(mailserver: Any) -> None:
    wrong = []
    for i, (state, setup) in enumerate(STATES.items()):
        for command, expected in MATRIX.items():
            raw = Raw(mailserver)
            n = setup.count(b"\r\n")
            raw.send(setup)
            raw.replies(n)
            raw.send(command)
            got = int(raw.replies(1)[0][:3])
            if got != expected[i]:
                wrong.append((state, command, expected[i], got))
            raw.close()
    assert wrong == []


FUZZ_TOKENS = [
    b"EHLO x\r\n",
    b"MAIL FROM:<a@elsewhere.test>\r\n",
    b"MAIL FROM:<>\r\n",
    b"RCPT TO:<alice@example.test>\r\n",
    b"RCPT TO:<Postmaster>\r\n",
    b"RCPT TO:<x@remote.test>\r\n",
    b"DATA\r\n",
    b"BDAT 4\r\n",
    b"BDAT 2 LAST\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"AUTH PLAIN\r\n",
    b"AUTH LOGIN\r\n",
    b"*\r\n",
    b"VRFY a\r\n",
    b"\r\n",
    b"\n",
    b"\r",
    b".",
    b".\r\n",
    b"\r\n.\r\n",
    b"\n.\n",
    b"\x00",
    b"\xff",
    b"x" * 700,
    b"Subject: s\r\n\r\nbody\r\n",
]


def test_random_input_never_crashes_a_session(
    make_mailserver: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Whatever arrives, every session answers or closes cleanly; none crashes (in this
    process, where the log can be read)."""
    import random

    mailserver = make_mailserver(SMTP_ONLY)

    rng = random.Random(1234)
    for _ in range(40):
        raw = Raw(mailserver)
        data = b"".join(rng.choice(FUZZ_TOKENS) for _ in range(rng.randint(1, 40)))
        try:
            raw.send(data + b"\r\n.\r\nQUIT\r\n")
            raw.sock.settimeout(2)
            while raw.sock.recv(65536):
                pass
        except (ConnectionError, TimeoutError):
            pass
        raw.close()
    assert Raw(mailserver).codes(b"NOOP\r\n", 1) == [250]
    assert "session crashed" not in caplog.text
    assert "error handling" not in caplog.text
