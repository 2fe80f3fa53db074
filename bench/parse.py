"""Parse-once cost: µs per message for ``correo.mail.message.prepare`` (DESIGN.md §3).

Prints figures for a typical 4 KB message (text + HTML alternative, ~20 header fields)
and a 64 KB one (plus a base64 attachment), against the stdlib ``compat32`` parser for
reference. Run: ``.venv/bin/python bench/parse.py``.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import os
import platform
import sys
import timeit

from correo.mail.message import parse, prepare

HEADER = (
    b"Return-Path: <alice@example.org>\r\n"
    b"Received: from mx.example.org (mx.example.org [192.0.2.1])\r\n"
    b"\tby mail.example.net with ESMTPS id 4a2b3c\r\n"
    b"\tfor <bob@example.net>; Mon, 2 Nov 2026 10:00:00 +0000\r\n"
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.org; s=sel; h=from:to:subject:date;\r\n"
    b"\tbh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=dGhpcyBpcyBub3QgYSByZWFsIHNp\r\n"
    b"Message-ID: <20261102100000.12345@example.org>\r\n"
    b"Date: Mon, 2 Nov 2026 10:00:00 +0000\r\n"
    b'From: "Alice Example" <alice@example.org>\r\n'
    b"To: Bob <bob@example.net>, carol@example.net\r\n"
    b"Cc: =?utf-8?q?Dav=C3=AF?= <dave@example.com>\r\n"
    b"Subject: =?utf-8?b?UXVhcnRlcmx5IHJlcG9ydCDigJQgZHJhZnQ=?=\r\n"
    b"In-Reply-To: <abc@example.net>\r\n"
    b"References: <abc@example.net> <def@example.net>\r\n"
    b"MIME-Version: 1.0\r\n"
    b"X-Mailer: bench\r\n"
    b"List-Id: <bench.example.org>\r\n"
)


def message(size: int) -> bytes:
    text = (b"Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod\r\n") * 20
    html = b"<html><body><p>" + text.replace(b"\r\n", b"<br>\r\n") + b"</p></body></html>\r\n"
    parts = [
        b'Content-Type: multipart/mixed; boundary="outer"\r\n\r\n',
        b'--outer\r\nContent-Type: multipart/alternative; boundary="alt"\r\n\r\n',
        b"--alt\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + text,
        b"--alt\r\nContent-Type: text/html; charset=utf-8\r\n\r\n" + html,
        b"--alt--\r\n",
    ]
    msg = HEADER + b"".join(parts)
    room = size - len(msg) - 200
    if room > 0:
        blob = base64.encodebytes(bytes(range(256)) * (room * 3 // 4 // 256 + 1))
        blob = blob.replace(b"\n", b"\r\n")[:room]
        msg += (
            b'--outer\r\nContent-Type: application/pdf; name="r.pdf"\r\n'
            b"Content-Disposition: attachment; filename*=utf-8''r%C3%A9sum%C3%A9.pdf\r\n"
            b"Content-Transfer-Encoding: base64\r\n\r\n" + blob + b"\r\n"
        )
    return msg + b"--outer--\r\n"


def bench(label: str, data: bytes) -> None:
    n = 2000
    ours = min(timeit.repeat(lambda: prepare(data), number=n, repeat=5)) / n * 1e6
    scan = min(timeit.repeat(lambda: parse(data), number=n, repeat=5)) / n * 1e6
    parser = email.parser.BytesParser(policy=email.policy.compat32)
    std = min(timeit.repeat(lambda: parser.parsebytes(data), number=n // 4, repeat=3))
    std = std / (n // 4) * 1e6
    print(
        f"{label}: {len(data):6d} octets  prepare {ours:7.1f} µs/message"
        f"  (scan {scan:6.1f} µs, stdlib compat32 parse alone {std:7.1f} µs)"
    )


def main() -> None:
    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(
        f"Python {sys.version.split()[0]} on {platform.machine()} {platform.system()},"
        f" {os.cpu_count()} CPUs, load average {load}; best of 5 runs"
    )
    bench("4 KB", message(4096))
    bench("64 KB", message(65536))


if __name__ == "__main__":
    main()
