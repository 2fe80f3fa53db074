"""What every session shares: settings, the store, authentication, TLS."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from correo.config import Settings

if TYPE_CHECKING:
    from correo.auth.service import Authenticator
    from correo.net.tls import TlsContexts
    from correo.store.base import Store


@dataclass(slots=True)
class Context:
    """Server-wide state handed to every session (built by ``correo.server``)."""

    settings: Settings
    store: Store
    auth: Authenticator
    tls: TlsContexts | None
    extras: dict[str, Any] = field(default_factory=dict)
    """Per-protocol shared state (e.g. the SMTP submission counters), keyed by module."""
