-- name: create_post
-- Publish a post.
INSERT INTO posts (author_id, content, created_at)
VALUES (:author_id, :content, :now)
RETURNING id, content, created_at

-- name: get_post
-- One post with its author and counts. Every count here and below is read from the kept counts
-- (post_counts, user_counts: at most 16 rows of an index each), never counted from the rows.
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM posts p
JOIN users u ON u.id = p.author_id
WHERE p.id = :id

-- name: list_posts
-- A page of all posts, newest first, each with its author and counts, in one statement: the
-- page is read from ix_posts_created, and the counts of those posts only.
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM posts p
JOIN users u ON u.id = p.author_id
WHERE (p.created_at, p.id) < (:before_at, :before_id)
ORDER BY p.created_at DESC, p.id DESC
LIMIT :limit

-- name: list_posts_of_user
-- A page of one user's posts, newest first, with counts (ix_posts_author).
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM users u
JOIN posts p ON p.author_id = u.id
WHERE u.username = :username
  AND (p.created_at, p.id) < (:before_at, :before_id)
ORDER BY p.created_at DESC, p.id DESC
LIMIT :limit

-- name: feed
-- A page of the user's timeline: their own posts and those of everyone they follow, newest
-- first, with counts.
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM posts p
JOIN users u ON u.id = p.author_id
WHERE (p.author_id = :user_id
       OR p.author_id IN (SELECT f.followee_id FROM follows f WHERE f.follower_id = :user_id))
  AND (p.created_at, p.id) < (:before_at, :before_id)
ORDER BY p.created_at DESC, p.id DESC
LIMIT :limit

-- name: edit_own_post
-- Replace a post's content if this user wrote it, noting when; no row back for anyone else's.
UPDATE posts
SET content = :content, edited_at = :now
WHERE id = :id AND author_id = :author_id
RETURNING id

-- name: delete_own_post
-- Delete a post if this user wrote it; its likes, reposts and comments go with it (cascade).
DELETE FROM posts
WHERE id = :id AND author_id = :author_id

-- name: find_post
-- Whether a post exists, and who wrote it (to tell 404 from 403 after a refused write).
SELECT id, author_id
FROM posts
WHERE id = :id

-- name: create_comment
-- Comment on a post; no row back when there is no such post.
INSERT INTO comments (post_id, author_id, body, created_at)
SELECT id, :author_id, :body, :now
FROM posts
WHERE id = :post_id
RETURNING id, post_id, body, created_at

-- name: list_comments
-- A page of a post's comments, oldest first, after the cursor (ix_comments_post).
SELECT c.id, c.post_id, u.username AS author, c.body, c.created_at
FROM comments c
JOIN users u ON u.id = c.author_id
WHERE c.post_id = :post_id
  AND (c.created_at, c.id) > (:after_at, :after_id)
ORDER BY c.created_at, c.id
LIMIT :limit

-- name: like_post
-- Like a post; nothing changes when it is liked already or does not exist.
INSERT INTO likes (user_id, post_id, created_at)
SELECT :user_id, id, :now
FROM posts
WHERE id = :post_id
ON CONFLICT DO NOTHING

-- name: unlike_post
-- Take a like back; nothing changes when there was none.
DELETE FROM likes
WHERE user_id = :user_id AND post_id = :post_id

-- name: repost_post
-- Repost a post; nothing changes when it is reposted already or does not exist.
INSERT INTO reposts (user_id, post_id, created_at)
SELECT :user_id, id, :now
FROM posts
WHERE id = :post_id
ON CONFLICT DO NOTHING

-- name: unrepost_post
-- Take a repost back; nothing changes when there was none.
DELETE FROM reposts
WHERE user_id = :user_id AND post_id = :post_id

-- name: follow_user
-- Follow the user with this name; nothing changes when already following or no such user.
INSERT INTO follows (follower_id, followee_id, created_at)
SELECT :follower_id, id, :now
FROM users
WHERE username = :username AND id <> :follower_id
ON CONFLICT DO NOTHING

-- name: unfollow_user
-- Stop following the user with this name; nothing changes when not following.
DELETE FROM follows
WHERE follower_id = :follower_id
  AND followee_id = (SELECT id FROM users WHERE username = :username)

-- name: find_user_by_name
-- A user's id by name (to tell 404 from "nothing to do").
SELECT id
FROM users
WHERE username = :username

-- name: user_profile
-- A user's public profile with post, follower and following counts, in one statement.
SELECT u.id, u.username, u.created_at,
       (SELECT coalesce(sum(k.post_count), 0) FROM user_counts k WHERE k.user_id = u.id) AS post_count,
       (SELECT coalesce(sum(k.follower_count), 0) FROM user_counts k WHERE k.user_id = u.id) AS follower_count,
       (SELECT coalesce(sum(k.following_count), 0) FROM user_counts k WHERE k.user_id = u.id) AS following_count
FROM users u
WHERE u.username = :username

-- name: list_followers
-- A page of the users who follow this one, most recent follow first (ix_follows_followee).
SELECT u.id, u.username, f.created_at AS followed_at
FROM users target
JOIN follows f ON f.followee_id = target.id
JOIN users u ON u.id = f.follower_id
WHERE target.username = :username
  AND (f.created_at, f.follower_id) < (:before_at, :before_id)
ORDER BY f.created_at DESC, f.follower_id DESC
LIMIT :limit

-- name: list_following
-- A page of the users this one follows, most recent follow first (ix_follows_follower).
SELECT u.id, u.username, f.created_at AS followed_at
FROM users source
JOIN follows f ON f.follower_id = source.id
JOIN users u ON u.id = f.followee_id
WHERE source.username = :username
  AND (f.created_at, f.followee_id) < (:before_at, :before_id)
ORDER BY f.created_at DESC, f.followee_id DESC
LIMIT :limit
