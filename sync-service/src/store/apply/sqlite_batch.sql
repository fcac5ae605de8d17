-- One batch of events applied in one call (SQLite): the steps of the
-- `store::apply` module, the same as PostgreSQL's `clerk_sync_apply_batch`,
-- sent as one script so that the batch costs one hand-off to the
-- connection's thread, BEGIN to COMMIT. The text never changes with the
-- batch (the batch travels as JSON documents), so its statements are
-- prepared once per connection and kept.
--
-- SQLite has one writer and BEGIN IMMEDIATE takes the write lock first, so
-- what the steps read cannot change under them: each winner's fate (written,
-- stale, refused by a tombstone) is decided from the stored row, then the
-- rows decided are written. PostgreSQL instead decides inside the guarded
-- upsert, on the row it has locked.
--
-- Arguments, as the function's: ?1 `processed_events` rows (the candidates,
-- in preference order); ?2 `users` rows, each with the `event_id` it comes
-- from, in preference order; ?3 the `user_email_addresses` rows of every
-- candidate upsert, each with its `event_id`; ?4 the commit's local Unix
-- milliseconds. They are stored in `clerk_sync_input` by the first
-- statement that needs them and read from there: sqlx binds a script's
-- numbered parameters correctly only in a statement that names each of
-- them up to the highest. Returns, after COMMIT, one row per fresh event id
-- ('fresh'), per user upserted ('upserted') or tombstoned ('tombstoned'),
-- and per refused upsert whose user is deleted ('deleted').
BEGIN IMMEDIATE;

-- The batch's working tables: this connection's own, emptied each time.
CREATE TEMP TABLE IF NOT EXISTS clerk_sync_input (
    ledger TEXT NOT NULL,
    candidates TEXT NOT NULL,
    emails TEXT NOT NULL,
    now INTEGER NOT NULL
);
CREATE TEMP TABLE IF NOT EXISTS clerk_sync_fresh (event_id TEXT PRIMARY KEY) WITHOUT ROWID;
CREATE TEMP TABLE IF NOT EXISTS clerk_sync_winners (
    -- The winning candidate's index in ?2.
    ord INTEGER PRIMARY KEY,
    id TEXT NOT NULL UNIQUE,
    event_id TEXT NOT NULL UNIQUE,
    -- 'upserted', 'tombstoned', 'deleted' (an upsert refused by a
    -- tombstone), or NULL (stale, or a delete of a deleted user).
    outcome TEXT
);
DELETE FROM temp.clerk_sync_input;
DELETE FROM temp.clerk_sync_fresh;
DELETE FROM temp.clerk_sync_winners;
INSERT INTO temp.clerk_sync_input (ledger, candidates, emails, now) VALUES (?1, ?2, ?3, ?4);

-- 1. The ledger: the event ids it does not hold yet are fresh.
INSERT INTO temp.clerk_sync_fresh (event_id)
SELECT l.value ->> 'event_id'
FROM temp.clerk_sync_input AS i CROSS JOIN json_each(i.ledger) AS l
WHERE NOT EXISTS (
    SELECT 1 FROM processed_events AS p WHERE p.event_id = l.value ->> 'event_id'
);
INSERT INTO processed_events (event_id, user_id, kind, processed_at)
SELECT l.value ->> 'event_id', l.value ->> 'user_id', l.value ->> 'kind',
    l.value ->> 'processed_at'
FROM temp.clerk_sync_input AS i CROSS JOIN json_each(i.ledger) AS l
WHERE l.value ->> 'event_id' IN (SELECT event_id FROM temp.clerk_sync_fresh);

-- 2. One winner per user, its first fresh candidate, and 3. what becomes of
-- it: deletes are final, a tombstone applies to a live row, an upsert needs
-- a newer version or the same version written by an older mapping.
INSERT INTO temp.clerk_sync_winners (ord, id, event_id, outcome)
SELECT c.ord, c.id, c.event_id,
    CASE
        WHEN stored.id IS NULL THEN
            CASE WHEN c.deleted_at IS NULL THEN 'upserted' ELSE 'tombstoned' END
        WHEN stored.deleted_at IS NOT NULL THEN
            CASE WHEN c.deleted_at IS NULL THEN 'deleted' END
        WHEN c.deleted_at IS NOT NULL THEN 'tombstoned'
        WHEN stored.updated_at < c.updated_at
            OR (stored.updated_at = c.updated_at
                AND stored.profile_format < c.profile_format) THEN 'upserted'
    END
FROM (
    SELECT j.key AS ord, j.value ->> 'id' AS id, j.value ->> 'event_id' AS event_id,
        j.value ->> 'deleted_at' AS deleted_at, j.value ->> 'updated_at' AS updated_at,
        j.value ->> 'profile_format' AS profile_format,
        row_number() OVER (PARTITION BY j.value ->> 'id' ORDER BY j.key) AS preference
    FROM temp.clerk_sync_input AS i CROSS JOIN json_each(i.candidates) AS j
    WHERE j.value ->> 'event_id' IN (SELECT event_id FROM temp.clerk_sync_fresh)
) AS c
LEFT JOIN users AS stored ON stored.id = c.id
WHERE c.preference = 1;

-- The rows decided, written. A tombstone keeps the version the user had.
INSERT INTO users AS stored (
    id, primary_email_address, email_addresses, primary_phone_number,
    phone_numbers, first_name, last_name, display_name, username, image_url,
    has_image, external_id, public_metadata, private_metadata, created_at,
    updated_at, last_sign_in_at, last_active_at, legal_accepted_at, banned,
    locked, locked_until, two_factor_enabled, totp_enabled,
    backup_code_enabled, external_accounts, profile_format, deleted_at
)
SELECT r.value ->> 'id', r.value ->> 'primary_email_address',
    r.value ->> 'email_addresses', r.value ->> 'primary_phone_number',
    r.value ->> 'phone_numbers', r.value ->> 'first_name',
    r.value ->> 'last_name', r.value ->> 'display_name', r.value ->> 'username',
    r.value ->> 'image_url', r.value ->> 'has_image', r.value ->> 'external_id',
    r.value ->> 'public_metadata', r.value ->> 'private_metadata',
    r.value ->> 'created_at', r.value ->> 'updated_at',
    r.value ->> 'last_sign_in_at', r.value ->> 'last_active_at',
    r.value ->> 'legal_accepted_at', r.value ->> 'banned', r.value ->> 'locked',
    r.value ->> 'locked_until', r.value ->> 'two_factor_enabled',
    r.value ->> 'totp_enabled', r.value ->> 'backup_code_enabled',
    r.value ->> 'external_accounts', r.value ->> 'profile_format',
    r.value ->> 'deleted_at'
FROM temp.clerk_sync_input AS i CROSS JOIN json_each(i.candidates) AS r
CROSS JOIN temp.clerk_sync_winners AS w ON w.ord = r.key
WHERE w.outcome IN ('upserted', 'tombstoned')
ON CONFLICT (id) DO UPDATE SET
    primary_email_address = excluded.primary_email_address,
    email_addresses = excluded.email_addresses,
    primary_phone_number = excluded.primary_phone_number,
    phone_numbers = excluded.phone_numbers,
    first_name = excluded.first_name,
    last_name = excluded.last_name,
    display_name = excluded.display_name,
    username = excluded.username,
    image_url = excluded.image_url,
    has_image = excluded.has_image,
    external_id = excluded.external_id,
    public_metadata = excluded.public_metadata,
    private_metadata = excluded.private_metadata,
    created_at = excluded.created_at,
    last_sign_in_at = excluded.last_sign_in_at,
    last_active_at = excluded.last_active_at,
    legal_accepted_at = excluded.legal_accepted_at,
    banned = excluded.banned,
    locked = excluded.locked,
    locked_until = excluded.locked_until,
    two_factor_enabled = excluded.two_factor_enabled,
    totp_enabled = excluded.totp_enabled,
    backup_code_enabled = excluded.backup_code_enabled,
    external_accounts = excluded.external_accounts,
    profile_format = excluded.profile_format,
    deleted_at = excluded.deleted_at,
    updated_at = CASE WHEN excluded.deleted_at IS NULL
        THEN excluded.updated_at ELSE stored.updated_at END;

-- 5. The email index of every user written, from the winning upsert's
-- addresses only.
DELETE FROM user_email_addresses
WHERE user_id IN (
    SELECT id FROM temp.clerk_sync_winners WHERE outcome IN ('upserted', 'tombstoned')
);
INSERT INTO user_email_addresses (email_lower, user_id)
SELECT e.value ->> 'email_lower', e.value ->> 'user_id'
FROM temp.clerk_sync_input AS i CROSS JOIN json_each(i.emails) AS e
CROSS JOIN temp.clerk_sync_winners AS w ON w.event_id = e.value ->> 'event_id'
WHERE w.outcome = 'upserted'
ON CONFLICT DO NOTHING;

-- 6. The change feed: the counter, then one entry per user written, in user
-- id order, numbered back from the counter.
UPDATE feed_head SET "position" = "position" + (
    SELECT count(*) FROM temp.clerk_sync_winners WHERE outcome IN ('upserted', 'tombstoned')
)
WHERE id = 1 AND EXISTS (
    SELECT 1 FROM temp.clerk_sync_winners WHERE outcome IN ('upserted', 'tombstoned')
);
INSERT INTO user_changes (user_id, "position", deleted, changed_at)
SELECT w.id,
    (SELECT "position" FROM feed_head WHERE id = 1)
        - (SELECT count(*) FROM temp.clerk_sync_winners
            WHERE outcome IN ('upserted', 'tombstoned'))
        + row_number() OVER (ORDER BY w.id),
    w.outcome = 'tombstoned', i.now
FROM temp.clerk_sync_input AS i CROSS JOIN temp.clerk_sync_winners AS w
WHERE w.outcome IN ('upserted', 'tombstoned')
ON CONFLICT (user_id) DO UPDATE SET
    "position" = excluded."position",
    deleted = excluded.deleted,
    changed_at = excluded.changed_at;

COMMIT;

SELECT 'fresh' AS outcome, event_id AS key FROM temp.clerk_sync_fresh
UNION ALL
SELECT outcome, id FROM temp.clerk_sync_winners WHERE outcome IS NOT NULL;
