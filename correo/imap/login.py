"""Authentication: STARTTLS (RFC 3501 §6.2.1), AUTHENTICATE with SASL-IR (RFC 3501
§6.2.2, RFC 4959) over the shared SASL module (PLAIN, LOGIN), and LOGIN (§6.2.3).

Passwords are accepted in the clear only where ``plaintext_allowed`` says so (TLS, or a
loopback listener by configuration); elsewhere CAPABILITY says LOGINDISABLED and both
LOGIN and AUTHENTICATE answer ``NO [PRIVACYREQUIRED]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from correo.auth.sasl import Challenge, Credentials, SaslError, SaslErrorKind, SaslExchange
from correo.auth.service import AuthReason
from correo.imap import commands as c
from correo.imap import encoder
from correo.imap.parser import LineReceived

if TYPE_CHECKING:
    from correo.imap.session import Session

MECHANISMS = ("PLAIN", "LOGIN")


class AlreadyAnswered(Exception):
    """STARTTLS sent its tagged OK before upgrading; nothing more to send."""


async def starttls(s: Session, cmd: c.StartTls) -> str | None:
    """RFC 3501 §6.2.1; input pipelined after the command is discarded (RFC 2595 §3.1)."""
    if s.conn.tls:
        raise c.bad("TLS is already active")
    if not s.conn.tls_available:
        raise c.no("TLS is not available")
    s.send(encoder.tagged(cmd.tag, "OK", "Begin TLS negotiation now"))
    dropped = s.reader.discard_input()
    if dropped:
        s.conn.log.info("discarding %d byte(s) pipelined after STARTTLS", dropped)
    await s.conn.start_tls()
    raise AlreadyAnswered


async def login(s: Session, cmd: c.Login) -> str:
    """RFC 3501 §6.2.3 (LOGINDISABLED before TLS where plaintext is not allowed)."""
    if not s.plaintext_ok():
        raise c.no("Plaintext authentication requires TLS", "PRIVACYREQUIRED")
    return await verify(s, cmd.username, cmd.password)


async def authenticate(s: Session, cmd: c.Authenticate) -> str:
    """RFC 3501 §6.2.2 with the RFC 4959 initial response."""
    offered = MECHANISMS if s.plaintext_ok() else ()
    exchange = SaslExchange(offered)
    outcome = exchange.start(cmd.mechanism, cmd.initial)
    while isinstance(outcome, Challenge):
        s.send(b"+ " + outcome.data + b"\r\n")
        s.reader.want_line()
        event = await s.next_event()
        if event is None:
            raise ConnectionResetError("client left during AUTHENTICATE")
        if not isinstance(event, LineReceived):
            raise c.bad("Authentication line too long")
        outcome = exchange.step(event.data)
    if isinstance(outcome, SaslError):
        if outcome.kind is SaslErrorKind.UNKNOWN_MECHANISM:
            raise c.no(
                "Unsupported authentication mechanism",
                "CANNOT" if offered else "PRIVACYREQUIRED",
            )
        if outcome.kind is SaslErrorKind.INVALID:
            raise c.no("Authentication failed", "AUTHENTICATIONFAILED")
        if outcome.kind is SaslErrorKind.AUTHZ_DENIED:
            raise c.no("Authorization identity not permitted", "AUTHORIZATIONFAILED")
        raise c.bad(outcome.message)
    assert isinstance(outcome, Credentials)
    return await verify(s, outcome.username, outcome.password)


async def verify(s: Session, username: str, password: str) -> str:
    """Check the credentials (rate limited by the shared Authenticator); on success
    enter the authenticated state, allow full-size APPEND literals and switch to the
    long inactivity timer (RFC 9051 §5.4: at least 30 minutes once authenticated)."""
    result = await s.ctx.auth.authenticate(
        s.store, username, password, s.conn.peer_ip, session=s.conn.session_id
    )
    if result.reason is AuthReason.RATE_LIMITED:
        raise c.no("Too many failed attempts, try again later", "UNAVAILABLE")
    if not result.ok or result.account is None:
        raise c.no("Authentication failed", "AUTHENTICATIONFAILED")
    s.account = result.account
    s.state = c.State.AUTHENTICATED
    s.reader.authenticated()
    s.conn.set_timeout(max(s.limits.imap_timeout, 1800.0))
    s.conn.log.info("imap login: %s", result.account.address)
    s.ok_code("CAPABILITY " + s.capabilities())
    return "Logged in"
