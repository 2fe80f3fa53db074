"""The CAPA list (RFC 2449 §5-§6) for a session's state, as pure data.

What a client is told matches what the session will accept: ``USER`` and ``SASL`` appear
before login only where a password may be sent (TLS, or a listener configured to allow
plaintext, RFC 2595 §2.1 and RFC 5034 §4 "MUST implement a configuration in which it does
NOT advertise or permit any plaintext password mechanisms"); ``STLS`` only on a plain
connection of a server that has a certificate (RFC 2595 §4).
"""

from __future__ import annotations

from collections.abc import Sequence

from correo import __version__ as _version
from correo.pop3.protocol import State


def capabilities(
    state: State,
    *,
    passwords_allowed: bool,
    stls: bool,
    mechanisms: Sequence[str],
    expire: str,
    login_delay: int,
) -> list[str]:
    """The capability lines for ``state`` (without the ``+OK`` line and the final dot).

    ``passwords_allowed``: USER/PASS and AUTH may be used now; ``stls``: STLS is offered
    now; ``expire``: ``"NEVER"`` or a number of days (RFC 2449 §6.7); ``login_delay``:
    seconds, 0 for none (RFC 2449 §6.5).
    """
    logged_in = state is State.TRANSACTION
    caps = ["TOP", "UIDL", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING"]
    if logged_in or passwords_allowed:
        # RFC 5034 §3: SASL stays listed after a successful AUTH.
        caps.append("USER")
        if mechanisms:
            caps.append("SASL " + " ".join(mechanisms))
    if stls and not logged_in:
        caps.append("STLS")
    caps.append(f"EXPIRE {expire}")
    if login_delay > 0:
        caps.append(f"LOGIN-DELAY {login_delay}")
    caps.append("UTF8")
    caps.append(f"IMPLEMENTATION correo {_version}")
    return caps
