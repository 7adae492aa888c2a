-- A batch is four statements sent in one hop to the connection's thread, each answering with one
-- row at most: every row fetched is a trip back for the GIL, which the event loop may be holding
-- (validating the next batch) for up to 5 ms, so 1,000 RETURNING rows made the write several
-- times slower under load than alone. Rows go in as JSON arrays of arrays (json_extract by index
-- reads a short array, not an object with its keys).

-- name: count_known_customers
-- How many of a batch's customers, given as [[email, name], ...] with no email twice, exist already.
SELECT count(*) AS known
FROM customers
WHERE email IN (SELECT json_extract(value, '$[0]') FROM json_each(:customers))

-- name: upsert_customers
-- Insert or update every customer of a batch, given as [[email, name], ...] with no email twice.
-- (WHERE true: SQLite needs it to read ON CONFLICT after INSERT ... SELECT.)
INSERT INTO customers (email, name, created_at, updated_at)
SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]'), :now, :now
FROM json_each(:customers)
WHERE true
ON CONFLICT (email) DO UPDATE
SET name = excluded.name,
    updated_at = MAX(customers.updated_at, excluded.updated_at),
    revision = customers.revision + 1

-- name: insert_purchases
-- Append every purchase of a batch, given as [[email, item, quantity, unit_price_cents,
-- purchased_at or null], ...] in batch order, each naming its customer by email (upserted just
-- before, in the same transaction). CROSS JOIN keeps the array as the outer loop: each row finds
-- its customer through the email index.
INSERT INTO purchases
    (customer_id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by, created_at)
SELECT c.id, json_extract(p.value, '$[1]'), json_extract(p.value, '$[2]'),
       json_extract(p.value, '$[3]'), json_extract(p.value, '$[2]') * json_extract(p.value, '$[3]'),
       COALESCE(json_extract(p.value, '$[4]'), :now), :captured_by, :now
FROM json_each(:purchases) AS p
CROSS JOIN customers AS c ON c.email = json_extract(p.value, '$[0]')
ORDER BY p.key

-- name: batch_inserted
-- Right after insert_purchases, on its connection: how many rows it inserted and the last one's id.
-- The write lock is held and a new row's id is the table's largest plus one (SQLite's rule below
-- the largest 64-bit id), so the batch's ids are the `inserted` ids up to `last_id`, in batch order.
SELECT changes() AS inserted, last_insert_rowid() AS last_id

-- name: upsert_customer
-- Insert the customer by email, or update its name; revision 1 means this call inserted it.
-- updated_at never moves backwards, whichever of two racing writers commits last. The caller is
-- known already (:captured_by, with :key_hash null), or is an API key checked here by its hash
-- and for :scope, inside the write's transaction (as PostgreSQL's record_purchase does): no live
-- key with that scope, no row.
INSERT INTO customers (email, name, created_at, updated_at)
SELECT :email, :name, :now, :now
WHERE :key_hash IS NULL
   OR EXISTS (SELECT 1 FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL
              AND ' ' || scopes || ' ' LIKE '% ' || :scope || ' %')
ON CONFLICT (email) DO UPDATE
SET name = excluded.name,
    updated_at = CASE WHEN excluded.updated_at > customers.updated_at
                      THEN excluded.updated_at ELSE customers.updated_at END,
    revision = customers.revision + 1
RETURNING id, email, name, created_at, updated_at, revision

-- name: insert_purchase
-- Append one purchase for the customer with this email, upserted just before in the same
-- transaction, captured by the known caller or the live API key with :key_hash and :scope (none:
-- no row).
INSERT INTO purchases
    (customer_id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by, created_at)
SELECT c.id, :item, :quantity, :unit_price_cents, :total_cents, :purchased_at, caller.captured_by, :now
FROM customers AS c,
     (SELECT :captured_by AS captured_by WHERE :key_hash IS NULL
      UNION ALL
      SELECT 'api_key:' || name FROM api_keys WHERE key_hash = :key_hash AND revoked_at IS NULL
        AND ' ' || scopes || ' ' LIKE '% ' || :scope || ' %') AS caller
WHERE c.email = :email
RETURNING id, purchased_at, captured_by
