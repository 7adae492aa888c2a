-- Filling the kept counts and rollups from the rows already there (revisions 0005 and 0006): one range of ids
-- at a time, each replacing whatever the range held. service.counters runs them, with :shards
-- tables.COUNTER_SHARDS on PostgreSQL and 1 on SQLite (which keeps every count in shard 0), so that
-- a row lands in the shard its trigger would have picked.

-- name: highest_ids
-- Where the ranges of ids end, and the first and last moments purchases were made.
SELECT coalesce((SELECT max(id) FROM posts), 0) AS post_id,
       coalesce((SELECT max(id) FROM users), 0) AS user_id,
       coalesce((SELECT max(id) FROM customers), 0) AS customer_id,
       (SELECT min(purchased_at) FROM purchases) AS first_purchased_at,
       (SELECT max(purchased_at) FROM purchases) AS last_purchased_at

-- name: clear_post_counts
-- Forget the kept counts of the posts in [first, end), before filling them again.
DELETE FROM post_counts
WHERE post_id >= :first AND post_id < :end

-- name: fill_post_counts
-- The likes, reposts and comments of the posts in the range, each by its index on post_id.
INSERT INTO post_counts (post_id, shard, like_count, repost_count, comment_count)
SELECT post_id, shard, sum(liked), sum(reposted), sum(commented)
FROM (
    SELECT post_id, user_id % :shards AS shard, 1 AS liked, 0 AS reposted, 0 AS commented
    FROM likes WHERE post_id >= :first AND post_id < :end
    UNION ALL
    SELECT post_id, user_id % :shards, 0, 1, 0
    FROM reposts WHERE post_id >= :first AND post_id < :end
    UNION ALL
    SELECT post_id, id % :shards, 0, 0, 1
    FROM comments WHERE post_id >= :first AND post_id < :end
) AS counted
GROUP BY post_id, shard
ORDER BY post_id, shard

-- name: clear_user_counts
-- Forget the kept counts of the users in [first, end), before filling them again.
DELETE FROM user_counts
WHERE user_id >= :first AND user_id < :end

-- name: fill_user_counts
-- The posts, followers and followed of the users in the range, each by its own index.
INSERT INTO user_counts (user_id, shard, post_count, follower_count, following_count)
SELECT user_id, shard, sum(posted), sum(followed_by), sum(following)
FROM (
    SELECT author_id AS user_id, id % :shards AS shard, 1 AS posted, 0 AS followed_by, 0 AS following
    FROM posts WHERE author_id >= :first AND author_id < :end
    UNION ALL
    SELECT followee_id, follower_id % :shards, 0, 1, 0
    FROM follows WHERE followee_id >= :first AND followee_id < :end
    UNION ALL
    SELECT follower_id, followee_id % :shards, 0, 0, 1
    FROM follows WHERE follower_id >= :first AND follower_id < :end
) AS counted
GROUP BY user_id, shard
ORDER BY user_id, shard

-- name: clear_customer_items
-- Forget the rollups of the customers in [first, end), before filling them again.
DELETE FROM customer_items
WHERE customer_id >= :first AND customer_id < :end

-- name: fill_customer_items
-- What the customers in the range bought, per item (ix_purchases_customer_sales).
INSERT INTO customer_items (customer_id, item, purchases, quantity, spent_cents)
SELECT customer_id, item, count(*), sum(quantity), sum(total_cents)
FROM purchases
WHERE customer_id >= :first AND customer_id < :end
GROUP BY customer_id, item
ORDER BY customer_id, item  -- in key order: each insert lands beside the last in the index

-- name: clear_daily_sales
-- Forget the rollups of the days in [first, end), before filling them again.
DELETE FROM daily_sales
WHERE day >= :first AND day < :end
