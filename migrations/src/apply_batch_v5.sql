-- clerk_sync_apply_batch: one batch of events applied in one round trip
-- (PostgreSQL only). Called as a single statement outside any explicit
-- transaction, so the call is its own transaction: BEGIN, the steps below
-- and COMMIT cost the sync-service one message exchange. Each step is its own
-- statement and, the function being VOLATILE, sees a fresh snapshot (READ
-- COMMITTED), exactly as the same steps sent one by one would: the deleted
-- check and the email index's DELETE see every change committed before this
-- batch took its users' row locks.
--
-- The steps, and their lock order, are those of the sync-service's
-- `store::apply` module (which documents them):
-- 1. the ledger, in event id order; the event ids it returns are fresh;
-- 2. one winner per user: its first fresh candidate in the caller's
--    preference order (`p_candidates` is in that order);
-- 3. the winners, upserts and tombstones in one statement, in user id order,
--    guarded so that only a live row changes and only to a newer version;
-- 4. which refused upserts met a tombstone;
-- 5. the email index of every user written, from the winning event's
--    addresses only (version 4: earlier versions indexed the addresses of
--    every candidate for a written user, so an older profile in the same
--    batch left addresses the user no longer has);
-- 6. the change feed: the counter last (its row lock orders commits), then
--    one log entry per user written, in user id order.
--
-- Arguments: `p_ledger` holds `processed_events` rows; `p_candidates` holds
-- `users` rows, each with the `event_id` it comes from; `p_emails` holds
-- `user_email_addresses` rows of every candidate upsert, each with the
-- `event_id` it comes from (the caller keeps only verified addresses,
-- lower-cased); `p_now` is the commit's local Unix
-- milliseconds. Returns one row per fresh event id ('fresh'), per user
-- upserted ('upserted') or tombstoned ('tombstoned'), and per refused upsert
-- whose user is deleted ('deleted').
CREATE OR REPLACE FUNCTION clerk_sync_apply_batch(
    p_ledger json,
    p_candidates json,
    p_emails json,
    p_now bigint
) RETURNS TABLE (outcome text, key text)
LANGUAGE plpgsql VOLATILE
-- Two statements look rows up in tables that grow: which refused upserts met
-- a tombstone, and the email index's DELETE. They run as EXECUTE, planned at
-- every call for the tables as they are: a plan cached while a table was
-- small (or never analyzed, as after a bulk load) scanned it whole on every
-- later batch (the email index's DELETE read 33 million rows in a 40-second
-- storm). The others read only the call's arguments and reach tables through
-- ON CONFLICT's unique index or `feed_head`'s one row, whatever the plan, so
-- their plans are cached for the session (version 5: versions 3 and 4 planned
-- every statement at every call, `plan_cache_mode = force_custom_plan`, a
-- fifth of the server's CPU per event).
AS $fn$
DECLARE
    v_fresh text[];
    v_upserted text[];
    v_tombstoned text[];
    v_refused text[];
    v_written text[];
    v_upserted_events text[];
    v_head bigint;
BEGIN
    WITH recorded AS (
        INSERT INTO processed_events
        SELECT * FROM json_populate_recordset(NULL::processed_events, p_ledger) AS l
        ORDER BY l.event_id COLLATE "C"
        ON CONFLICT (event_id) DO NOTHING
        RETURNING processed_events.event_id
    )
    SELECT coalesce(array_agg(recorded.event_id), '{}') INTO v_fresh FROM recorded;

    WITH winners AS (
        SELECT DISTINCT ON (u.id) (c.doc ->> 'event_id') AS event_id, u AS candidate
        FROM json_array_elements(p_candidates) WITH ORDINALITY AS c(doc, ord)
        CROSS JOIN LATERAL json_populate_record(NULL::users, c.doc) AS u
        WHERE (c.doc ->> 'event_id') = ANY (v_fresh)
        ORDER BY u.id, c.ord
    ),
    written AS (
        INSERT INTO users AS stored
        SELECT (winners.candidate).* FROM winners
        ORDER BY (winners.candidate).id COLLATE "C"
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
            -- A tombstone keeps the version the user had.
            updated_at = CASE WHEN excluded.deleted_at IS NULL
                THEN excluded.updated_at ELSE stored.updated_at END
        -- Deletes are final; an upsert needs a newer version, or the same
        -- version written by an older mapping.
        WHERE stored.deleted_at IS NULL
            AND (excluded.deleted_at IS NOT NULL
                OR stored.updated_at < excluded.updated_at
                OR (stored.updated_at = excluded.updated_at
                    AND stored.profile_format < excluded.profile_format))
        RETURNING stored.id, stored.deleted_at
    )
    SELECT
        coalesce((SELECT array_agg(w.id) FROM written w WHERE w.deleted_at IS NULL), '{}'),
        coalesce((SELECT array_agg(w.id) FROM written w WHERE w.deleted_at IS NOT NULL), '{}'),
        coalesce((SELECT array_agg((v.candidate).id) FROM winners v
            WHERE (v.candidate).deleted_at IS NULL
                AND NOT EXISTS (SELECT 1 FROM written w WHERE w.id = (v.candidate).id)), '{}'),
        coalesce((SELECT array_agg(v.event_id) FROM winners v
            JOIN written w ON w.id = (v.candidate).id AND w.deleted_at IS NULL), '{}')
    INTO v_upserted, v_tombstoned, v_refused, v_upserted_events;

    IF cardinality(v_refused) > 0 THEN
        RETURN QUERY EXECUTE
            'SELECT ''deleted''::text, u.id::text FROM users u
            WHERE u.id = ANY ($1) AND u.deleted_at IS NOT NULL'
            USING v_refused;
    END IF;

    v_written := v_upserted || v_tombstoned;
    IF cardinality(v_written) > 0 THEN
        EXECUTE 'DELETE FROM user_email_addresses e WHERE e.user_id = ANY ($1)'
            USING v_written;
        INSERT INTO user_email_addresses
        SELECT n.* FROM json_array_elements(p_emails) AS j(doc)
        CROSS JOIN LATERAL json_populate_record(NULL::user_email_addresses, j.doc) AS n
        WHERE (j.doc ->> 'event_id') = ANY (v_upserted_events)
        ORDER BY n.user_id COLLATE "C", n.email_lower COLLATE "C"
        ON CONFLICT DO NOTHING;

        UPDATE feed_head SET "position" = feed_head."position" + cardinality(v_written)
        WHERE feed_head.id = 1
        RETURNING feed_head."position" INTO STRICT v_head;
        INSERT INTO user_changes (user_id, "position", deleted, changed_at)
        SELECT w.user_id, v_head - cardinality(v_written) + w.ord,
               w.user_id = ANY (v_tombstoned), p_now
        FROM unnest(ARRAY(SELECT x FROM unnest(v_written) AS x ORDER BY x COLLATE "C"))
            WITH ORDINALITY AS w(user_id, ord)
        ON CONFLICT (user_id) DO UPDATE SET
            "position" = excluded."position",
            deleted = excluded.deleted,
            changed_at = excluded.changed_at;
    END IF;

    RETURN QUERY
        SELECT 'fresh'::text, f FROM unnest(v_fresh) AS f
        UNION ALL SELECT 'upserted'::text, u FROM unnest(v_upserted) AS u
        UNION ALL SELECT 'tombstoned'::text, t FROM unnest(v_tombstoned) AS t;
END
$fn$;
