-- correo SQLite schema, version 2: what the outbound queue remembers of each attempt.
-- status: RFC 3463 enhanced status of the last result ("4.4.1", "5.1.1");
-- remote_mta: the host that gave it (RFC 3464 §2.3.5 Remote-MTA);
-- dsn_pending: the RFC 3464 Action ('failed', 'delayed', 'relayed') of a report still
-- to be sent to the envelope sender; NULL when none is owed. A queue message is removed
-- (and its body reference released) only once every recipient is final and no report
-- is owed, so a crash between the result and its report re-sends the report.
ALTER TABLE queue_recipients ADD COLUMN status TEXT;
ALTER TABLE queue_recipients ADD COLUMN remote_mta TEXT;
ALTER TABLE queue_recipients ADD COLUMN dsn_pending TEXT;
CREATE INDEX queue_recipients_dsn ON queue_recipients(queue_id, id)
    WHERE dsn_pending IS NOT NULL;
CREATE INDEX queue_recipients_lease ON queue_recipients(lease_owner)
    WHERE lease_owner IS NOT NULL;
