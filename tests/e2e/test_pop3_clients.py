"""POP3 end to end with real clients: stdlib poplib (plain, STLS, POP3S, UTF8), curl, and
imapclient watching a POP3 deletion arrive as an IMAP EXPUNGE."""

from __future__ import annotations

import importlib.util
import poplib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from typing import Any

import pytest

USER, PASSWORD = "alice@example.test", "secret"

SMALL = (
    b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: one\r\n\r\n"
    b"hello\r\n.leading dot\r\n..two dots\r\n.\r\nend\r\n"
)


def big_message() -> bytes:
    """About 200 KB: lines of every length, dots at line starts, across 64 KB chunks."""
    head = b"From: bob@example.test\r\nTo: alice@example.test\r\nSubject: big\r\n\r\n"
    lines = []
    for i in range(4000):
        lines.append((b"." if i % 7 == 0 else b"") + b"line %d " % i + b"x" * (i % 61))
    return head + b"\r\n".join(lines) + b"\r\n"


UTF8_MSG = (
    "From: bob@example.test\r\nTo: alice@example.test\r\nSubject: café ☕\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n\r\nnaïve body\r\n"
).encode()


def joined(lines: list[bytes]) -> bytes:
    """What poplib returns, put back together as the octets on the server."""
    return b"".join(line + b"\r\n" for line in lines)


def inbox_uids(ms: Any, address: str = USER) -> list[int]:
    async def go() -> list[int]:
        acct = await ms.store.get_account(address)
        box = await ms.store.get_mailbox(acct.id, "INBOX")
        return [i.uid for i in await ms.store.message_infos(box.id)]

    return ms.run(go())


def uidvalidity(ms: Any, address: str = USER) -> int:
    async def go() -> int:
        acct = await ms.store.get_account(address)
        box = await ms.store.get_mailbox(acct.id, "INBOX")
        return int(box.uidvalidity)

    return ms.run(go())


def login(ms: Any, *, tls: bool = True) -> poplib.POP3:
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    if tls:
        pop.stls(ms.client_tls())
    pop.user(USER)
    pop.pass_(PASSWORD)
    return pop


def login_retrying(ms: Any) -> poplib.POP3:
    """Log in, waiting out [IN-USE] while a dropped session's lock is being released."""
    deadline = time.monotonic() + 10
    while True:
        try:
            return login(ms)
        except poplib.error_proto as exc:
            if b"[IN-USE]" not in exc.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


@pytest.fixture
def ms(mailserver: Any) -> Any:
    for data in (SMALL, big_message(), UTF8_MSG):
        mailserver.deliver(USER, data)
    return mailserver


def test_capa_on_loopback_plain_listener(ms: Any) -> None:
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    assert pop.getwelcome().startswith(b"+OK")
    caps = pop.capa()
    for tag in ("TOP", "UIDL", "USER", "RESP-CODES", "AUTH-RESP-CODE", "PIPELINING", "STLS",
                "UTF8", "IMPLEMENTATION"):  # fmt: skip
        assert tag in caps, tag
    assert caps["SASL"] == ["PLAIN", "LOGIN"]
    assert caps["EXPIRE"] == ["NEVER"]
    assert "LOGIN-DELAY" not in caps
    pop.quit()


def test_stls_list_uidl_retr_top(ms: Any) -> None:
    messages = [SMALL, big_message(), UTF8_MSG]
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    pop.stls(ms.client_tls())
    assert "STLS" not in pop.capa()  # RFC 2595 §4: not offered under TLS
    pop.user(USER)
    pop.pass_(PASSWORD)
    assert pop.stat() == (3, sum(len(m) for m in messages))
    _, listing, _ = pop.list()
    assert listing == [b"%d %d" % (i, len(m)) for i, m in enumerate(messages, 1)]
    assert pop.list(2).split() == [b"+OK", b"2", str(len(messages[1])).encode()]
    v = uidvalidity(ms)
    uids = inbox_uids(ms)
    _, ids, _ = pop.uidl()
    assert ids == [b"%d %d.%d" % (i, v, uid) for i, uid in enumerate(uids, 1)]
    assert pop.uidl(3).split()[2] == b"%d.%d" % (v, uids[2])
    for i, m in enumerate(messages, 1):
        resp, lines, _ = pop.retr(i)
        assert resp == b"+OK %d octets" % len(m)
        assert joined(lines) == m  # byte-identical after un-stuffing
    _, lines, _ = pop.top(1, 2)
    assert joined(lines) == SMALL.split(b"\r\n\r\n")[0] + b"\r\n\r\nhello\r\n.leading dot\r\n"
    _, lines, _ = pop.top(2, 0)
    assert joined(lines) == big_message().split(b"\r\n\r\n")[0] + b"\r\n\r\n"
    head, _, body = big_message().partition(b"\r\n\r\n")
    _, lines, _ = pop.top(2, 3000)  # spans several 64 KB chunks
    assert joined(lines) == head + b"\r\n\r\n" + b"".join(
        body.split(b"\r\n")[i] + b"\r\n" for i in range(3000)
    )
    _, lines, _ = pop.top(2, 10**6)  # more lines than the body has: the whole message
    assert joined(lines) == big_message()
    pop.quit()
    assert len(inbox_uids(ms)) == 3  # nothing deleted


def test_uidl_stable_across_sessions(ms: Any) -> None:
    pop = login(ms)
    first = pop.uidl()[1]
    pop.quit()
    pop = login(ms)
    assert pop.uidl()[1] == first
    pop.quit()


def test_dele_quit_removes_from_store(ms: Any) -> None:
    uids = inbox_uids(ms)
    pop = login(ms)
    pop.dele(1)
    pop.dele(3)
    with pytest.raises(poplib.error_proto, match=r"message 1 is deleted"):
        pop.retr(1)
    assert pop.stat() == (1, len(big_message()))
    assert pop.quit().startswith(b"+OK")
    assert inbox_uids(ms) == [uids[1]]  # durably gone once +OK arrived
    pop = login(ms)
    assert pop.stat() == (1, len(big_message()))
    assert pop.uidl(1).split()[2] == b"%d.%d" % (uidvalidity(ms), uids[1])
    pop.quit()


def test_dele_without_quit_removes_nothing(ms: Any) -> None:
    pop = login(ms)
    pop.dele(1)
    pop.dele(2)
    pop.sock.shutdown(socket.SHUT_RDWR)  # dropped connection: no UPDATE (RFC 1939 §6)
    pop.close()
    pop = login_retrying(ms)
    assert pop.stat()[0] == 3
    pop.quit()
    assert len(inbox_uids(ms)) == 3


def test_rset_unmarks(ms: Any) -> None:
    pop = login(ms)
    pop.dele(1)
    assert pop.rset().startswith(b"+OK")
    pop.quit()
    assert len(inbox_uids(ms)) == 3


def test_second_session_in_use_until_quit(ms: Any) -> None:
    first = login(ms)
    second = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    second.user(USER)
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    # The lock is released before QUIT's +OK: logging in again at once works.
    second.user(USER)
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()


def test_new_mail_invisible_until_next_login(ms: Any) -> None:
    pop = login(ms)
    ms.deliver(USER, SMALL)
    assert pop.stat()[0] == 3
    pop.quit()
    pop = login(ms)
    assert pop.stat()[0] == 4
    pop.quit()


def test_wrong_password_is_auth_error(ms: Any) -> None:
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    pop.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        pop.pass_("wrong")
    with pytest.raises(poplib.error_proto, match=r"PASS must follow"):
        pop.pass_(PASSWORD)  # USER is needed again
    pop.user(USER)
    assert pop.pass_(PASSWORD).startswith(b"+OK")
    pop.quit()


def test_repeated_failures_are_rate_limited(ms: Any) -> None:
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    codes = []
    for _ in range(ms.settings.auth.max_failures + 1):
        pop.user("bob@example.test")
        try:
            pop.pass_("wrong")
        except poplib.error_proto as exc:
            codes.append(exc.args[0].split()[1])
    assert codes[:-1] == [b"[AUTH]"] * ms.settings.auth.max_failures
    assert codes[-1] == b"[SYS/TEMP]"
    pop.quit()


def test_plaintext_refused_without_tls_on_non_loopback_rules(
    make_mailserver: Callable[..., Any],
) -> None:
    ms = make_mailserver("[auth]\nplaintext_on_loopback = false\n")
    ms.deliver(USER, SMALL)
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    caps = pop.capa()
    assert "STLS" in caps and "USER" not in caps and "SASL" not in caps
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\] plaintext"):
        pop.user(USER)
    with pytest.raises(poplib.error_proto, match=r"plaintext"):
        pop._shortcmd("AUTH PLAIN AGFsaWNlQGV4YW1wbGUudGVzdABzZWNyZXQ=")
    pop.stls(ms.client_tls())
    caps = pop.capa()
    assert "USER" in caps and caps["SASL"] == ["PLAIN", "LOGIN"]
    pop.user(USER)
    pop.pass_(PASSWORD)
    assert pop.stat()[0] == 1
    pop.quit()


def test_pop3s_implicit_tls(ms: Any) -> None:
    pop = poplib.POP3_SSL(ms.host, ms.ports["pop3s"], context=ms.client_tls(), timeout=10)
    caps = pop.capa()
    assert "STLS" not in caps and "USER" in caps
    pop.user(USER)
    pop.pass_(PASSWORD)
    _, lines, _ = pop.retr(2)
    assert joined(lines) == big_message()
    pop.quit()


def test_utf8(ms: Any) -> None:
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    assert "UTF8" in pop.capa()
    assert pop.utf8().startswith(b"+OK")
    pop.user(USER)
    pop.pass_(PASSWORD)
    _, lines, _ = pop.retr(3)
    assert joined(lines) == UTF8_MSG
    pop.quit()


def test_expire_zero_deletes_retrieved(make_mailserver: Callable[..., Any]) -> None:
    ms = make_mailserver("[pop3]\nexpire = 0\n")
    for data in (SMALL, UTF8_MSG):
        ms.deliver(USER, data)
    uids = inbox_uids(ms)
    pop = login(ms)
    assert pop.capa()["EXPIRE"] == ["0"]
    pop.retr(2)
    pop.top(1, 0)  # TOP is not a download
    pop.quit()
    assert inbox_uids(ms) == uids[:1]


def test_login_delay(make_mailserver: Callable[..., Any]) -> None:
    ms = make_mailserver("[pop3]\nlogin_delay = 60\n")
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    assert pop.capa()["LOGIN-DELAY"] == ["60"]
    pop.user(USER)
    pop.pass_(PASSWORD)
    pop.quit()
    pop = poplib.POP3(ms.host, ms.ports["pop3"], timeout=10)
    pop.user(USER)
    with pytest.raises(poplib.error_proto, match=r"\[LOGIN-DELAY\]"):
        pop.pass_(PASSWORD)
    pop.quit()


def test_idle_timeout_before_login(make_mailserver: Callable[..., Any]) -> None:
    ms = make_mailserver("[limits]\nlogin_timeout = 1\n")
    with socket.create_connection((ms.host, ms.ports["pop3"]), timeout=10) as s:
        assert s.recv(512).startswith(b"+OK")
        start = time.monotonic()
        assert s.recv(512) == b""  # RFC 1939 §3: closed without a reply
        assert 0.5 < time.monotonic() - start < 8
    pop = login(ms, tls=False)
    time.sleep(1.5)  # after login the 10-minute timer applies
    assert pop.noop().startswith(b"+OK")
    pop.quit()


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl not installed")
def test_curl_lists_and_retrieves(ms: Any, tmp_path: Any) -> None:
    url = f"pop3://{ms.host}:{ms.ports['pop3']}"
    common = ["curl", "-sS", "--max-time", "20", "-u", f"{USER}:{PASSWORD}"]
    out = subprocess.run([*common, url + "/"], capture_output=True, check=True).stdout
    assert out.split(b"\r\n")[:3] == [b"1 %d" % len(SMALL), b"2 %d" % len(big_message()),
                                      b"3 %d" % len(UTF8_MSG)]  # fmt: skip
    port = ms.ports["pop3"]
    tls = ["--ssl-reqd", "--cacert", str(ms.cafile), "--resolve", f"localhost:{port}:{ms.host}"]
    url_tls = f"pop3://localhost:{ms.ports['pop3']}/2"
    out = subprocess.run([*common, *tls, url_tls], capture_output=True, check=True).stdout
    assert out == big_message()
    assert len(inbox_uids(ms)) == 3


@pytest.mark.skipif(
    importlib.util.find_spec("correo.imap.session") is None, reason="IMAP not built yet"
)
def test_pop3_deletion_is_an_imap_expunge(ms: Any) -> None:
    from imapclient import IMAPClient

    imap = IMAPClient(ms.host, port=ms.ports["imaps"], ssl=True, ssl_context=ms.client_tls(),
                      timeout=10)  # fmt: skip
    imap.login(USER, PASSWORD)
    imap.select_folder("INBOX")
    imap.idle()
    try:
        pop = login(ms)
        pop.dele(2)
        pop.quit()
        seen: list[Any] = []
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            r[1] == b"EXPUNGE" for r in seen if isinstance(r, tuple) and len(r) > 1
        ):
            seen += imap.idle_check(timeout=1)
        assert (2, b"EXPUNGE") in seen
    finally:
        imap.idle_done()
        imap.logout()
