-- name: wal_position
-- The primary's WAL insert position, taken after a commit: the consistency token of a write.
SELECT pg_current_wal_insert_lsn()::text AS position

-- name: replica_position
-- How far this replica has replayed, and how long ago the last transaction it replayed committed
-- on the primary (its lag, while it is behind).
SELECT pg_last_wal_replay_lsn()::text AS position,
       extract(epoch FROM now() - pg_last_xact_replay_timestamp())::float8 AS lag_seconds
