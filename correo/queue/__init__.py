"""The outbound queue: mail for other domains, relayed with retries, expiry and bounces.

* ``runner``: the background task (claim with leases, group by domain, record, report);
  ``wake(ctx)`` after queueing a message.
* ``relay``: destination hosts (``[relay.routes]`` or MX) and the reply rules.
* ``client``: the outbound SMTP client (PIPELINING, STARTTLS, AUTH, DSN parameters).
* ``resolver``: MX / implicit MX / null MX lookups behind a dnspython-shaped protocol.
* ``schedule``: the retry schedule, expiry and the delay notice.
* ``bounce``: RFC 3464 reports to senders (``correo.mail.dsn`` builds them).
* ``srs``: SRS rewriting of forwarded senders and ``Delivered-To`` loop detection.

Storage is ``correo.store.queue.QueueStore`` (SQLite: ``queue_sqlite``).
"""
