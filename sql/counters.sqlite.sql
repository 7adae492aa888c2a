-- The triggers that keep post_counts and user_counts (service.tables says why), as
-- counters.postgresql.sql keeps them there: an increment is an upsert, a decrement an UPDATE of
-- the row its increment made, and a row fires them only when it was really inserted or deleted.
-- A post's or user's own counts go before it does, so the cascade that follows finds nothing to
-- update. Every count is in shard 0: SQLite has one writer at a time, so there is no row lock to
-- spread, and a read finds one row. Making them again replaces them (tables.create_triggers drops
-- each trigger first).

-- name: counts_ddl_likes_counted
-- A like counts on its post.
CREATE TRIGGER likes_counted AFTER INSERT ON likes BEGIN
    INSERT INTO post_counts (post_id, shard, like_count) VALUES (NEW.post_id, 0, 1)
    ON CONFLICT (post_id, shard) DO UPDATE SET like_count = like_count + 1;
END

-- name: counts_ddl_likes_uncounted
-- A like taken back (or cascaded away) no longer counts.
CREATE TRIGGER likes_uncounted AFTER DELETE ON likes BEGIN
    UPDATE post_counts SET like_count = like_count - 1
    WHERE post_id = OLD.post_id AND shard = 0;
END

-- name: counts_ddl_reposts_counted
-- A repost counts on its post.
CREATE TRIGGER reposts_counted AFTER INSERT ON reposts BEGIN
    INSERT INTO post_counts (post_id, shard, repost_count) VALUES (NEW.post_id, 0, 1)
    ON CONFLICT (post_id, shard) DO UPDATE SET repost_count = repost_count + 1;
END

-- name: counts_ddl_reposts_uncounted
-- A repost taken back no longer counts.
CREATE TRIGGER reposts_uncounted AFTER DELETE ON reposts BEGIN
    UPDATE post_counts SET repost_count = repost_count - 1
    WHERE post_id = OLD.post_id AND shard = 0;
END

-- name: counts_ddl_comments_counted
-- A comment counts on its post.
CREATE TRIGGER comments_counted AFTER INSERT ON comments BEGIN
    INSERT INTO post_counts (post_id, shard, comment_count) VALUES (NEW.post_id, 0, 1)
    ON CONFLICT (post_id, shard) DO UPDATE SET comment_count = comment_count + 1;
END

-- name: counts_ddl_comments_uncounted
-- A comment deleted no longer counts.
CREATE TRIGGER comments_uncounted AFTER DELETE ON comments BEGIN
    UPDATE post_counts SET comment_count = comment_count - 1
    WHERE post_id = OLD.post_id AND shard = 0;
END

-- name: counts_ddl_posts_counted
-- A new post counts for its author.
CREATE TRIGGER posts_counted AFTER INSERT ON posts BEGIN
    INSERT INTO user_counts (user_id, shard, post_count) VALUES (NEW.author_id, 0, 1)
    ON CONFLICT (user_id, shard) DO UPDATE SET post_count = post_count + 1;
END

-- name: counts_ddl_posts_uncounted
-- A post about to be deleted takes its counts and its author's one with it.
CREATE TRIGGER posts_uncounted BEFORE DELETE ON posts BEGIN
    DELETE FROM post_counts WHERE post_id = OLD.id;
    UPDATE user_counts SET post_count = post_count - 1
    WHERE user_id = OLD.author_id AND shard = 0;
END

-- name: counts_ddl_follows_counted
-- A follow counts a follower for one user and one followed for the other.
CREATE TRIGGER follows_counted AFTER INSERT ON follows BEGIN
    INSERT INTO user_counts (user_id, shard, follower_count)
    VALUES (NEW.followee_id, 0, 1)
    ON CONFLICT (user_id, shard) DO UPDATE SET follower_count = follower_count + 1;
    INSERT INTO user_counts (user_id, shard, following_count)
    VALUES (NEW.follower_id, 0, 1)
    ON CONFLICT (user_id, shard) DO UPDATE SET following_count = following_count + 1;
END

-- name: counts_ddl_follows_uncounted
-- A follow taken back no longer counts on either side.
CREATE TRIGGER follows_uncounted AFTER DELETE ON follows BEGIN
    UPDATE user_counts SET follower_count = follower_count - 1
    WHERE user_id = OLD.followee_id AND shard = 0;
    UPDATE user_counts SET following_count = following_count - 1
    WHERE user_id = OLD.follower_id AND shard = 0;
END

-- name: counts_ddl_users_uncounted
-- A user about to be deleted takes their counts with them.
CREATE TRIGGER users_uncounted BEFORE DELETE ON users BEGIN
    DELETE FROM user_counts WHERE user_id = OLD.id;
END

-- name: fill_daily_sales
-- What was sold on the days in [first, end) ('YYYY-MM-DD'), per item, in each day's shard 0.
INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
SELECT substr(purchased_at, 1, 10), item, 0, count(*), sum(quantity), sum(total_cents)
FROM purchases
WHERE purchased_at >= :first AND purchased_at < :end
GROUP BY 1, 2
ORDER BY 1, 2  -- in key order: each insert lands beside the last in the index
