"""TLS server contexts: one certificate per hosted name chosen by SNI, TLS 1.2 minimum,
reloaded on SIGHUP (RFC 8314 §4.1 recommends TLS 1.2 or later; ACME renews certificates
in place, so the server re-reads them without a restart).
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import logging
import os
import ssl
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from correo.config import ConfigError, TlsSettings

log = logging.getLogger(__name__)


def _context(cert: Path, key: Path, min_version: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_3 if min_version == "1.3" else ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE
    ctx.options |= getattr(ssl, "OP_NO_RENEGOTIATION", 0)
    try:
        ctx.load_cert_chain(str(cert), str(key))
    except FileNotFoundError as exc:
        raise ConfigError(f"{exc.filename}: certificate or key file not found") from None
    except ssl.SSLError as exc:
        raise ConfigError(f"{cert}: cannot load certificate/key: {exc.reason}") from None
    return ctx


class TlsContexts:
    """The server's TLS contexts. ``server_context`` is what listeners use; its SNI
    callback switches to the context of the requested hosted name."""

    def __init__(self, settings: TlsSettings) -> None:
        self.settings = settings
        self._by_name: dict[str, ssl.SSLContext] = {}
        self._default: ssl.SSLContext | None = None
        self.reload()

    @property
    def available(self) -> bool:
        return self._default is not None

    @property
    def server_context(self) -> ssl.SSLContext:
        if self._default is None:
            raise RuntimeError("TLS is not configured")
        return self._default

    def reload(self) -> None:
        """(Re)read every certificate; on error keep the old contexts and raise."""
        s = self.settings
        if s.cert is None or s.key is None:
            self._default = None
            return
        default = _context(s.cert, s.key, s.min_version)
        by_name = {n: _context(p.cert, p.key, s.min_version) for n, p in s.names.items()}

        def pick(sock: ssl.SSLObject, name: str | None, _ctx: ssl.SSLContext) -> None:
            if name:
                chosen = by_name.get(name.lower())
                if chosen is None and "." in name:
                    chosen = by_name.get("*." + name.lower().split(".", 1)[1])
                if chosen is not None:
                    sock.context = chosen
            return None

        default.sni_callback = pick
        self._by_name = by_name
        if self._default is None:
            self._default = default
        else:
            # Listeners hold the old default context object: swap its certificate in
            # place so new handshakes on existing listeners see the renewed files.
            self._default.load_cert_chain(str(s.cert), str(s.key))
            self._default.sni_callback = pick
        log.info("tls: loaded %d certificate(s)", 1 + len(by_name))


def make_self_signed(hostname: str, cert_path: Path, key_path: Path, days: int = 825) -> None:
    """Write a self-signed ECDSA P-256 certificate for ``hostname`` (``correo init``)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = dt.datetime.now(dt.UTC)
    alt: list[x509.GeneralName] = [x509.DNSName(hostname)]
    if hostname != "localhost":
        alt.append(x509.DNSName("localhost"))
    alt.append(x509.IPAddress(ipaddress.ip_address("127.0.0.1")))
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_bytes = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key_bytes)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
