"""SMTP replies: basic code (RFC 5321 §4.2), enhanced status code (RFC 3463) and text.

Every reply correo sends is a constant here, named after its code, so the protocol core,
the policy and the session all speak the same words and tests can compare against them.
Enhanced codes are attached to every 2yz, 4yz and 5yz reply except the greeting and the
HELO/EHLO reply; 3yz replies (354, 334) carry none (RFC 2034 §4); :meth:`Reply.render`
leaves them out where the core says so.

Classes of replies (RFC 5321 §4.2.1): 2yz done, 3yz send more, 4yz may work later (the
client retries), 5yz will never work as sent.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Reply:
    """One SMTP reply, possibly multi-line (``lines`` joined with ``code-`` prefixes).

    The wire forms are rendered once per reply object and kept (most replies are module
    constants, sent over and over); the cache takes no part in equality or ``repr``."""

    code: int
    enhanced: str
    """``"5.1.1"`` (RFC 3463), or ``""`` for replies that carry none."""
    lines: tuple[str, ...]
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """:meth:`render` with the enhanced code, once computed."""
    _wire_plain: bytes | None = field(default=None, init=False, repr=False, compare=False)
    """:meth:`render` without it (greeting, HELO/EHLO: RFC 2034 §3), once computed."""

    @property
    def positive(self) -> bool:
        """2yz and 3yz: the command was accepted (or more input is awaited)."""
        return self.code < 400

    @property
    def closes(self) -> bool:
        """421 closes the transmission channel (RFC 5321 §3.8)."""
        return self.code == 421

    def render(self, enhanced: bool = True) -> bytes:
        """Wire form, ``250-first\\r\\n250 last\\r\\n`` (RFC 5321 §4.2.1)."""
        if enhanced:
            wire = self._wire
            if wire is None:
                wire = self._render(f"{self.enhanced} " if self.enhanced else "")
                object.__setattr__(self, "_wire", wire)
            return wire
        wire = self._wire_plain
        if wire is None:
            wire = self._render("")
            object.__setattr__(self, "_wire_plain", wire)
        return wire

    def _render(self, prefix: str) -> bytes:
        code = self.code
        last = len(self.lines) - 1
        out = [
            f"{code}{' ' if i == last else '-'}{prefix}{line}\r\n"
            for i, line in enumerate(self.lines)
        ]
        return "".join(out).encode("utf-8", "replace")

    def with_text(self, *lines: str) -> Reply:
        return Reply(self.code, self.enhanced, lines)


def reply(code: int, enhanced: str, *lines: str) -> Reply:
    return Reply(code, enhanced, lines or ("",))


# --------------------------------------------------------------------------- 2yz / 3yz
R221_BYE = reply(221, "2.0.0", "Bye")
R235_AUTH_OK = reply(235, "2.7.0", "Authentication successful")
R250_OK = reply(250, "2.0.0", "OK")
R250_SENDER_OK = reply(250, "2.1.0", "Sender OK")
R250_RECIPIENT_OK = reply(250, "2.1.5", "Recipient OK")
R250_RESET = reply(250, "2.0.0", "Reset")
R250_QUEUED = reply(250, "2.0.0", "Message accepted")
R252_VRFY_DISABLED = reply(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
R214_HELP = reply(214, "2.0.0", "See https://www.rfc-editor.org/rfc/rfc5321")
R220_TLS_GO = reply(220, "2.0.0", "Ready to start TLS")
R354_DATA = reply(354, "", "End data with <CR><LF>.<CR><LF>")


def r250_chunk(size: int) -> Reply:
    """BDAT chunk accepted (RFC 3030 §2)."""
    return reply(250, "2.0.0", f"{size} octets received")


def r250_message(ident: str) -> Reply:
    return reply(250, "2.0.0", f"Message accepted as {ident}")


def r334(challenge: str) -> Reply:
    """A SASL challenge, base64 (RFC 4954 §4); never carries an enhanced code."""
    return Reply(334, "", (challenge,))


# --------------------------------------------------------------------------- 4yz
R421_SHUTDOWN = reply(421, "4.3.2", "Service shutting down")
R421_BUSY = reply(421, "4.3.2", "Too many connections, try again later")
R421_TOO_MANY_ERRORS = reply(421, "4.7.0", "Too many errors, closing connection")
R421_TIMEOUT = reply(421, "4.4.2", "Timeout waiting for input, closing connection")
R451_LOCAL_ERROR = reply(451, "4.3.0", "Local error in processing, try again later")
R451_NO_QUEUE = reply(
    451, "4.4.0", "Relaying to other domains is not available yet, try again later"
)
R451_POSTMASTER_UNSET = reply(451, "4.3.5", "Postmaster is not configured, try again later")
R452_DISK_FULL = reply(452, "4.3.1", "Insufficient system storage, try again later")
R452_MAILBOX_FULL = reply(452, "4.2.2", "Mailbox full")
R452_TOO_MANY_RECIPIENTS = reply(452, "4.5.3", "Too many recipients")
R450_RATE_LIMITED = reply(450, "4.7.1", "Hourly sending limit reached, try again later")
R454_AUTH_LOCKED = reply(454, "4.7.0", "Too many failed logins, try again later")
R454_AUTH_TEMPORARY = reply(454, "4.7.0", "Temporary authentication failure")
R454_TLS_UNAVAILABLE = reply(454, "4.7.0", "TLS not available")

# --------------------------------------------------------------------------- 5yz
R500_UNKNOWN = reply(500, "5.5.2", "Command not recognized")
R500_LINE_TOO_LONG = reply(500, "5.5.2", "Line too long")
R500_NUL = reply(500, "5.5.2", "NUL octets are not allowed")
R500_AUTH_LINE_TOO_LONG = reply(500, "5.5.6", "Authentication exchange line is too long")
R501_SYNTAX = reply(501, "5.5.4", "Syntax error in parameters or arguments")
R501_PATH = reply(501, "5.1.3", "Bad address syntax")
R501_HELO = reply(501, "5.5.4", "HELO/EHLO needs a domain name")
R501_BASE64 = reply(501, "5.5.2", "Cannot decode base64")
R501_AUTH_CANCELLED = reply(501, "5.7.0", "Authentication cancelled")
R502_NOT_IMPLEMENTED = reply(502, "5.5.1", "Command not implemented")
R502_AUTH_NOT_OFFERED = reply(502, "5.5.1", "AUTH is only offered on the submission ports")
R503_SEQUENCE = reply(503, "5.5.1", "Bad sequence of commands")
R503_HELO_FIRST = reply(503, "5.5.1", "Send HELO/EHLO first")
R503_MAIL_FIRST = reply(503, "5.5.1", "Need MAIL before RCPT")
R503_NESTED_MAIL = reply(503, "5.5.1", "Sender already given")
R503_ALREADY_AUTH = reply(503, "5.5.1", "Already authenticated")
R503_TLS_ACTIVE = reply(503, "5.5.1", "TLS already active")
R503_BDAT_AND_DATA = reply(503, "5.5.1", "DATA and BDAT cannot be mixed")
R504_MECHANISM = reply(504, "5.5.4", "Unrecognized authentication mechanism")
R530_AUTH_REQUIRED = reply(530, "5.7.0", "Authentication required")
R530_TLS_REQUIRED = reply(530, "5.7.0", "Must issue a STARTTLS command first")
R535_AUTH_FAILED = reply(535, "5.7.8", "Authentication credentials invalid")
R538_ENCRYPTION_REQUIRED = reply(
    538, "5.7.11", "Encryption required for requested authentication mechanism"
)
R550_NO_SUCH_USER = reply(550, "5.1.1", "No such user here")
R535_DISABLED = reply(535, "5.7.8", "Authentication credentials no longer valid")
"""MAIL FROM from a session whose account was disabled after AUTH (RFC 4954 §6)."""
R550_PERCENT_HACK = reply(550, "5.7.1", "Source-routed addresses are not relayed")
R552_MESSAGE_TOO_BIG = reply(552, "5.3.4", "Message size exceeds fixed maximum message size")
R552_QUOTA = reply(552, "5.2.2", "Message exceeds the mailbox quota")
R553_NOT_OWNER = reply(553, "5.7.1", "Sender address not owned by the authenticated user")
R553_SMTPUTF8_REQUIRED = reply(553, "5.6.7", "Non-ASCII address needs SMTPUTF8")
R554_NO_VALID_RECIPIENTS = reply(554, "5.5.1", "No valid recipients")
R554_RELAY_DENIED = reply(554, "5.7.1", "Relay access denied")
R554_LOOP = reply(554, "5.4.6", "Too many Received: headers, mail loop suspected")
R554_NUL_IN_MESSAGE = reply(554, "5.6.0", "NUL octets are not allowed in messages")
R554_LONG_LINE = reply(
    554, "5.6.0", "Message has a line longer than 998 octets (RFC 5322 section 2.1.1)"
)
R555_PARAMETER = reply(555, "5.5.4", "Unsupported MAIL/RCPT parameter")
