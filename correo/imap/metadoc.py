"""Partial decoding of stored message metadata for FETCH and SEARCH.

``correo.mail.message.MessageMeta.from_json`` rebuilds everything (envelope, MIME tree,
header index); over 10,000 messages that costs more than the FETCH or SEARCH itself.
:class:`MetaDoc` decodes the JSON document once and builds only the piece a request
needs, reading the keys ``MessageMeta.to_json`` writes ("env", "body", "hdrs"); if a
document lacks a key (another metadata version) it falls back to ``from_json``, so the
answer is the same either way. :meth:`MetaDoc.usable` tells whether the document can
answer at all; when it cannot, ``correo.imap.fetch.MessageSource.check_meta`` parses
the message again rather than fail the command.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from correo.mail.envelope import Envelope
from correo.mail.message import MessageMeta
from correo.mail.mime import BodyPart


class MetaDoc:
    """One message's metadata, decoded lazily and piece by piece."""

    __slots__ = ("_full", "_obj", "raw")

    def __init__(self, raw: bytes) -> None:
        self.raw = raw
        self._obj: dict[str, Any] | None = None
        self._full: MessageMeta | None = None

    def _get(self, key: str) -> Any:
        if self._obj is None:
            obj = json.loads(self.raw)
            self._obj = obj if isinstance(obj, dict) else {}
        return self._obj.get(key)

    def usable(self) -> bool:
        """Whether the document has what FETCH and SEARCH read (a message stored without
        ``correo.mail.message.prepare``, or corrupt metadata, has not)."""
        try:
            return (
                isinstance(self._get("env"), list)
                and isinstance(self._get("body"), list)
                and isinstance(self._get("hdrs"), dict)
                and isinstance(self._get("size"), int)
                and isinstance(self._get("hend"), int)
            )
        except ValueError:  # not JSON at all
            return False

    @property
    def full(self) -> MessageMeta:
        """The whole :class:`MessageMeta` (section offsets need sizes and the tree)."""
        if self._full is None:
            self._full = MessageMeta.from_json(self.raw)
        return self._full

    def envelope(self) -> Envelope:
        env = self._get("env")
        return Envelope.from_obj(env) if isinstance(env, list) else self.full.envelope

    def body(self) -> BodyPart:
        body = self._get("body")
        return BodyPart.from_obj(body) if isinstance(body, list) else self.full.body

    def headers(self) -> Mapping[str, Sequence[str]]:
        """Lower-case field name → decoded values (the SEARCH header index)."""
        hdrs = self._get("hdrs")
        return hdrs if isinstance(hdrs, dict) else self.full.headers
