-- name: sales_by_item
-- Purchases, quantity and revenue per item in [since, until), highest revenue first.
-- Whole UTC days in [days_from, days_until) are read from daily_sales (a row per day and item,
-- or a few while the day is young); the partial days at either end, [since, days_from) and
-- [days_until, until), from the purchases themselves, so the answer is what the purchases say to
-- the cent. (service.reports picks the days; with none whole, days_from = days_until = until.)
-- limit: report
SELECT key, sum(purchases) AS purchases, sum(quantity) AS quantity, sum(revenue_cents) AS revenue_cents
FROM (
    SELECT item AS key, purchases, quantity, revenue_cents
    FROM daily_sales
    WHERE day >= substr(:days_from, 1, 10)
      AND day < substr(:days_until, 1, 10)
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
-- (Stored timestamps are UTC text, so the day is their first ten characters.)
-- Whole UTC days in [days_from, days_until) are read from daily_sales (a row per day and item,
-- or a few while the day is young); the partial days at either end, [since, days_from) and
-- [days_until, until), from the purchases themselves, so the answer is what the purchases say to
-- the cent. (service.reports picks the days; with none whole, days_from = days_until = until.)
-- limit: report
SELECT key, sum(purchases) AS purchases, sum(quantity) AS quantity, sum(revenue_cents) AS revenue_cents
FROM (
    SELECT day AS key, purchases, quantity, revenue_cents
    FROM daily_sales
    WHERE day >= substr(:days_from, 1, 10)
      AND day < substr(:days_until, 1, 10)
    UNION ALL
    SELECT substr(purchased_at, 1, 10), 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :since AND purchased_at < :days_from
    UNION ALL
    SELECT substr(purchased_at, 1, 10), 1, quantity, total_cents
    FROM purchases
    WHERE purchased_at >= :days_until AND purchased_at < :until
) AS sold
GROUP BY key
HAVING sum(purchases) <> 0
ORDER BY key
LIMIT :limit
