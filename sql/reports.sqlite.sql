-- name: sales_by_day
-- Purchases, quantity and revenue per UTC day in [since, until), oldest day first.
-- (Stored timestamps are UTC text, so the day is their first ten characters.)
-- limit: report
SELECT substr(purchased_at, 1, 10) AS key, count(*) AS purchases,
       sum(quantity) AS quantity, sum(total_cents) AS revenue_cents
FROM purchases
WHERE purchased_at >= :since AND purchased_at < :until
GROUP BY key
ORDER BY key
LIMIT :limit
