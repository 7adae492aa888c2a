-- Seeding (service.seed), as in seed.postgresql.sql: rows n = :from_n .. :to_n of one table, ids
-- from :first_id, every choice arithmetic on n, pairs spread by k * :mix % :pairs, moments
-- :start + n * :step epoch seconds written as the service stores them (microseconds, Z).

-- name: seed_lock_tables
-- Takes the write lock now (an empty write), so that the ids read next stay free. (The triggers
-- stay on: SQLite updates a counter row in place, however often.)
DELETE FROM users WHERE 0

-- name: seed_users
-- Users s<run>_<n>, the first the one who follows most (see seed_follows).
INSERT INTO users (id, username, email, password_hash, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, :start + n * :step AS t FROM g)
SELECT :first_id + n - 1, :prefix || n, :prefix || n || '@example.com', :password_hash,
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_posts
-- Posts oldest first, by authors spread over the seeded users.
INSERT INTO posts (id, author_id, content, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, :start + n * :step AS t FROM g)
SELECT :first_id + n - 1, :first_user + n * :mix % :users, 'post ' || n || ' from the seed',
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_likes
-- The first :hot likes go to the :hot_posts newest posts (a user each, in turn); the rest are
-- distinct pairs of a user and one of the other posts.
INSERT INTO likes (user_id, post_id, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, (n - :hot - 1) * :mix % :pairs AS k, :start + n * :step AS t FROM g)
SELECT CASE WHEN n <= :hot THEN :first_user + (n - 1) % :users ELSE :first_user + k / :spread_posts END,
       CASE WHEN n <= :hot THEN :first_post + :posts - 1 - (n - 1) / :users
            ELSE :first_post + k % :spread_posts END,
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_reposts
-- Distinct pairs of a user and a post.
INSERT INTO reposts (user_id, post_id, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, (n - 1) * :mix % :pairs AS k, :start + n * :step AS t FROM g)
SELECT :first_user + k / :posts, :first_post + k % :posts,
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_comments
-- Comments on posts and by authors spread over the seeded ones.
INSERT INTO comments (id, post_id, author_id, body, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, :start + n * :step AS t FROM g)
SELECT :first_id + n - 1, :first_post + n * :mix % :posts, :first_user + n * :mix2 % :users, 'comment ' || n,
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_follows
-- The first :hot follows are the first user following the next ones; the rest are distinct pairs
-- of two other users.
INSERT INTO follows (follower_id, followee_id, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, (n - :hot - 1) * :mix % :pairs AS k, :start + n * :step AS t FROM g)
SELECT CASE WHEN n <= :hot THEN :first_user ELSE :first_user + 1 + k / (:users - 1) END,
       CASE WHEN n <= :hot THEN :first_user + n
            WHEN k % (:users - 1) < 1 + k / (:users - 1) THEN :first_user + k % (:users - 1)
            ELSE :first_user + k % (:users - 1) + 1 END,
       strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch') || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000)
FROM numbered

-- name: seed_customers
-- Customers c<run>_<n>@example.com, made over the day before the purchases begin.
INSERT INTO customers (id, email, name, revision, created_at, updated_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, :start + n * :step AS t FROM g),
     made AS (SELECT n, strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch')
                        || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000) AS moment FROM numbered)
SELECT :first_id + n - 1, :prefix || n || '@example.com', 'Customer ' || n, 1, moment, moment
FROM made

-- name: seed_purchases
-- Purchases oldest first; every :whale_every-th is the first customer's, the others spread over
-- the rest; :items items, one to five of each, at one of a hundred prices.
INSERT INTO purchases (id, customer_id, item, quantity, unit_price_cents, total_cents, purchased_at,
                       captured_by, created_at)
WITH RECURSIVE g(n) AS (SELECT :from_n UNION ALL SELECT n + 1 FROM g WHERE n < :to_n),
     numbered AS (SELECT n, :start + n * :step AS t FROM g),
     drawn AS (SELECT n, 1 + n % 5 AS quantity, 99 + 100 * (n * 7 % 100) AS price,
                      strftime('%Y-%m-%dT%H:%M:%S', t, 'unixepoch')
                      || printf('.%06dZ', (t - CAST(t AS INTEGER)) * 1000000) AS moment FROM numbered)
SELECT :first_id + n - 1,
       CASE WHEN n % :whale_every = 0 OR :customers = 1 THEN :first_customer
            ELSE :first_customer + 1 + n * :mix % (:customers - 1) END,
       'item ' || printf('%02d', 1 + n * :mix2 % :items), quantity, price, quantity * price,
       moment, 'seed', moment
FROM drawn

-- name: analyze
-- Refresh the planner's statistics after a bulk load.
ANALYZE
