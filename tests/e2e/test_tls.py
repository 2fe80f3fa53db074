"""TLS contexts: SNI picks the hosted name's certificate, SIGHUP-style reload swaps
certificates for new handshakes on the same listener, TLS 1.2 is the minimum."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import pytest
from cryptography import x509

from correo import config
from correo.net.tls import TlsContexts, make_self_signed


def subject_cn(der: bytes) -> str:
    cert = x509.load_der_x509_certificate(der)
    return str(cert.subject.rfc4514_string())


async def handshake(port: int, server_hostname: str, **opts: object) -> str:
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if "maximum_version" in opts:
        ctx.minimum_version = ssl.TLSVersion.MINIMUM_SUPPORTED
        ctx.maximum_version = opts["maximum_version"]  # type: ignore[assignment]
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    _reader, writer = await asyncio.open_connection(
        "127.0.0.1", port, ssl=ctx, server_hostname=server_hostname
    )
    obj = writer.get_extra_info("ssl_object")
    der = obj.getpeercert(binary_form=True)
    writer.close()
    return subject_cn(der)


@pytest.fixture
def certs(tmp_path: Path) -> Path:
    make_self_signed("default.example.test", tmp_path / "d.pem", tmp_path / "d.key")
    make_self_signed("mail.example.org", tmp_path / "o.pem", tmp_path / "o.key")
    (tmp_path / "correo.toml").write_text(
        '[tls]\ncert = "d.pem"\nkey = "d.key"\n'
        '[tls.names]\n"mail.example.org" = { cert = "o.pem", key = "o.key" }\n'
    )
    return tmp_path


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
async def test_sni_reload_and_minimum_version(certs: Path) -> None:
    settings = config.load(certs / "correo.toml")
    tls = TlsContexts(settings.tls)

    async def noop(_r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    server = await asyncio.start_server(noop, "127.0.0.1", 0, ssl=tls.server_context)
    port = server.sockets[0].getsockname()[1]
    try:
        assert await handshake(port, "mail.example.org") == "CN=mail.example.org"
        assert await handshake(port, "MAIL.example.org") == "CN=mail.example.org"
        assert await handshake(port, "unknown.example") == "CN=default.example.test"

        # An ACME client renews the default certificate in place; SIGHUP → reload().
        make_self_signed("renewed.example.test", certs / "d.pem", certs / "d.key")
        tls.reload()
        assert await handshake(port, "unknown.example") == "CN=renewed.example.test"
        assert await handshake(port, "mail.example.org") == "CN=mail.example.org"

        with pytest.raises((ssl.SSLError, ConnectionError)):
            await handshake(port, "x", maximum_version=ssl.TLSVersion.TLSv1_1)
    finally:
        server.close()
        await server.wait_closed()


def test_broken_certificate_is_one_line(certs: Path) -> None:
    (certs / "d.pem").write_text("not a certificate")
    settings = config.load(certs / "correo.toml")
    with pytest.raises(config.ConfigError) as e:
        TlsContexts(settings.tls)
    assert "\n" not in str(e.value) and "d.pem" in str(e.value)


def test_failed_reload_keeps_old_certificates(certs: Path) -> None:
    settings = config.load(certs / "correo.toml")
    tls = TlsContexts(settings.tls)
    before = tls.server_context
    (certs / "o.key").write_text("garbage")
    with pytest.raises(config.ConfigError):
        tls.reload()
    assert tls.server_context is before
