-- Saved IMAP selected-mailbox views (correo.store.sqlite_views): packed UID and unseen-UID
-- arrays plus keywords, current as of `modseq`; SELECT folds in the change log since.
-- A cache of what `messages` holds: safe to empty at any time. Whoever prunes old
-- `changes` rows must delete the views older than what is pruned.
CREATE TABLE mailbox_views (
    mailbox_id  INTEGER PRIMARY KEY,
    uidvalidity INTEGER NOT NULL,
    modseq      INTEGER NOT NULL,
    uids        BLOB NOT NULL,
    unseen      BLOB NOT NULL,
    keywords    TEXT NOT NULL
);
