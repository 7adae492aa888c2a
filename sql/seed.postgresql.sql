-- Seeding (service.seed): each statement makes rows n = :from_n .. :to_n of one table in the
-- database itself, with ids given explicitly from :first_id (the tables are locked meanwhile).
-- Every choice is arithmetic on n (no random()): the same sizes make the same data on both
-- databases. A pair k out of :pairs is spread by k * :mix % :pairs, with :mix coprime to :pairs,
-- so that distinct n make distinct pairs. Moments are epoch seconds :start + n * :step.

-- name: seed_lock_tables
-- The seed is one transaction: writers of these tables wait for it, readers do not.
LOCK TABLE users, posts, likes, reposts, comments, follows, customers, purchases IN SHARE ROW EXCLUSIVE MODE

-- name: seed_triggers_off
-- Row by row, the triggers that keep the counts would update the same few counter rows millions
-- of times in one transaction (each update a new row version: 2M likes of 20 posts took 9
-- minutes). The seed fills the counts and rollups afterwards, set-based (service.counters). A
-- superuser skips the foreign-key checks too (every id is in range by construction); another
-- owner of the tables turns off the service's triggers for this transaction only.
DO $$
DECLARE kept text;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        SET LOCAL session_replication_role = replica;
    ELSE
        FOREACH kept IN ARRAY ARRAY['posts', 'likes', 'reposts', 'comments', 'follows', 'purchases'] LOOP
            EXECUTE format('ALTER TABLE %I DISABLE TRIGGER USER', kept);
        END LOOP;
    END IF;
END $$

-- name: seed_sort_in_memory
-- The fills afterwards group and sort millions of rows: in memory, not in batches on disk; and
-- the indexes built after their table is loaded sort it whole.
SET LOCAL work_mem = '256MB'; SET LOCAL maintenance_work_mem = '512MB'

-- name: seed_secondary_indexes
-- A table's indexes that enforce nothing (not unique, not its key), with the statement that
-- makes each again. Into an empty table the seed loads rows without them and builds them after:
-- 5M purchases went in in 54 s with their three, in 7 s without, and the three took 12 s to build.
SELECT CAST(CAST(i.indexrelid AS regclass) AS text) AS name, pg_get_indexdef(i.indexrelid) AS definition
FROM pg_index AS i
WHERE i.indrelid = CAST(CAST(:table_name AS text) AS regclass) AND NOT i.indisunique AND NOT i.indisprimary
ORDER BY 1

-- name: seed_triggers_on
-- Before the commit, so that no other transaction ever sees them off.
DO $$
DECLARE kept text;
BEGIN
    IF (SELECT rolsuper FROM pg_roles WHERE rolname = current_user) THEN
        SET LOCAL session_replication_role = DEFAULT;
    ELSE
        FOREACH kept IN ARRAY ARRAY['posts', 'likes', 'reposts', 'comments', 'follows', 'purchases'] LOOP
            EXECUTE format('ALTER TABLE %I ENABLE TRIGGER USER', kept);
        END LOOP;
    END IF;
END $$

-- name: seed_reserve_ids
-- Moves the table's sequence past the ids the seed is about to give, so that a writer waiting
-- for the lock gets an id after them.
SELECT setval(pg_get_serial_sequence(:table_name, 'id'), :last_id)

-- name: seed_users
-- Users s<run>_<n>, the first the one who follows most (see seed_follows).
INSERT INTO users (id, username, email, password_hash, created_at)
SELECT :first_id + n - 1, :prefix || n, :prefix || n || '@example.com', :password_hash,
       to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n

-- name: seed_posts
-- Posts oldest first, by authors spread over the seeded users.
INSERT INTO posts (id, author_id, content, created_at)
SELECT :first_id + n - 1, :first_user + n * :mix % :users, 'post ' || n || ' from the seed',
       to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n

-- name: seed_likes
-- The first :hot likes go to the :hot_posts newest posts (a user each, in turn); the rest are
-- distinct pairs of a user and one of the other posts.
INSERT INTO likes (user_id, post_id, created_at)
SELECT CASE WHEN n <= :hot THEN :first_user + (n - 1) % :users ELSE :first_user + k / :spread_posts END,
       CASE WHEN n <= :hot THEN :first_post + :posts - 1 - (n - 1) / :users
            ELSE :first_post + k % :spread_posts END,
       to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n,
     LATERAL (SELECT (n - :hot - 1) * :mix % :pairs AS k) AS spread

-- name: seed_reposts
-- Distinct pairs of a user and a post.
INSERT INTO reposts (user_id, post_id, created_at)
SELECT :first_user + k / :posts, :first_post + k % :posts,
       to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n,
     LATERAL (SELECT (n - 1) * :mix % :pairs AS k) AS spread

-- name: seed_comments
-- Comments on posts and by authors spread over the seeded ones.
INSERT INTO comments (id, post_id, author_id, body, created_at)
SELECT :first_id + n - 1, :first_post + n * :mix % :posts, :first_user + n * :mix2 % :users,
       'comment ' || n, to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n

-- name: seed_follows
-- The first :hot follows are the first user following the next ones; the rest are distinct
-- pairs of two other users (a follower, and anyone but them).
INSERT INTO follows (follower_id, followee_id, created_at)
SELECT CASE WHEN n <= :hot THEN :first_user ELSE :first_user + 1 + k / (:users - 1) END,
       CASE WHEN n <= :hot THEN :first_user + n
            WHEN k % (:users - 1) < 1 + k / (:users - 1) THEN :first_user + k % (:users - 1)
            ELSE :first_user + k % (:users - 1) + 1 END,
       to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n,
     LATERAL (SELECT (n - :hot - 1) * :mix % :pairs AS k) AS spread

-- name: seed_customers
-- Customers c<run>_<n>@example.com, made over the day before the purchases begin.
INSERT INTO customers (id, email, name, revision, created_at, updated_at)
SELECT :first_id + n - 1, :prefix || n || '@example.com', 'Customer ' || n, 1, moment, moment
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n,
     LATERAL (SELECT to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
              AS moment) AS made

-- name: seed_purchases
-- Purchases oldest first; every :whale_every-th is the first customer's, the others spread over
-- the rest; :items items, one to five of each, at one of a hundred prices.
INSERT INTO purchases (id, customer_id, item, quantity, unit_price_cents, total_cents, purchased_at,
                       captured_by, created_at)
SELECT :first_id + n - 1,
       CASE WHEN n % :whale_every = 0 OR :customers = 1 THEN :first_customer
            ELSE :first_customer + 1 + n * :mix % (:customers - 1) END,
       'item ' || lpad(CAST(1 + n * :mix2 % :items AS text), 2, '0'), quantity, price, quantity * price,
       moment, 'seed', moment
FROM generate_series(CAST(:from_n AS bigint), CAST(:to_n AS bigint)) AS n,
     LATERAL (SELECT 1 + n % 5 AS quantity, 99 + 100 * (n * 7 % 100) AS price,
                     to_timestamp(CAST(:start AS double precision) + n * CAST(:step AS double precision))
                     AS moment) AS drawn

-- name: analyze
-- Refresh the planner's statistics after a bulk load, and the visibility map, so that counts
-- by post can be answered from the indexes alone.
VACUUM (ANALYZE)
