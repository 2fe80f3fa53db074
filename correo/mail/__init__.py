"""Message formats: parse-once metadata (RFC 5322, MIME, IMAP views) and addresses.

* :mod:`correo.mail.message` — :func:`prepare`, :class:`MessageMeta`, IMAP ENVELOPE /
  BODYSTRUCTURE structures and section byte ranges.
* :mod:`correo.mail.address` — RFC 5321 paths for SMTP.
* :mod:`correo.mail.headers` — header splitting, RFC 2047 / RFC 2231 decoding.
"""

from correo.mail.message import (
    MessageMeta,
    bodystructure,
    envelope_structure,
    prepare,
    section_range,
)

__all__ = ["MessageMeta", "bodystructure", "envelope_structure", "prepare", "section_range"]
