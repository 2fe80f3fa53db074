"""correo: a complete mail server (SMTP, POP3, IMAP, durable queue) on SQLite or PostgreSQL."""

__version__ = "0.1.0"
