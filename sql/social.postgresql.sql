-- name: feed
-- A page of the user's timeline: their own posts and those of everyone they follow, newest
-- first, with counts. Read through each author's own index (ix_posts_author), never by walking
-- every post newest first and keeping the followed ones: that walk grows with the table (95,000
-- posts read for one page of someone following 5,000 quiet accounts, 20 ms, and without bound for
-- one who follows a single account that posted a year ago). Here the cost grows with the follows
-- only: first each author's newest post before the cursor (an index-only probe each, about 2 µs),
-- which picks the at most :limit authors the page can hold; then their newest posts.
WITH authors AS (
    SELECT f.followee_id AS author_id FROM follows f WHERE f.follower_id = :user_id
    UNION ALL
    SELECT CAST(:user_id AS BIGINT)
), on_the_page AS (
    SELECT a.author_id, newest.created_at, newest.id
    FROM authors a
    CROSS JOIN LATERAL (
        SELECT p.created_at, p.id
        FROM posts p
        WHERE p.author_id = a.author_id AND (p.created_at, p.id) < (:before_at, :before_id)
        ORDER BY p.created_at DESC, p.id DESC
        LIMIT 1
    ) AS newest
    ORDER BY newest.created_at DESC, newest.id DESC
    LIMIT :limit
)
SELECT p.id, u.username AS author, p.content, p.created_at, p.edited_at,
       (SELECT coalesce(sum(k.like_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS like_count,
       (SELECT coalesce(sum(k.repost_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS repost_count,
       (SELECT coalesce(sum(k.comment_count), 0) FROM post_counts k WHERE k.post_id = p.id) AS comment_count
FROM on_the_page a
CROSS JOIN LATERAL (
    SELECT *
    FROM posts p
    WHERE p.author_id = a.author_id AND (p.created_at, p.id) < (:before_at, :before_id)
    ORDER BY p.created_at DESC, p.id DESC
    LIMIT :limit
) AS p
JOIN users u ON u.id = p.author_id
ORDER BY p.created_at DESC, p.id DESC
LIMIT :limit
