-- name: sales_by_day
-- Purchases, quantity and revenue per UTC day in [since, until), oldest day first.
-- plan: per call
-- limit: report
SELECT to_char(purchased_at AT TIME ZONE 'UTC', 'YYYY-MM-DD') AS key, count(*) AS purchases,
       sum(quantity) AS quantity, sum(total_cents) AS revenue_cents
FROM purchases
WHERE purchased_at >= :since AND purchased_at < :until
GROUP BY key
ORDER BY key
LIMIT :limit
