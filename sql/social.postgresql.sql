-- name: feed
-- A page of the user's timeline: their own posts and those of everyone they follow, newest
-- first, with counts. Two ways, and the cheaper one runs (the other's one-time filter is false):
-- 1. walk the newest 1,000 posts before the cursor and keep the followed ones: when that finds a
--    whole page it is exactly the page (on 1M posts, someone following 5,000 of 100,000 accounts
--    finds it in the newest ~400: 2-4 ms);
-- 2. otherwise (few follows, or quiet ones) each followed author's newest post before the cursor
--    (an index-only probe each, about 2 us), which picks the at most :limit authors the page
--    can hold; then their newest posts. Its cost grows with the follows only, never with the
--    posts (a walk alone would read without bound for someone following one account that posted
--    a year ago).
WITH followed AS (
    SELECT f.followee_id AS author_id FROM follows f WHERE f.follower_id = :user_id
    UNION ALL
    SELECT CAST(:user_id AS BIGINT)
), walked AS MATERIALIZED (
    SELECT w.*
    FROM (
        SELECT p.id, p.author_id, p.content, p.created_at, p.edited_at
        FROM posts p
        WHERE (p.created_at, p.id) < (:before_at, :before_id)
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT 1000
    ) AS w
    WHERE w.author_id = :user_id
       OR EXISTS (SELECT 1 FROM follows f WHERE f.follower_id = :user_id AND f.followee_id = w.author_id)
    ORDER BY w.created_at DESC, w.id DESC
    LIMIT :limit
), on_the_page AS (
    SELECT a.author_id, newest.created_at, newest.id
    FROM followed a
    CROSS JOIN LATERAL (
        SELECT p.created_at, p.id
        FROM posts p
        WHERE p.author_id = a.author_id AND (p.created_at, p.id) < (:before_at, :before_id)
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT 1
    ) AS newest
    WHERE (SELECT count(*) FROM walked) < :limit
    ORDER BY newest.created_at DESC, newest.id DESC
    LIMIT :limit
), page AS (
    SELECT * FROM walked WHERE (SELECT count(*) FROM walked) = :limit
    UNION ALL
    SELECT p.id, p.author_id, p.content, p.created_at, p.edited_at
    FROM on_the_page a
    CROSS JOIN LATERAL (
        SELECT p.id, p.author_id, p.content, p.created_at, p.edited_at
        FROM posts p
        WHERE p.author_id = a.author_id AND (p.created_at, p.id) < (:before_at, :before_id)
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT :limit
    ) AS p
)
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM page p
JOIN users u ON u.id = p.author_id
ORDER BY p.created_at DESC, p.id DESC
LIMIT :limit
