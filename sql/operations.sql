-- name: ping
-- The cheapest statement that proves the database answers (readiness).
SELECT 1 AS ok
