-- name: sales_by_customer
-- Purchases, quantity and revenue per customer (keyed by email) in [since, until), highest revenue first.
-- plan: per call
-- limit: report
SELECT c.email AS key, count(*) AS purchases, sum(p.quantity) AS quantity,
       sum(p.total_cents) AS revenue_cents
FROM purchases p
JOIN customers c ON c.id = p.customer_id
WHERE p.purchased_at >= :since AND p.purchased_at < :until
GROUP BY c.id, c.email
ORDER BY revenue_cents DESC, key
LIMIT :limit
