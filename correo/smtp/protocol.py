"""The sans-I/O SMTP server core (RFC 5321), in the shape of h11.

::

    proto = ServerProtocol(Limits(...))
    out = proto.send(greeting)                 # bytes for the socket
    proto.receive_data(data)                   # b"" means EOF
    event = proto.next_event()                 # a command event, or NEED_DATA
    out = proto.send(reply)                    # exactly one reply per event

The core owns every limit on input and the whole state machine; the session decides
policy (which recipients exist, who may relay) and executes commands. The state moves
only in :meth:`ServerProtocol.send`, from the table :data:`AFTER`: a positive reply to
MAIL enters ``MAIL``, a negative one leaves the state alone, and so on.

Limits (all enforced here, once):

* command lines: 512 octets with CRLF (RFC 5321 §4.5.3.1.4), MAIL +26 (RFC 1870 §4)
  +100 (RFC 3461 §5) +500 (RFC 4954 §5, AUTH=) +10 (RFC 6531 §3.4), RCPT +500 (RFC 3461
  §5); AUTH lines and SASL responses 12,288 octets (RFC 4954 §4) → 500 5.5.6; longer
  lines are discarded as they arrive (never buffered) and answered 500 5.5.2;
* message text: see :mod:`correo.smtp.data` (only ``<CRLF>.<CRLF>`` ends DATA; size,
  NUL and line-length policies); BDAT chunks are counted exactly and always read in
  full, even when refused, so the session stays in step (RFC 3030 §2);
* ``max_recipients`` accepted RCPTs → 452 4.5.3 (RFC 5321 §4.5.3.1.10);
* ``max_errors`` 5yz replies → the reply becomes 421 4.7.0 and the session closes;
* NUL in a command line → 500 5.5.2; a bare LF ends a command line like CRLF.

Pipelining (RFC 2920 §3.2): the core hands out one event at a time; the session sends
its reply, then asks for the next event. Replies to RSET, MAIL, RCPT (and BDAT chunks)
are buffered so a pipelined group's replies go out together; after a reply that must not
be buffered (EHLO, DATA, VRFY, EXPN, QUIT, NOOP, unrecognized commands: §3.2 items 5-6)
:attr:`ServerProtocol.flush_now` is true, and the session writes at once. It also
writes whenever the core says ``NEED_DATA`` (the client is waiting).
STARTTLS (RFC 3207 §4.2): when the 220 is sent, everything the client pipelined after
STARTTLS is discarded (CVE-2011-0411) and the session state is forgotten.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from correo.smtp import commands, replies
from correo.smtp.data import DataReader, finish_chunked
from correo.smtp.replies import Reply

__all__ = [
    "AFTER",
    "ALLOWED",
    "NEED_DATA",
    "UNBUFFERED",
    "Limits",
    "LocalProtocolError",
    "NeedData",
    "ServerProtocol",
    "State",
]


class LocalProtocolError(Exception):
    """Our bug: the session used the core out of order (h11's LocalProtocolError)."""


class NeedData:
    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA = NeedData()
"""``next_event`` has nothing complete to return: read more bytes."""


class State(enum.Enum):
    GREETING = "greeting"
    """Waiting for the server's greeting (the first ``send``)."""
    CONNECTED = "connected"
    """Greeted; no HELO/EHLO yet."""
    READY = "ready"
    """HELO/EHLO done, no mail transaction."""
    MAIL = "mail"
    """MAIL accepted, no recipient yet."""
    RCPT = "rcpt"
    """At least one recipient accepted."""
    CHUNKING = "chunking"
    """At least one BDAT chunk accepted (RFC 3030)."""
    DATA = "data"
    """Reading message text after 354."""
    AUTH = "auth"
    """A SASL exchange is in progress (RFC 4954 §4)."""
    CLOSED = "closed"


_S = State
_ANY = frozenset({_S.CONNECTED, _S.READY, _S.MAIL, _S.RCPT, _S.CHUNKING})

ALLOWED: dict[str, frozenset[State]] = {
    "HELO": _ANY,
    "EHLO": _ANY,
    "NOOP": _ANY,
    "RSET": _ANY,
    "QUIT": _ANY,
    "VRFY": _ANY,
    "EXPN": _ANY,
    "HELP": _ANY,
    "STARTTLS": frozenset({_S.READY}),
    "AUTH": frozenset({_S.READY}),
    "MAIL": frozenset({_S.READY}),
    "RCPT": frozenset({_S.MAIL, _S.RCPT}),
    "DATA": frozenset({_S.RCPT}),
    "BDAT": frozenset({_S.RCPT, _S.CHUNKING}),
}
"""States in which each command is in sequence (RFC 5321 §4.1.4, RFC 3030 §2)."""
_ALLOWED_IN: dict[str, tuple[State, ...]] = {verb: tuple(s) for verb, s in ALLOWED.items()}
""":data:`ALLOWED` as tuples for the per-command test: a membership test in a handful of
members by identity, where a frozenset would call ``Enum.__hash__`` (Python code)."""

_RESET = "reset"
"""Pseudo-state: READY if HELO/EHLO was given, else CONNECTED."""
_SAME = "same"

AFTER: dict[str, tuple[State | str, State | str]] = {
    # verb: (state after a 2yz/3yz reply, state after a 4yz/5yz reply)
    "GREETING": (_S.CONNECTED, _S.CLOSED),
    "HELO": (_S.READY, _SAME),
    "EHLO": (_S.READY, _SAME),
    "MAIL": (_S.MAIL, _SAME),
    "RCPT": (_S.RCPT, _SAME),
    "DATA": (_S.DATA, _SAME),
    "BDAT": (_S.CHUNKING, _RESET),  # a refused chunk fails the transaction (RFC 3030 §2)
    "MESSAGE": (_RESET, _RESET),  # DATA end or BDAT LAST: the transaction is over
    "RSET": (_RESET, _SAME),
    "STARTTLS": (_S.CONNECTED, _SAME),  # RFC 3207 §4.2: start over after TLS
    "AUTH": (_S.AUTH, _RESET),  # 334 continues; 235 is handled in send()
    "QUIT": (_S.CLOSED, _SAME),
    "NOOP": (_SAME, _SAME),
    "VRFY": (_SAME, _SAME),
    "EXPN": (_SAME, _SAME),
    "HELP": (_SAME, _SAME),
    "UNKNOWN": (_SAME, _SAME),
}
"""State transitions, applied when the reply to ``verb`` is sent."""

UNBUFFERED = frozenset(
    {
        "GREETING",
        "HELO",
        "EHLO",
        "DATA",
        "VRFY",
        "EXPN",
        "QUIT",
        "NOOP",
        "HELP",
        "UNKNOWN",
        "STARTTLS",
        "AUTH",
    }
)
"""Replies written at once, never held for the rest of a group (RFC 2920 §3.2)."""

COMMAND_LINE = 512
"""RFC 5321 §4.5.3.1.4, including CRLF."""
MAIL_LINE = COMMAND_LINE + 26 + 100 + 500 + 10
RCPT_LINE = COMMAND_LINE + 500
AUTH_LINE = 12288
"""RFC 4954 §4."""
_MAX_LINE = AUTH_LINE + 2
_LINE_LIMITS = {"MAIL": MAIL_LINE, "RCPT": RCPT_LINE, "AUTH": AUTH_LINE}
"""Longer command lines than :data:`COMMAND_LINE` (the extensions' allowances above)."""
_NO_ENHANCED = frozenset({"GREETING", "HELO", "EHLO"})
"""Replies sent without an enhanced status code (RFC 2034 §3: only after EHLO, and the
greeting and the EHLO reply themselves carry none)."""
_SIMPLE: dict[str, commands.Event] = {
    "DATA": commands.Data(),
    "RSET": commands.Rset(),
    "QUIT": commands.Quit(),
}


# The states as module constants for the per-command code: ``State.X`` goes through the
# enum metaclass (about 65 ns a time on CPython 3.11), a global is a dict lookup.
_GREETING, _CONNECTED, _READY = State.GREETING, State.CONNECTED, State.READY
_MAIL, _RCPT, _CHUNKING = State.MAIL, State.RCPT, State.CHUNKING
_DATA, _AUTH, _CLOSED = State.DATA, State.AUTH, State.CLOSED


@dataclass(frozen=True, slots=True)
class Limits:
    max_message_size: int = 25 * 1024**2
    """0 means unlimited (not recommended)."""
    max_recipients: int = 100
    max_errors: int = 20


class ServerProtocol:
    """One SMTP server connection's protocol state, no I/O."""

    def __init__(self, limits: Limits, *, tls: bool = False) -> None:
        self.limits = limits
        self.state = _GREETING
        self.tls = tls
        """TLS is active (implicit TLS, or after STARTTLS's 220)."""
        self.authenticated = False
        """Set when 235 is sent; cleared by STARTTLS (RFC 3207 §4.2)."""
        self.extended = False
        """The client used EHLO (not HELO)."""
        self.smtputf8 = False
        """The current transaction has MAIL ... SMTPUTF8 (RFC 6531)."""
        self.recipients = 0
        """Recipients accepted in the current transaction."""
        self.errors = 0
        self.flush_now = False
        """The reply just sent must be written before the next event (RFC 2920 §3.2)."""
        self._buf = bytearray()
        self._eof = False
        self._pending: str | None = "GREETING"
        self._pending_event: commands.Event | None = None
        self._discarding = False
        """Inside an over-long command line: drop octets until LF."""
        self._reader: DataReader | None = None
        self._in_chunk = False
        """Reading the octets of a BDAT chunk."""
        self._chunk_size = 0
        self._chunk_left = 0
        self._chunk_last = False
        self._chunk_refusal: Reply | None = None
        """Why the chunk being read is dropped, or None when it is kept."""
        self._chunks: list[bytes] = []
        self._chunked_size = 0
        self._last_line_crlf = True

    # ------------------------------------------------------------------ input
    def receive_data(self, data: bytes) -> None:
        """Bytes from the client; ``b""`` means the client closed its side."""
        if data:
            if self.state is _CLOSED or self._eof:
                return
            self._buf += data
        else:
            self._eof = True

    @property
    def buffered(self) -> int:
        """Octets held (unparsed input and message text): bounded by the limits."""
        text = self._reader.kept if self._reader else self._chunked_size
        return len(self._buf) + text

    def next_event(self) -> commands.Event | NeedData:
        """The next complete event, or :data:`NEED_DATA`. Call :meth:`send` with the
        reply to each event before asking for the next one."""
        if self._pending is not None:
            raise LocalProtocolError(f"reply to {self._pending} not sent yet")
        if self.state is _CLOSED:
            return commands.Closed()
        event = self._parse()
        if event is NEED_DATA:
            if self._eof:
                self.state = _CLOSED
                return commands.Closed()
            return NEED_DATA
        assert not isinstance(event, NeedData)
        return event

    def _parse(self) -> commands.Event | NeedData:
        if self._in_chunk:
            return self._read_chunk()
        if self.state is _DATA:
            assert self._reader is not None
            if not self._reader.feed(self._buf):
                return NEED_DATA
            reader, self._reader = self._reader, None
            text = reader.result()
            if isinstance(text, Reply):
                return self._event("MESSAGE", commands.Invalid(text, "MESSAGE"))
            return self._event("MESSAGE", commands.Message(text, chunked=False))
        line = self._line()
        if line is None:
            return NEED_DATA
        if isinstance(line, Reply):
            verb = "AUTH" if self.state is _AUTH else "UNKNOWN"
            return self._event(verb, commands.Invalid(line, verb))
        if self.state is _AUTH:
            return self._event("AUTH", commands.AuthResponse(line))
        return self._command(line)

    # ------------------------------------------------------------------ lines
    def _line(self) -> str | Reply | None:
        """One command line without its line end; a Reply for a refused line."""
        buf = self._buf
        nl = buf.find(b"\n")
        if self._discarding:
            if nl < 0:
                del buf[:]
                return None
            del buf[: nl + 1]
            self._discarding = False
            return (
                replies.R500_AUTH_LINE_TOO_LONG
                if self.state is _AUTH
                else replies.R500_LINE_TOO_LONG
            )
        if nl < 0:
            if len(buf) > _MAX_LINE:
                del buf[:]
                self._discarding = True
            return None
        raw = buf[:nl]  # a copy: the buffer moves on below
        del buf[: nl + 1]
        self._last_line_crlf = raw.endswith(b"\r")
        if self._last_line_crlf:
            raw = raw[:-1]
        if self.state is _AUTH:
            if len(raw) + 2 > AUTH_LINE:
                return replies.R500_AUTH_LINE_TOO_LONG
        if b"\0" in raw:
            return replies.R500_NUL
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return replies.R500_UNKNOWN if self.state is not _AUTH else replies.R501_BASE64

    def _command(self, line: str) -> commands.Event | NeedData:
        verb, _, rest = line.partition(" ")
        verb = verb.upper()
        size = (len(line) if line.isascii() else len(line.encode())) + 2
        limit = _LINE_LIMITS.get(verb, COMMAND_LINE)
        allowed = _ALLOWED_IN.get(verb)
        # An unknown "verb" may be anything the client typed (a base64 credential sent
        # after a refused AUTH): it never reaches an event, so never a log line.
        known = verb if allowed is not None else ""
        if size > limit:
            return self._event("UNKNOWN", commands.Invalid(replies.R500_LINE_TOO_LONG, known))
        if allowed is None:
            return self._event("UNKNOWN", commands.Invalid(replies.R500_UNKNOWN))
        if verb == "BDAT":
            return self._bdat(rest)
        if self.state not in allowed:
            return self._event("UNKNOWN", commands.Invalid(self._out_of_sequence(verb), verb))
        event: commands.Event | Reply
        if verb in ("HELO", "EHLO"):
            event = commands.parse_helo(rest, verb == "EHLO")
        elif verb == "MAIL":
            if rest[:5].upper() != "FROM:":
                event = replies.R501_SYNTAX
            else:
                event = commands.parse_mail(rest[5:], self.limits.max_message_size)
        elif verb == "RCPT":
            if rest[:3].upper() != "TO:":
                event = replies.R501_SYNTAX
            elif self.limits.max_recipients and self.recipients >= self.limits.max_recipients:
                event = replies.R452_TOO_MANY_RECIPIENTS
            else:
                event = commands.parse_rcpt(rest[3:], self.smtputf8)
        elif verb == "AUTH":
            event = replies.R503_ALREADY_AUTH if self.authenticated else commands.parse_auth(rest)
        elif verb == "STARTTLS":
            event = (
                replies.R503_TLS_ACTIVE
                if self.tls
                else (commands.StartTls() if not rest.strip(" ") else replies.R501_SYNTAX)
            )
        elif verb in ("DATA", "RSET", "QUIT"):
            if rest.strip(" "):
                event = replies.R501_SYNTAX
            else:
                event = _SIMPLE[verb]
        elif verb == "NOOP":
            event = commands.Noop()
        elif verb == "VRFY":
            event = commands.Vrfy(rest.strip(" ")) if rest.strip(" ") else replies.R501_SYNTAX
        elif verb == "EXPN":
            event = commands.Expn(rest.strip(" ")) if rest.strip(" ") else replies.R501_SYNTAX
        else:
            event = commands.Help(rest.strip(" "))
        if isinstance(event, Reply):
            return self._event(verb, commands.Invalid(event, verb))
        return self._event(verb, event)

    def _out_of_sequence(self, verb: str) -> Reply:
        s = self.state
        if s is _CONNECTED and verb in ("MAIL", "STARTTLS", "AUTH"):
            return replies.R503_HELO_FIRST
        if verb == "MAIL":
            return replies.R503_NESTED_MAIL
        if verb == "AUTH" and s in (_MAIL, _RCPT, _CHUNKING):
            return replies.R503_SEQUENCE
        if verb == "RCPT":
            return replies.R503_HELO_FIRST if s is _CONNECTED else replies.R503_MAIL_FIRST
        if verb in ("DATA", "BDAT") and s is _MAIL:
            return replies.R554_NO_VALID_RECIPIENTS
        if verb == "DATA" and s is _CHUNKING:
            return replies.R503_BDAT_AND_DATA
        return replies.R503_SEQUENCE

    # ------------------------------------------------------------------ BDAT
    def _bdat(self, rest: str) -> commands.Event | NeedData:
        """RFC 3030 §2: the chunk follows the command line at once, whatever the reply,
        so it is read (and dropped if refused) before the event is returned."""
        parsed = commands.parse_bdat(rest)
        if parsed is None:
            # the chunk size is unknown, so the rest of the input cannot be trusted
            return self._event("UNKNOWN", commands.Invalid(replies.R501_SYNTAX, "BDAT"))
        size, last = parsed
        self._chunk_size = size
        self._chunk_left = size
        self._chunk_last = last
        self._chunk_refusal = None
        if self.state not in _ALLOWED_IN["BDAT"]:
            self._chunk_refusal = self._out_of_sequence("BDAT")
        elif self.limits.max_message_size and (
            self._chunked_size + size > self.limits.max_message_size
        ):
            self._chunk_refusal = replies.R552_MESSAGE_TOO_BIG
        self._in_chunk = True
        return self._read_chunk()

    def _read_chunk(self) -> commands.Event | NeedData:
        take = min(self._chunk_left, len(self._buf))
        if take:
            if self._chunk_refusal is None:
                self._chunks.append(bytes(self._buf[:take]))
                self._chunked_size += take
            del self._buf[:take]
            self._chunk_left -= take
        if self._chunk_left:
            return NEED_DATA
        self._in_chunk = False
        if self._chunk_refusal is not None:
            self._drop_chunks()
            return self._event("BDAT", commands.Invalid(self._chunk_refusal, "BDAT"))
        if not self._chunk_last:
            return self._event("BDAT", commands.Bdat(size=self._chunk_size, last=False))
        data = b"".join(self._chunks)
        self._drop_chunks()
        text = finish_chunked(data)
        if isinstance(text, Reply):
            return self._event("MESSAGE", commands.Invalid(text, "MESSAGE"))
        return self._event("MESSAGE", commands.Message(text, chunked=True))

    def _drop_chunks(self) -> None:
        self._chunks = []
        self._chunked_size = 0

    def _event(self, verb: str, event: commands.Event) -> commands.Event:
        self._pending = verb
        self._pending_event = event
        return event

    # ------------------------------------------------------------------ output
    def send(self, reply: Reply) -> bytes:
        """The wire form of ``reply`` to the pending event; moves the state (:data:`AFTER`).

        The Nth 5yz reply (``max_errors``) is replaced by 421 4.7.0 and the connection
        is to be closed (``state`` becomes CLOSED)."""
        verb = self._pending
        if verb is None:
            raise LocalProtocolError("no command is waiting for a reply")
        code = reply.code
        if code >= 500:
            self.errors += 1
            if self.limits.max_errors and self.errors >= self.limits.max_errors:
                reply = replies.R421_TOO_MANY_ERRORS
                code = reply.code
        event = self._pending_event
        self._pending = None
        self._pending_event = None
        enhanced = verb not in _NO_ENHANCED
        if code == 421:  # Reply.closes
            self.flush_now = True
            self._enter(_CLOSED)
            return reply.render(enhanced)
        self.flush_now = verb in UNBUFFERED
        if code < 400:  # Reply.positive
            target = AFTER[verb][0]
            if verb == "RCPT":
                self.recipients += 1
            elif verb == "MAIL":
                if isinstance(event, commands.Mail):
                    self.smtputf8 = event.smtputf8
            elif verb == "DATA":
                self._reader = DataReader(self.limits.max_message_size, self._last_line_crlf)
            elif verb == "HELO" or verb == "EHLO":
                self.extended = verb == "EHLO"
            elif verb == "AUTH":
                if code == 235:
                    self.authenticated = True
                    target = _RESET
            elif verb == "STARTTLS":
                # RFC 3207 §4.2: forget everything; CVE-2011-0411: drop pipelined input
                self._buf.clear()
                self._discarding = False
                self.tls = True
                self.authenticated = False
                self.extended = False
        else:
            target = AFTER[verb][1]
        if target != _SAME:
            self._enter(target)
        return reply.render(enhanced)

    def _enter(self, target: State | str) -> None:
        if target == _SAME:
            return
        if target == _RESET:
            target = _CONNECTED if self.state in (_CONNECTED, _GREETING) else _READY
        assert isinstance(target, State)
        if target in (_READY, _CONNECTED, _CLOSED):
            self.recipients = 0
            self.smtputf8 = False
            self._reader = None
            self._drop_chunks()
        if target is _CONNECTED and self.state is not _GREETING:
            self.extended = False
        self.state = target
