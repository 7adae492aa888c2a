-- name: busiest_follower
-- The user who follows the most others: a realistic reader for benchmarking the feed.
SELECT u.username, count(*) AS following
FROM follows f
JOIN users u ON u.id = f.follower_id
GROUP BY u.id, u.username
ORDER BY following DESC, u.username
LIMIT 1

-- name: seed_highest_ids
-- Where the seed's explicit ids start (read with the table locked).
SELECT coalesce((SELECT max(id) FROM users), 0) AS users,
       coalesce((SELECT max(id) FROM posts), 0) AS posts,
       coalesce((SELECT max(id) FROM comments), 0) AS comments,
       coalesce((SELECT max(id) FROM customers), 0) AS customers,
       coalesce((SELECT max(id) FROM purchases), 0) AS purchases
