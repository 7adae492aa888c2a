-- name: seed_users
-- Insert many users from a JSON array of users rows; their ids back, in order.
INSERT INTO users (username, email, password_hash, created_at)
SELECT json_extract(value, '$.username'), json_extract(value, '$.email'),
       json_extract(value, '$.password_hash'), json_extract(value, '$.created_at')
FROM json_each(:rows)
ORDER BY key
RETURNING id

-- name: seed_posts
-- Insert many posts from a JSON array of posts rows; their ids back.
INSERT INTO posts (author_id, content, created_at)
SELECT json_extract(value, '$.author_id'), json_extract(value, '$.content'), json_extract(value, '$.created_at')
FROM json_each(:rows)
ORDER BY key
RETURNING id

-- name: seed_comments
-- Insert many comments from a JSON array of comments rows.
INSERT INTO comments (post_id, author_id, body, created_at)
SELECT json_extract(value, '$.post_id'), json_extract(value, '$.author_id'),
       json_extract(value, '$.body'), json_extract(value, '$.created_at')
FROM json_each(:rows)

-- name: seed_likes
-- Insert many likes from a JSON array of likes rows (pairs already present are skipped).
INSERT INTO likes (user_id, post_id, created_at)
SELECT json_extract(value, '$.user_id'), json_extract(value, '$.post_id'), json_extract(value, '$.created_at')
FROM json_each(:rows)
WHERE true
ON CONFLICT DO NOTHING

-- name: seed_reposts
-- Insert many reposts from a JSON array of reposts rows (pairs already present are skipped).
INSERT INTO reposts (user_id, post_id, created_at)
SELECT json_extract(value, '$.user_id'), json_extract(value, '$.post_id'), json_extract(value, '$.created_at')
FROM json_each(:rows)
WHERE true
ON CONFLICT DO NOTHING

-- name: seed_follows
-- Insert many follows from a JSON array of follows rows (pairs already present are skipped).
INSERT INTO follows (follower_id, followee_id, created_at)
SELECT json_extract(value, '$.follower_id'), json_extract(value, '$.followee_id'),
       json_extract(value, '$.created_at')
FROM json_each(:rows)
WHERE true
ON CONFLICT DO NOTHING

-- name: analyze
-- Refresh the planner's statistics after a bulk load.
ANALYZE
