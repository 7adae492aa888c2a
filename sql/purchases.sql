-- name: get_purchase
-- One purchase with its customer as the customer is now.
SELECT p.id, p.item, p.quantity, p.unit_price_cents, p.total_cents, p.purchased_at, p.captured_by,
       c.id AS customer_id, c.email AS customer_email, c.name AS customer_name,
       c.created_at AS customer_created_at, c.updated_at AS customer_updated_at
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.id = :id

-- name: list_purchases
-- A page of purchases in [since, until), newest first, after the cursor (index ix_purchases_purchased).
SELECT p.id, p.item, p.quantity, p.unit_price_cents, p.total_cents, p.purchased_at, p.captured_by,
       c.id AS customer_id, c.email AS customer_email, c.name AS customer_name,
       c.created_at AS customer_created_at, c.updated_at AS customer_updated_at
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.purchased_at >= :since AND p.purchased_at < :until
  AND (p.purchased_at, p.id) < (:before_at, :before_id)
ORDER BY p.purchased_at DESC, p.id DESC
LIMIT :limit

-- name: list_purchases_of_customer
-- A page of one customer's purchases in [since, until), newest first (index ix_purchases_customer_sales).
SELECT p.id, p.item, p.quantity, p.unit_price_cents, p.total_cents, p.purchased_at, p.captured_by,
       c.id AS customer_id, c.email AS customer_email, c.name AS customer_name,
       c.created_at AS customer_created_at, c.updated_at AS customer_updated_at
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.customer_id = :customer_id
  AND p.purchased_at >= :since AND p.purchased_at < :until
  AND (p.purchased_at, p.id) < (:before_at, :before_id)
ORDER BY p.purchased_at DESC, p.id DESC
LIMIT :limit

-- name: list_purchases_of_item
-- A page of one item's purchases in [since, until), newest first (index ix_purchases_item).
SELECT p.id, p.item, p.quantity, p.unit_price_cents, p.total_cents, p.purchased_at, p.captured_by,
       c.id AS customer_id, c.email AS customer_email, c.name AS customer_name,
       c.created_at AS customer_created_at, c.updated_at AS customer_updated_at
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.item = :item
  AND p.purchased_at >= :since AND p.purchased_at < :until
  AND (p.purchased_at, p.id) < (:before_at, :before_id)
ORDER BY p.purchased_at DESC, p.id DESC
LIMIT :limit

-- name: list_purchases_of_customer_and_item
-- A page of one customer's purchases of one item, newest first (customer index, item filtered).
SELECT p.id, p.item, p.quantity, p.unit_price_cents, p.total_cents, p.purchased_at, p.captured_by,
       c.id AS customer_id, c.email AS customer_email, c.name AS customer_name,
       c.created_at AS customer_created_at, c.updated_at AS customer_updated_at
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.customer_id = :customer_id AND p.item = :item
  AND p.purchased_at >= :since AND p.purchased_at < :until
  AND (p.purchased_at, p.id) < (:before_at, :before_id)
ORDER BY p.purchased_at DESC, p.id DESC
LIMIT :limit
