-- name: get_customer
-- One customer by id.
SELECT id, email, name, created_at, updated_at
FROM customers
WHERE id = :id

-- name: find_customer_by_email
-- The customer with this (already normalised) email, if any: one lookup on the unique index.
SELECT id, email, name, created_at, updated_at
FROM customers
WHERE email = :email

-- name: list_customers
-- A page of customers, newest first, after the cursor (index ix_customers_created).
SELECT id, email, name, created_at, updated_at
FROM customers
WHERE (created_at, id) < (:before_at, :before_id)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: customer_summary
-- One customer's totals and top five items by money spent, in one statement: a row per top item
-- (the totals repeated on each), one row with NULL item when there are no purchases, none when
-- there is no such customer.
WITH mine AS (
    SELECT item, quantity, total_cents, purchased_at
    FROM purchases
    WHERE customer_id = :customer_id
), totals AS (
    SELECT count(*) AS purchase_count,
           coalesce(sum(quantity), 0) AS total_quantity,
           coalesce(sum(total_cents), 0) AS total_spent_cents,
           min(purchased_at) AS first_purchase_at,
           max(purchased_at) AS last_purchase_at
    FROM mine
), top_items AS (
    SELECT item, sum(quantity) AS quantity, sum(total_cents) AS spent_cents
    FROM mine
    GROUP BY item
    ORDER BY spent_cents DESC, item
    LIMIT 5
)
SELECT c.id AS customer_id, totals.purchase_count, totals.total_quantity, totals.total_spent_cents,
       totals.first_purchase_at, totals.last_purchase_at,
       top_items.item, top_items.quantity, top_items.spent_cents
FROM customers c
CROSS JOIN totals
LEFT JOIN top_items ON 1 = 1
WHERE c.id = :customer_id
ORDER BY top_items.spent_cents DESC, top_items.item
