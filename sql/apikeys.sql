-- name: create_api_key
-- Store a new key by its SHA-256 hash; the key itself is shown once and never stored.
INSERT INTO api_keys (name, key_hash, key_prefix, scopes, created_at)
VALUES (:name, :key_hash, :key_prefix, :scopes, :created_at)
RETURNING id, name, key_prefix, scopes, created_at

-- name: find_live_api_key
-- The live key with this hash, if any, and what it may do: one lookup on the unique hash index.
SELECT id, name, scopes
FROM api_keys
WHERE key_hash = :key_hash AND revoked_at IS NULL

-- name: list_api_keys
-- Every key, live and revoked, oldest first (never the hash).
SELECT id, name, key_prefix, scopes, created_at, revoked_at
FROM api_keys
ORDER BY created_at, id

-- name: revoke_api_key
-- Revoke the live key with this name; it stops working on the next request.
UPDATE api_keys
SET revoked_at = :revoked_at
WHERE name = :name AND revoked_at IS NULL
