-- correo SQLite schema, version 1.
-- Applied by correo.store.sqlite_schema inside one transaction; never edit a released
-- migration: add 0002_*.sql instead.

-- Global counters (e.g. the last UIDVALIDITY handed out, so a value is never reused).
CREATE TABLE counters (
    name  TEXT PRIMARY KEY,
    value INTEGER NOT NULL
) WITHOUT ROWID;

-- ---------------------------------------------------------------- directory
CREATE TABLE domains (
    name    TEXT PRIMARY KEY,
    created REAL NOT NULL
) WITHOUT ROWID;

CREATE TABLE accounts (
    id            INTEGER PRIMARY KEY,
    address       TEXT NOT NULL UNIQUE,
    domain        TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    quota         INTEGER NOT NULL DEFAULT 0,
    used          INTEGER NOT NULL DEFAULT 0,
    disabled      INTEGER NOT NULL DEFAULT 0,
    created       REAL NOT NULL
);
CREATE INDEX accounts_domain ON accounts(domain);

-- source is "user@domain" or "@domain" (catch-all); targets is a JSON array of addresses.
CREATE TABLE aliases (
    source  TEXT PRIMARY KEY,
    domain  TEXT NOT NULL REFERENCES domains(name),
    targets TEXT NOT NULL,
    created REAL NOT NULL
) WITHOUT ROWID;
CREATE INDEX aliases_domain ON aliases(domain);

-- ---------------------------------------------------------------- bodies
-- One row per distinct body (SHA-256 hex). refcount counts messages rows plus
-- queue_messages rows that point at it; the row goes (and its file after commit) at 0.
-- data holds bodies up to the inline threshold; NULL means data_dir/blobs/ab/cd/<sha>.
-- An ordinary rowid table (not WITHOUT ROWID): its rows are kilobytes (inline body plus
-- metadata), which SQLite stores far better outside the primary-key B-tree.
CREATE TABLE blobs (
    sha      TEXT PRIMARY KEY,
    size     INTEGER NOT NULL,
    refcount INTEGER NOT NULL,
    data     BLOB,
    meta     BLOB NOT NULL
);

-- ---------------------------------------------------------------- mailboxes
CREATE TABLE mailboxes (
    id               INTEGER PRIMARY KEY,
    account_id       INTEGER NOT NULL REFERENCES accounts(id),
    name             TEXT NOT NULL,
    uidvalidity      INTEGER NOT NULL,
    uidnext          INTEGER NOT NULL DEFAULT 1,
    highestmodseq    INTEGER NOT NULL DEFAULT 1,
    special_use      TEXT,
    selectable       INTEGER NOT NULL DEFAULT 1,
    n_exists         INTEGER NOT NULL DEFAULT 0,
    n_unseen         INTEGER NOT NULL DEFAULT 0,
    size             INTEGER NOT NULL DEFAULT 0,
    first_recent_uid INTEGER NOT NULL DEFAULT 1,
    UNIQUE (account_id, name)
);

-- Names only: a subscription may name a mailbox that does not exist (RFC 3501 §6.3.6).
CREATE TABLE subscriptions (
    account_id INTEGER NOT NULL REFERENCES accounts(id),
    name       TEXT NOT NULL,
    PRIMARY KEY (account_id, name)
) WITHOUT ROWID;

-- flags: the flag set as one space-separated, sorted string ("" when none).
CREATE TABLE messages (
    mailbox_id   INTEGER NOT NULL REFERENCES mailboxes(id),
    uid          INTEGER NOT NULL,
    modseq       INTEGER NOT NULL,
    flags        TEXT NOT NULL,
    internaldate REAL NOT NULL,
    size         INTEGER NOT NULL,
    blob_id      TEXT NOT NULL REFERENCES blobs(sha),
    prefix       BLOB NOT NULL,
    PRIMARY KEY (mailbox_id, uid)
) WITHOUT ROWID;

-- Change log (DESIGN.md principle 5, RFC 7162). kind is 'added', 'flags', 'expunged'.
-- Per uid the log keeps its 'added' row, its latest 'flags' row, or (once expunged)
-- only its 'expunged' row.
CREATE TABLE changes (
    mailbox_id INTEGER NOT NULL REFERENCES mailboxes(id),
    modseq     INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    kind       TEXT NOT NULL,
    flags      TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (mailbox_id, modseq, uid)
) WITHOUT ROWID;
CREATE INDEX changes_uid ON changes(mailbox_id, uid);

-- POP3 maildrop lock (RFC 1939 §8), shared by every process using the database.
CREATE TABLE maildrop_locks (
    account_id INTEGER PRIMARY KEY REFERENCES accounts(id),
    owner      TEXT NOT NULL,
    expires    REAL NOT NULL
);

-- ---------------------------------------------------------------- outbound queue
-- One row per accepted message with remote recipients; holds one blobs reference.
CREATE TABLE queue_messages (
    id        INTEGER PRIMARY KEY,
    blob_id   TEXT NOT NULL REFERENCES blobs(sha),
    sender    TEXT NOT NULL,
    envid     TEXT,
    ret       TEXT,
    smtputf8  INTEGER NOT NULL DEFAULT 0,
    body_8bit INTEGER NOT NULL DEFAULT 0,
    prefix    BLOB NOT NULL,
    size      INTEGER NOT NULL,
    created   REAL NOT NULL
);

-- state: 'pending', 'delivered', 'failed' (bounced), 'expired'...; notify is a
-- comma-separated RFC 3461 NOTIFY list ("" when not given).
CREATE TABLE queue_recipients (
    id           INTEGER PRIMARY KEY,
    queue_id     INTEGER NOT NULL REFERENCES queue_messages(id),
    address      TEXT NOT NULL,
    domain       TEXT NOT NULL,
    orcpt        TEXT,
    notify       TEXT NOT NULL DEFAULT '',
    state        TEXT NOT NULL DEFAULT 'pending',
    attempts     INTEGER NOT NULL DEFAULT 0,
    next_attempt REAL NOT NULL,
    last_error   TEXT,
    delay_warned INTEGER NOT NULL DEFAULT 0,
    lease_owner  TEXT,
    lease_until  REAL,
    updated      REAL NOT NULL
);
CREATE INDEX queue_recipients_due ON queue_recipients(state, next_attempt);
CREATE INDEX queue_recipients_queue ON queue_recipients(queue_id);
