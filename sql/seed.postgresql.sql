-- name: seed_users
-- Insert many users from a JSON array of users rows; their ids back, in order.
INSERT INTO users (username, email, password_hash, created_at)
SELECT username, email, password_hash, created_at
FROM json_populate_recordset(NULL::users, :rows::json)
ORDER BY created_at, username
RETURNING id

-- name: seed_posts
-- Insert many posts from a JSON array of posts rows; their ids back.
INSERT INTO posts (author_id, content, created_at)
SELECT author_id, content, created_at
FROM json_populate_recordset(NULL::posts, :rows::json)
RETURNING id

-- name: seed_comments
-- Insert many comments from a JSON array of comments rows.
INSERT INTO comments (post_id, author_id, body, created_at)
SELECT post_id, author_id, body, created_at
FROM json_populate_recordset(NULL::comments, :rows::json)

-- name: seed_likes
-- Insert many likes from a JSON array of likes rows (pairs already present are skipped).
INSERT INTO likes (user_id, post_id, created_at)
SELECT user_id, post_id, created_at
FROM json_populate_recordset(NULL::likes, :rows::json)
ON CONFLICT DO NOTHING

-- name: seed_reposts
-- Insert many reposts from a JSON array of reposts rows (pairs already present are skipped).
INSERT INTO reposts (user_id, post_id, created_at)
SELECT user_id, post_id, created_at
FROM json_populate_recordset(NULL::reposts, :rows::json)
ON CONFLICT DO NOTHING

-- name: seed_follows
-- Insert many follows from a JSON array of follows rows (pairs already present are skipped).
INSERT INTO follows (follower_id, followee_id, created_at)
SELECT follower_id, followee_id, created_at
FROM json_populate_recordset(NULL::follows, :rows::json)
ON CONFLICT DO NOTHING

-- name: analyze
-- Refresh the planner's statistics after a bulk load, and the visibility map, so that counts
-- by post can be answered from the indexes alone.
VACUUM (ANALYZE)
