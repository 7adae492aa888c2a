-- The triggers that keep daily_sales and customer_items (service.tables says why), as
-- rollups.postgresql.sql keeps them there, one purchase at a time (SQLite has no statement
-- triggers). A day is the first ten characters of the stored UTC timestamp. Everything goes to
-- shard 0: SQLite has one writer at a time, so there is no row lock to spread.

-- name: rollups_ddl_purchases_added
-- A purchase adds to its day and item, and to its customer and item.
CREATE TRIGGER purchases_added AFTER INSERT ON purchases BEGIN
    INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
    VALUES (substr(NEW.purchased_at, 1, 10), NEW.item, 0, 1, NEW.quantity, NEW.total_cents)
    ON CONFLICT (day, item, shard) DO UPDATE
    SET purchases = purchases + 1, quantity = quantity + excluded.quantity,
        revenue_cents = revenue_cents + excluded.revenue_cents;
    INSERT INTO customer_items (customer_id, item, purchases, quantity, spent_cents)
    VALUES (NEW.customer_id, NEW.item, 1, NEW.quantity, NEW.total_cents)
    ON CONFLICT (customer_id, item) DO UPDATE
    SET purchases = purchases + 1, quantity = quantity + excluded.quantity,
        spent_cents = spent_cents + excluded.spent_cents;
END

-- name: rollups_ddl_purchases_removed
-- A purchase deleted (a deleted customer's cascade included) is taken away from both.
CREATE TRIGGER purchases_removed AFTER DELETE ON purchases BEGIN
    INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
    VALUES (substr(OLD.purchased_at, 1, 10), OLD.item, 0, -1, -OLD.quantity, -OLD.total_cents)
    ON CONFLICT (day, item, shard) DO UPDATE
    SET purchases = purchases - 1, quantity = quantity + excluded.quantity,
        revenue_cents = revenue_cents + excluded.revenue_cents;
    UPDATE customer_items
    SET purchases = purchases - 1, quantity = quantity - OLD.quantity, spent_cents = spent_cents - OLD.total_cents
    WHERE customer_id = OLD.customer_id AND item = OLD.item;
END

-- name: rollups_ddl_purchases_changed
-- A purchase changed by hand moves from its old rollups to its new ones.
CREATE TRIGGER purchases_changed AFTER UPDATE ON purchases BEGIN
    INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
    VALUES (substr(OLD.purchased_at, 1, 10), OLD.item, 0, -1, -OLD.quantity, -OLD.total_cents)
    ON CONFLICT (day, item, shard) DO UPDATE
    SET purchases = purchases - 1, quantity = quantity + excluded.quantity,
        revenue_cents = revenue_cents + excluded.revenue_cents;
    UPDATE customer_items
    SET purchases = purchases - 1, quantity = quantity - OLD.quantity, spent_cents = spent_cents - OLD.total_cents
    WHERE customer_id = OLD.customer_id AND item = OLD.item;
    INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
    VALUES (substr(NEW.purchased_at, 1, 10), NEW.item, 0, 1, NEW.quantity, NEW.total_cents)
    ON CONFLICT (day, item, shard) DO UPDATE
    SET purchases = purchases + 1, quantity = quantity + excluded.quantity,
        revenue_cents = revenue_cents + excluded.revenue_cents;
    INSERT INTO customer_items (customer_id, item, purchases, quantity, spent_cents)
    VALUES (NEW.customer_id, NEW.item, 1, NEW.quantity, NEW.total_cents)
    ON CONFLICT (customer_id, item) DO UPDATE
    SET purchases = purchases + 1, quantity = quantity + excluded.quantity,
        spent_cents = spent_cents + excluded.spent_cents;
END

-- name: rollups_ddl_customers_forgotten
-- A customer about to be deleted takes their rollups with them (the cascade then updates none).
CREATE TRIGGER customers_forgotten BEFORE DELETE ON customers BEGIN
    DELETE FROM customer_items WHERE customer_id = OLD.id;
END
