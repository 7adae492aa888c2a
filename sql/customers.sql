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
-- there is no such customer. Totals and items come from the customer's rollups (customer_items,
-- a row per item bought), the first and last purchase from the two ends of ix_purchases_customer_sales:
-- the cost is the customer's distinct items, not their purchases.
WITH totals AS (
    SELECT coalesce(sum(purchases), 0) AS purchase_count,
           coalesce(sum(quantity), 0) AS total_quantity,
           coalesce(sum(spent_cents), 0) AS total_spent_cents
    FROM customer_items
    WHERE customer_id = :customer_id
), ends AS (
    SELECT min(purchased_at) AS first_purchase_at, max(purchased_at) AS last_purchase_at
    FROM purchases
    WHERE customer_id = :customer_id
), top_items AS (
    SELECT item, quantity, spent_cents
    FROM customer_items
    WHERE customer_id = :customer_id AND purchases > 0
    ORDER BY spent_cents DESC, item
    LIMIT 5
)
SELECT c.id AS customer_id, totals.purchase_count, totals.total_quantity, totals.total_spent_cents,
       ends.first_purchase_at, ends.last_purchase_at,
       top_items.item, top_items.quantity, top_items.spent_cents
FROM customers c
CROSS JOIN totals
CROSS JOIN ends
LEFT JOIN top_items ON 1 = 1
WHERE c.id = :customer_id
ORDER BY top_items.spent_cents DESC, top_items.item
