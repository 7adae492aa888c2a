-- name: server_limits
-- The statement and lock timeouts this session runs with, in milliseconds (0: none): behind a
-- transaction-mode pooler they come from the role's or database's settings, not from us.
SELECT name, setting::int AS ms
FROM pg_settings
WHERE name IN ('statement_timeout', 'lock_timeout')
