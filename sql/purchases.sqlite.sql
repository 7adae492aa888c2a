-- name: upsert_customers
-- Insert or update every customer of a batch, given as a JSON array of {email, name} with no
-- email twice; one row back per customer, revision 1 for those inserted.
-- (WHERE true: SQLite needs it to read ON CONFLICT after INSERT ... SELECT.)
INSERT INTO customers (email, name, created_at, updated_at)
SELECT json_extract(value, '$.email'), json_extract(value, '$.name'), :now, :now
FROM json_each(:customers)
WHERE true
ON CONFLICT (email) DO UPDATE
SET name = excluded.name,
    updated_at = MAX(customers.updated_at, excluded.updated_at),
    revision = customers.revision + 1
RETURNING id, email, revision

-- name: insert_purchases
-- Append every purchase of a batch, given as a JSON array in batch order; ids rise in that order.
INSERT INTO purchases
    (customer_id, item, quantity, unit_price_cents, total_cents, purchased_at, captured_by, created_at)
SELECT json_extract(value, '$.customer_id'), json_extract(value, '$.item'),
       json_extract(value, '$.quantity'), json_extract(value, '$.unit_price_cents'),
       json_extract(value, '$.total_cents'), json_extract(value, '$.purchased_at'),
       :captured_by, :now
FROM json_each(:purchases)
ORDER BY key
RETURNING id
