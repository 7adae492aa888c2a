-- name: sales_by_item
-- Purchases, quantity and revenue per item in [since, until), highest revenue first.
-- Whole UTC days in [days_from, days_until) are read from daily_sales (a row per day and item,
-- or a few while the day is young); the partial days at either end, [since, days_from) and
-- [days_until, until), from the purchases themselves, so the answer is what the purchases say to
-- the cent. (service.reports picks the days; with none whole, days_from = days_until = until.)
-- plan: per call
-- limit: report
SELECT key, sum(purchases) AS purchases, sum(quantity) AS quantity, sum(revenue_cents) AS revenue_cents
FROM (
    SELECT item AS key, purchases, quantity, revenue_cents
    FROM daily_sales
    WHERE day >= (CAST(:days_from AS timestamptz) AT TIME ZONE 'UTC')::date
      AND day < (CAST(:days_until AS timestamptz) AT TIME ZONE 'UTC')::date
    UNION ALL
    SELECT item, 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :since AND purchased_at < :days_from
    UNION ALL
    SELECT item, 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :days_until AND purchased_at < :until
) AS sold
GROUP BY key
HAVING sum(purchases) <> 0
ORDER BY revenue_cents DESC, key
LIMIT :limit

-- name: sales_by_day
-- Purchases, quantity and revenue per UTC day in [since, until), oldest day first.
-- Whole UTC days in [days_from, days_until) are read from daily_sales (a row per day and item,
-- or a few while the day is young); the partial days at either end, [since, days_from) and
-- [days_until, until), from the purchases themselves, so the answer is what the purchases say to
-- the cent. (service.reports picks the days; with none whole, days_from = days_until = until.)
-- plan: per call
-- limit: report
SELECT key, sum(purchases) AS purchases, sum(quantity) AS quantity, sum(revenue_cents) AS revenue_cents
FROM (
    SELECT to_char(day, 'YYYY-MM-DD') AS key, purchases, quantity, revenue_cents
    FROM daily_sales
    WHERE day >= (CAST(:days_from AS timestamptz) AT TIME ZONE 'UTC')::date
      AND day < (CAST(:days_until AS timestamptz) AT TIME ZONE 'UTC')::date
    UNION ALL
    SELECT to_char(purchased_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :since AND purchased_at < :days_from
    UNION ALL
    SELECT to_char(purchased_at AT TIME ZONE 'UTC', 'YYYY-MM-DD'), 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :days_until AND purchased_at < :until
) AS sold
GROUP BY key
HAVING sum(purchases) <> 0
ORDER BY key
LIMIT :limit

-- name: fold_ended_days
-- Housekeeping: the shards of every day before :today (a UTC midnight) folded into the day's
-- shard 0, so that a report over ended days reads one row per day and item. One statement: a
-- purchase recorded meanwhile for such a day (a late one) waits for it, then lands in its shard.
WITH folded AS (
    DELETE FROM daily_sales
    WHERE day < (CAST(:today AS timestamptz) AT TIME ZONE 'UTC')::date AND shard <> 0
    RETURNING day, item, purchases, quantity, revenue_cents
)
INSERT INTO daily_sales AS s (day, item, shard, purchases, quantity, revenue_cents)
SELECT day, item, 0, sum(purchases), sum(quantity), sum(revenue_cents)
FROM folded
GROUP BY day, item
ORDER BY day, item
ON CONFLICT (day, item, shard) DO UPDATE
SET purchases = s.purchases + excluded.purchases, quantity = s.quantity + excluded.quantity,
    revenue_cents = s.revenue_cents + excluded.revenue_cents

-- name: sales_by_customer
-- Purchases, quantity and revenue per customer (keyed by email) in [since, until), highest revenue first.
-- Summed per customer first, in customer order from ix_purchases_customer_sales alone (an
-- index-only scan: about 0.5 s per million purchases in the range); only the customers that can
-- be on the page (the top :limit by revenue, and any tied with the last of them) are then looked
-- up for their email.
-- plan: per call
-- limit: report
SELECT c.email AS key, top.purchases, top.quantity, top.revenue_cents
FROM (
    SELECT customer_id, count(*) AS purchases, sum(quantity) AS quantity, sum(total_cents) AS revenue_cents
    FROM purchases
    WHERE purchased_at >= :since AND purchased_at < :until
    GROUP BY customer_id
    ORDER BY revenue_cents DESC
    FETCH FIRST :limit ROWS WITH TIES
) AS top
JOIN customers c ON c.id = top.customer_id
ORDER BY top.revenue_cents DESC, key
LIMIT :limit
