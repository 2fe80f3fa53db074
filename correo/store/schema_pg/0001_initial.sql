-- correo PostgreSQL-only schema, version 1.
-- The shared tables (directory, mailboxes, messages, change log, queue) are NOT here:
-- they come from ../schema/NNNN_*.sql, translated by correo.store.postgres_schema
-- (BIGSERIAL/BIGINT/DOUBLE PRECISION/BYTEA), so both backends keep one definition.
-- Never edit a released migration: add 0002_*.sql instead.

-- Bodies above the inline threshold when [storage] blobs = "database" (the default for
-- PostgreSQL): the body of blobs.sha in pieces of at most 256 KiB, seq from 0. Written
-- in the transaction that creates the blobs row; deleted with it.
CREATE TABLE blob_chunks (
    sha  TEXT NOT NULL REFERENCES blobs(sha) ON DELETE CASCADE,
    seq  INTEGER NOT NULL,
    data BYTEA NOT NULL,
    PRIMARY KEY (sha, seq)
);
ALTER TABLE blob_chunks ALTER COLUMN data SET STORAGE EXTERNAL;

-- Failed logins shared by every node (correo.auth.limits_pg): kind is 'ip' or 'user';
-- times holds the last [auth] max_failures failure times (epoch seconds, database
-- clock); locked_until is when a lockout ends (0 when none).
CREATE TABLE auth_failures (
    kind         TEXT NOT NULL,
    key          TEXT NOT NULL,
    times        DOUBLE PRECISION[] NOT NULL DEFAULT '{}',
    locked_until DOUBLE PRECISION NOT NULL DEFAULT 0,
    touched      DOUBLE PRECISION NOT NULL,
    PRIMARY KEY (kind, key)
);
CREATE INDEX auth_failures_touched ON auth_failures(touched);
