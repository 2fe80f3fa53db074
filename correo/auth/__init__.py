"""Authentication shared by SMTP, POP3 and IMAP.

* :mod:`correo.auth.sasl`: sans-I/O SASL PLAIN (RFC 4616) and LOGIN exchanges.
* :mod:`correo.auth.passwords`: argon2id hashes (RFC 9106) and the async, cached verifier.
* :mod:`correo.auth.limits`: failed-login limits per IP and account; hourly counters.
* :mod:`correo.auth.service`: :class:`Authenticator` and :func:`plaintext_allowed`.
"""

from correo.auth.limits import FailureLimiter, HourlyCounter, MemoryFailureLimiter
from correo.auth.passwords import PasswordVerifier, hash_password, needs_rehash, verify
from correo.auth.sasl import (
    MECHANISMS,
    Challenge,
    Credentials,
    SaslError,
    SaslErrorKind,
    SaslExchange,
)
from correo.auth.service import (
    Authenticator,
    AuthReason,
    AuthResult,
    normalize_username,
    plaintext_allowed,
)

__all__ = [
    "MECHANISMS",
    "AuthReason",
    "AuthResult",
    "Authenticator",
    "Challenge",
    "Credentials",
    "FailureLimiter",
    "HourlyCounter",
    "MemoryFailureLimiter",
    "PasswordVerifier",
    "SaslError",
    "SaslErrorKind",
    "SaslExchange",
    "hash_password",
    "needs_rehash",
    "normalize_username",
    "plaintext_allowed",
    "verify",
]
