-- name: claim_idempotency_key
-- Claim (caller, key) for this request. A row comes back only if this call now owns the key:
-- it was unused, or its claim had expired. A concurrent claimant waits for the owner's commit.
INSERT INTO idempotency_keys (caller, key, request_hash, created_at)
VALUES (:caller, :key, :request_hash, :now)
ON CONFLICT (caller, key) DO UPDATE
SET request_hash = excluded.request_hash,
    created_at = excluded.created_at,
    status_code = NULL,
    response_body = NULL,
    location = NULL
WHERE idempotency_keys.created_at < :expired_before
RETURNING key

-- name: find_idempotency_key
-- The stored claim and first response for (caller, key).
SELECT request_hash, status_code, response_body, location
FROM idempotency_keys
WHERE caller = :caller AND key = :key

-- name: save_idempotent_response
-- Keep the first response, to replay it to retries.
UPDATE idempotency_keys
SET status_code = :status_code, response_body = :response_body, location = :location
WHERE caller = :caller AND key = :key

-- name: purge_idempotency_keys
-- Forget keys older than their lifetime.
DELETE FROM idempotency_keys
WHERE created_at < :expired_before
