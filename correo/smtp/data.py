"""Message text: the DATA reader (RFC 5321 §4.1.1.4, §4.5.2) and BDAT assembly (RFC 3030).

Rules, chosen against SMTP smuggling (CVE-2023-51764 family) and for a store that holds
CRLF text only:

* Only ``<CRLF>.<CRLF>`` ends DATA: a line that is exactly ``.`` ends the message only when
  the line before it ended with a real CRLF (the DATA command's own line counts) and the
  ``.`` line itself ends with CRLF. ``\\n.\\n``, ``\\r.\\r``, ``\\n.\\r\\n``,
  ``\\r\\n.\\n`` and friends are message text.
* A bare LF ends a *line* and is normalised to CRLF (Postfix's
  ``smtpd_forbid_bare_newline = normalize``). A bare CR is never a line end: it stays
  inside its line as an ordinary octet.
* Dot-unstuffing (RFC 5321 §4.5.2): a line starting with ``.`` that has more characters
  loses its first ``.``; a lone ``.`` that does not end the data is kept as ``.``.
* NUL octets make the message refused (554 5.6.0) at its end.
* **Long lines.** A text line longer than 998 octets plus CRLF (RFC 5321 §4.5.3.1.6,
  RFC 5322 §2.1.1; the stuffing dot not counted) makes the whole message refused with
  554 5.6.0 at its end. The reader stops keeping such a line the moment it passes the
  limit, so it costs no memory, and it keeps reading so the session stays in step.
* Size: past ``max_size`` octets the text is dropped (not buffered) and the message is
  refused with 552 5.3.4 at its end (RFC 1870 §6.3).

Memory: the reader keeps at most one partial line (≤ 1001 octets) besides the message
text, which is itself bounded by ``max_size``.
"""

from __future__ import annotations

import re

from correo.smtp import replies
from correo.smtp.replies import Reply

MAX_TEXT_LINE = 998
"""Octets of a text line without its CRLF (RFC 5321 §4.5.3.1.6)."""
_MAX_WIRE_LINE = MAX_TEXT_LINE + 3
"""A stuffed line on the wire: the extra ``.`` plus CRLF."""
_END = b"\r\n.\r\n"
_BARE_LF = re.compile(rb"(?<!\r)\n")


class DataReader:
    """Incremental reader for one DATA transfer."""

    __slots__ = (
        "_bol_crlf",
        "_in_long",
        "_long_cr",
        "_max",
        "long_line",
        "nul",
        "parts",
        "size",
        "too_big",
    )

    def __init__(self, max_size: int, after_crlf: bool = True) -> None:
        self._max = max_size
        self.parts: list[bytes] = []
        self.size = 0
        """Octets of message text seen (after unstuffing and normalisation)."""
        self.too_big = False
        self.nul = False
        self.long_line = False
        self._bol_crlf = after_crlf
        """At the start of a line, and the previous line ended with a real CRLF."""
        self._in_long = False
        self._long_cr = False

    def feed(self, buf: bytearray) -> bool:
        """Consume message text from the front of ``buf``; True once ``<CRLF>.<CRLF>``
        has been consumed (what follows it in ``buf`` is left for the command parser)."""
        while True:
            if self._in_long:
                nl = buf.find(b"\n")
                if nl < 0:
                    if buf:
                        self._long_cr = buf[-1] == 0x0D
                    del buf[:]
                    return False
                self._bol_crlf = buf[nl - 1] == 0x0D if nl else self._long_cr
                del buf[: nl + 1]
                self._in_long = False
                continue
            if self._bol_crlf and buf.startswith(b".\r\n"):
                del buf[:3]
                return True
            end = buf.find(_END)
            if end >= 0:
                self._lines(bytes(buf[: end + 2]))
                del buf[: end + len(_END)]
                return True
            last = buf.rfind(b"\n")
            if last >= 0:
                self._lines(bytes(buf[: last + 1]))
                del buf[: last + 1]
            if len(buf) > _MAX_WIRE_LINE:
                self.long_line = True
                self._in_long = True
                continue
            return False

    def _lines(self, seg: bytes) -> None:
        """Whole lines (``seg`` ends with LF, holds no end-of-data marker)."""
        if (
            seg.rfind(b"\n.") < 0  # as ``b"\n." not in seg``, but twice as fast here
            and seg[:1] != b"."
            and b"\0" not in seg
            and seg.count(b"\n") == seg.count(b"\r\n")
            and not _has_long_line(seg)
        ):
            self._add(seg)  # the common case: nothing to change, one append
        else:
            out = []
            pos = 0
            n = len(seg)
            while pos < n:
                nl = seg.index(b"\n", pos)
                end = nl - 1 if nl > pos and seg[nl - 1] == 0x0D else nl
                line = seg[pos:end]
                if line[:1] == b"." and len(line) > 1:
                    line = line[1:]
                if len(line) > MAX_TEXT_LINE:
                    self.long_line = True
                if b"\0" in line:
                    self.nul = True
                out.append(line)
                out.append(b"\r\n")
                pos = nl + 1
            self._add(b"".join(out))
        self._bol_crlf = seg.endswith(b"\r\n")

    @property
    def kept(self) -> int:
        """Octets of message text held in memory."""
        return 0 if self.too_big else self.size

    def _add(self, text: bytes) -> None:
        self.size += len(text)
        if self.too_big:
            return
        if self._max and self.size > self._max:
            self.too_big = True
            self.parts.clear()
            return
        self.parts.append(text)

    def result(self) -> bytes | Reply:
        """The message text, or the reply refusing it."""
        if self.too_big:
            return replies.R552_MESSAGE_TOO_BIG
        if self.nul:
            return replies.R554_NUL_IN_MESSAGE
        if self.long_line:
            return replies.R554_LONG_LINE
        return b"".join(self.parts)


def _has_long_line(text: bytes) -> bool:
    """A line longer than :data:`MAX_TEXT_LINE` octets without its CRLF (RFC 5321
    §4.5.3.1.6), in text whose every LF is part of a CRLF; the text after the last CRLF,
    if any, counts as a line too. The same as splitting at CRLF and measuring each piece,
    without making the pieces: it jumps from the last LF of each 1000-octet window to the
    next, so a 4 KB message costs a handful of ``rfind`` calls."""
    n = len(text)
    pos = 0
    while n - pos > MAX_TEXT_LINE:
        # a terminated line starting at pos is too long iff its CRLF is not among the
        # next MAX_TEXT_LINE + 2 octets; an unterminated tail iff it is that long at all
        nl = text.rfind(b"\n", pos, pos + MAX_TEXT_LINE + 2)
        if nl < 0:
            return True
        pos = nl + 1
    return False


def finish_chunked(data: bytes) -> bytes | Reply:
    """A BDAT message (RFC 3030) under the same rules as DATA text: bare LF → CRLF,
    NUL refused, lines over 998 octets refused. No dot-stuffing applies to BDAT."""
    if b"\0" in data:
        return replies.R554_NUL_IN_MESSAGE
    if b"\n" in data and data.count(b"\n") != data.count(b"\r\n"):
        data = _BARE_LF.sub(b"\r\n", data)
    if _has_long_line(data):
        return replies.R554_LONG_LINE
    return data
