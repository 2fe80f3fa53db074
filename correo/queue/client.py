"""A small outbound SMTP client (RFC 5321) with PIPELINING (RFC 2920).

Why not ``aiosmtplib``: it sends one command per round trip (no RFC 2920 pipelining),
which caps a single connection at a few hundred messages a second on loopback, and its
high-level calls raise on any non-2xx reply where the relay needs every reply of a
transaction (per-recipient 4xx/5xx, RFC 5321 §4.2). This client does only what the
relay needs: greeting, EHLO/HELO, STARTTLS (RFC 3207), AUTH PLAIN/LOGIN (RFC 4954),
MAIL/RCPT/DATA with extension parameters, RSET, QUIT.

Every wait has the timeout RFC 5321 §4.5.3.2 gives it (:class:`Timeouts`). A dropped
connection, a timeout or a malformed reply raises :class:`ConnectionLost`; replies are
returned, never raised, so the caller decides per RFC 5321 §4.2.1 what a code means.
"""

from __future__ import annotations

import asyncio
import base64
import os
import re
import ssl
from collections.abc import Sequence
from dataclasses import dataclass, field

MAX_REPLY_LINE = 4096
"""RFC 5321 §4.5.3.1.5 allows 512 octets; be lenient, but bounded."""
MAX_REPLY_LINES = 256
_ENHANCED_RE = re.compile(r"^([245])\.(\d{1,3})\.(\d{1,3})(?:\s|$)")
_DOT_RE = re.compile(rb"(?m)^\.")


class SmtpClientError(Exception):
    """The session cannot go on."""


class ConnectionLost(SmtpClientError):
    """The server closed, timed out or sent something that is not an SMTP reply."""


@dataclass(frozen=True, slots=True)
class Timeouts:
    """RFC 5321 §4.5.3.2 minimum waits (seconds)."""

    connect: float = 300.0
    greeting: float = 300.0
    """§4.5.3.2.1 initial 220 message: 5 minutes."""
    command: float = 300.0
    """§4.5.3.2.2/3 MAIL and RCPT: 5 minutes (EHLO, STARTTLS, AUTH, RSET alike)."""
    data_init: float = 120.0
    """§4.5.3.2.4 DATA initiation: 2 minutes."""
    data_block: float = 180.0
    """§4.5.3.2.5 each data block sent: 3 minutes."""
    data_end: float = 600.0
    """§4.5.3.2.6 reply to the final dot: 10 minutes."""


@dataclass(frozen=True, slots=True)
class Reply:
    code: int
    lines: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return 200 <= self.code < 300

    @property
    def transient(self) -> bool:
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        return self.code >= 500

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 status in the first line when its class matches the code."""
        m = _ENHANCED_RE.match(self.lines[0] if self.lines else "")
        if m and m.group(1) == str(self.code)[0]:
            return f"{m.group(1)}.{m.group(2)}.{m.group(3)}"
        return None

    def status(self) -> str:
        """Enhanced status, or the class default (X.0.0)."""
        return self.enhanced or f"{str(self.code)[0]}.0.0"

    def __str__(self) -> str:
        return f"{self.code} " + " ".join(line for line in self.lines if line).strip()


@dataclass(slots=True)
class Transaction:
    """Every reply of one MAIL/RCPT…/DATA transaction (None: command not sent)."""

    mail: Reply
    rcpts: list[Reply | None] = field(default_factory=list)
    data: Reply | None = None
    """The reply to DATA (354 to go on)."""
    final: Reply | None = None
    """The reply to the final dot."""


def xtext(value: str) -> str:
    """RFC 3461 §4 xtext encoding of an ESMTP parameter value."""
    out = []
    for ch in value:
        o = ord(ch)
        if 33 <= o <= 126 and ch not in "+=":
            out.append(ch)
        else:
            out.extend(f"+{b:02X}" for b in ch.encode("utf-8"))
    return "".join(out)


def dot_stuff(data: bytes) -> bytes:
    """RFC 5321 §4.5.2 transparency plus the terminating ``.CRLF``."""
    body = _DOT_RE.sub(b"..", data)
    if body and not body.endswith(b"\r\n"):
        body += b"\r\n"
    return body + b".\r\n"


def _parse_line(raw: bytes) -> tuple[int, bool, str]:
    """``250-PIPELINING`` → (250, True, "PIPELINING"); RFC 5321 §4.2 reply-line."""
    line = raw.rstrip(b"\r\n")
    if len(line) < 3 or not line[:3].isdigit() or (len(line) > 3 and line[3:4] not in b" -"):
        raise ConnectionLost(f"not an SMTP reply: {line[:80]!r}")
    code = int(line[:3])
    if not 200 <= code <= 599:
        raise ConnectionLost(f"reply code out of range: {code}")
    more = line[3:4] == b"-"
    return code, more, line[4:].decode("utf-8", "replace")


class SmtpClient:
    """One SMTP connection. Use :meth:`connect`, then :meth:`ehlo` and friends."""

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        host: str,
        timeouts: Timeouts,
    ) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host
        self.timeouts = timeouts
        self.extensions: dict[str, str] = {}
        self.tls = False
        self.broken = False

    @classmethod
    async def connect(
        cls, host: str, port: int, timeouts: Timeouts = Timeouts()
    ) -> tuple[SmtpClient, Reply]:
        """Open the TCP connection and read the greeting (which may be a refusal)."""
        try:
            async with asyncio.timeout(timeouts.connect):
                reader, writer = await asyncio.open_connection(host, port, limit=MAX_REPLY_LINE * 2)
        except TimeoutError:
            raise ConnectionLost(f"connect to {host}:{port}: timed out") from None
        except OSError as exc:
            why = os.strerror(exc.errno) if exc.errno else str(exc)
            raise ConnectionLost(f"connect to {host}:{port}: {why}") from None
        client = cls(reader, writer, host, timeouts)
        greeting = await client.read_reply(timeouts.greeting)
        return client, greeting

    # ------------------------------------------------------------------ primitives

    async def read_reply(self, wait: float) -> Reply:
        code = 0
        lines: list[str] = []
        try:
            async with asyncio.timeout(wait):
                while True:
                    raw = await self.reader.readline()
                    if not raw:
                        raise ConnectionLost("connection closed by the server")
                    if not raw.endswith(b"\n"):
                        raise ConnectionLost("connection closed in the middle of a reply")
                    this, more, text = _parse_line(raw)
                    if lines and this != code:
                        raise ConnectionLost("reply lines with different codes")
                    code = this
                    lines.append(text)
                    if not more:
                        break
                    if len(lines) >= MAX_REPLY_LINES:
                        raise ConnectionLost("reply too long")
        except TimeoutError:
            self.broken = True
            raise ConnectionLost(f"no reply within {wait:g}s") from None
        except (ValueError, asyncio.LimitOverrunError):
            self.broken = True
            raise ConnectionLost("reply line too long") from None
        except ConnectionLost:
            self.broken = True
            raise
        except OSError as exc:
            self.broken = True
            raise ConnectionLost(f"read: {exc.strerror or exc}") from None
        reply = Reply(code, tuple(lines))
        if code == 421:
            self.broken = True  # RFC 5321 §3.8: the server is closing the channel
        return reply

    async def _send(self, data: bytes, wait: float) -> None:
        try:
            self.writer.write(data)
            async with asyncio.timeout(wait):
                await self.writer.drain()
        except TimeoutError:
            self.broken = True
            raise ConnectionLost(f"send stalled for {wait:g}s") from None
        except (OSError, RuntimeError) as exc:
            self.broken = True
            raise ConnectionLost(f"send: {exc}") from None

    async def command(self, line: str, wait: float | None = None) -> Reply:
        await self._send(line.encode("utf-8") + b"\r\n", self.timeouts.command)
        return await self.read_reply(wait or self.timeouts.command)

    # ------------------------------------------------------------------ session

    async def ehlo(self, name: str) -> Reply:
        """RFC 5321 §4.1.1.1; records the advertised extensions (upper-cased keywords)."""
        reply = await self.command(f"EHLO {name}")
        if reply.ok:
            self.extensions = {}
            for line in reply.lines[1:]:
                keyword, _, params = line.strip().partition(" ")
                if keyword:
                    self.extensions[keyword.upper()] = params
        return reply

    async def helo(self, name: str) -> Reply:
        self.extensions = {}
        return await self.command(f"HELO {name}")

    def supports(self, keyword: str) -> bool:
        return keyword.upper() in self.extensions

    @property
    def size_limit(self) -> int:
        """RFC 1870 SIZE: 0 when not advertised or unlimited."""
        value = self.extensions.get("SIZE", "").strip()
        return int(value) if value.isdigit() else 0

    async def starttls(self, context: ssl.SSLContext, server_hostname: str | None) -> Reply:
        """RFC 3207 §4: on 220, upgrade; extensions must be learned again by EHLO."""
        reply = await self.command("STARTTLS")
        if not reply.ok:
            return reply
        try:
            async with asyncio.timeout(self.timeouts.command):
                await self.writer.start_tls(context, server_hostname=server_hostname)
        except (TimeoutError, ssl.SSLError, OSError) as exc:
            self.broken = True
            raise ConnectionLost(f"TLS handshake: {exc}") from None
        self.tls = True
        self.extensions = {}
        return reply

    async def auth(self, username: str, password: str) -> Reply:
        """RFC 4954 with PLAIN (RFC 4616) when offered, else LOGIN."""
        mechanisms = self.extensions.get("AUTH", "").upper().split()
        if "PLAIN" in mechanisms or "LOGIN" not in mechanisms:
            token = base64.b64encode(f"\0{username}\0{password}".encode()).decode()
            return await self.command(f"AUTH PLAIN {token}")
        reply = await self.command("AUTH LOGIN")
        for value in (username, password):
            if reply.code != 334:
                return reply
            reply = await self.command(base64.b64encode(value.encode()).decode())
        return reply

    async def send_mail(
        self,
        sender: str,
        mail_params: Sequence[str],
        recipients: Sequence[tuple[str, Sequence[str]]],
        data: bytes,
    ) -> Transaction:
        """One transaction. ``data`` is the message (CRLF lines, not dot-stuffed).

        With PIPELINING, MAIL, every RCPT and DATA go in one write (RFC 2920 §3.1) and
        the replies are read in order; the message follows only if DATA got 354 and at
        least one RCPT succeeded (an empty message ends a 354 that came anyway).
        """
        mail = "MAIL FROM:<" + sender + ">" + "".join(" " + p for p in mail_params)
        rcpts = [
            "RCPT TO:<" + addr + ">" + "".join(" " + p for p in params)
            for addr, params in recipients
        ]
        if self.supports("PIPELINING"):
            lines = [mail, *rcpts, "DATA"]
            await self._send(("\r\n".join(lines) + "\r\n").encode("utf-8"), self.timeouts.command)
            tx = Transaction(await self.read_reply(self.timeouts.command))
            if self.broken:  # 421: the server is closing, nothing more will come
                return tx
            for _ in rcpts:
                tx.rcpts.append(await self.read_reply(self.timeouts.command))
                if self.broken:
                    return tx
            tx.data = await self.read_reply(self.timeouts.data_init)
            accepted = tx.mail.ok and any(r is not None and r.ok for r in tx.rcpts)
            if tx.data.code == 354:
                if accepted:
                    await self._send(dot_stuff(data), self.timeouts.data_block)
                    tx.final = await self.read_reply(self.timeouts.data_end)
                else:
                    await self._send(b".\r\n", self.timeouts.data_block)
                    await self.read_reply(self.timeouts.data_end)
            return tx
        tx = Transaction(await self.command(mail))
        if not tx.mail.ok:
            return tx
        for line in rcpts:
            reply = await self.command(line)
            tx.rcpts.append(reply)
            if reply.code == 421:
                return tx
        if not any(r is not None and r.ok for r in tx.rcpts):
            return tx
        tx.data = await self.command("DATA", self.timeouts.data_init)
        if tx.data.code == 354:
            await self._send(dot_stuff(data), self.timeouts.data_block)
            tx.final = await self.read_reply(self.timeouts.data_end)
        return tx

    async def rset(self) -> Reply:
        return await self.command("RSET")

    async def quit(self) -> None:
        """Polite QUIT (RFC 5321 §4.1.1.10) when the connection is healthy, then close."""
        if not self.broken:
            try:
                await self._send(b"QUIT\r\n", 5.0)
                await self.read_reply(5.0)
            except ConnectionLost:
                pass
        await self.close()

    async def close(self) -> None:
        self.broken = True
        self.writer.close()
        try:
            async with asyncio.timeout(5.0):
                await self.writer.wait_closed()
        except (TimeoutError, OSError, ssl.SSLError):
            pass
