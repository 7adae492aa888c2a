-- name: record_purchase
-- Check the caller, upsert the customer and append the purchase in one statement (one round
-- trip, atomic). The caller is known already (:captured_by, with :key_hash null), or is an API key
-- checked here by its hash: when no live key has it, there is no row and nothing is written.
-- customer_created is exact: only the statement that inserted the row sees revision 1.
WITH caller AS (
    SELECT CAST(:captured_by AS text) AS captured_by
    WHERE CAST(:key_hash AS text) IS NULL
    UNION ALL
    SELECT 'api_key:' || name
    FROM api_keys
    WHERE key_hash = :key_hash AND revoked_at IS NULL
), customer AS (
    INSERT INTO customers (email, name, created_at, updated_at)
    SELECT :email, :name, :now, :now
    FROM caller
    ON CONFLICT (email) DO UPDATE
    SET name = excluded.name,
        updated_at = GREATEST(customers.updated_at, excluded.updated_at),
        revision = customers.revision + 1
    RETURNING id, email, name, created_at, updated_at, revision
), purchase AS (
    INSERT INTO purchases
        (customer_id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by, created_at)
    SELECT customer.id, :item, :quantity, :unit_price_cents, :total_cents, :purchased_at,
           caller.captured_by, :now
    FROM customer, caller
    RETURNING id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by
)
SELECT purchase.*,
       customer.id AS customer_id, customer.email AS customer_email, customer.name AS customer_name,
       customer.created_at AS customer_created_at, customer.updated_at AS customer_updated_at,
       customer.revision
FROM customer, purchase

-- name: upsert_customers
-- Insert or update every customer of a batch, given as a JSON array of {email, name} with no
-- email twice; one row back per customer, revision 1 for those inserted. Rows are locked in
-- email order, so two batches sharing customers wait for each other instead of deadlocking.
INSERT INTO customers (email, name, created_at, updated_at)
SELECT r.email, r.name, :now::timestamptz, :now::timestamptz
FROM json_to_recordset(:customers::json) AS r(email text, name text)
ORDER BY r.email
ON CONFLICT (email) DO UPDATE
SET name = excluded.name,
    updated_at = GREATEST(customers.updated_at, excluded.updated_at),
    revision = customers.revision + 1
RETURNING id, email, revision

-- name: insert_purchases
-- Append every purchase of a batch, given as a JSON array in batch order (n); ids rise in that order.
INSERT INTO purchases
    (customer_id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by, created_at)
SELECT r.customer_id, r.item, r.quantity, r.unit_price_cents, r.total_cents, r.purchased_at,
       :captured_by, :now::timestamptz
FROM json_to_recordset(:purchases::json) AS r(
    n int, customer_id bigint, item text, quantity int, unit_price_cents bigint, total_cents bigint,
    purchased_at timestamptz)
ORDER BY r.n
RETURNING id
