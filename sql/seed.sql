-- name: busiest_follower
-- The user who follows the most others: a realistic reader for benchmarking the feed.
SELECT u.username, count(*) AS following
FROM follows f
JOIN users u ON u.id = f.follower_id
GROUP BY u.id, u.username
ORDER BY following DESC, u.username
LIMIT 1
