-- The triggers that keep post_counts and user_counts (service.tables says why). Each function
-- handles one counted table's INSERT and DELETE; a row only fires them when it was really
-- inserted or deleted, so a PUT that finds its like already there, or a DELETE that finds none,
-- moves nothing. An increment is an upsert (the shard's first row is made by it); a decrement is
-- an UPDATE, which finds the row its increment made. 16 is tables.COUNTER_SHARDS. Making them
-- again replaces them (tables.create_triggers drops each trigger first).

-- name: counts_ddl_count_likes
-- A like counts on its post, in the liker's shard.
CREATE OR REPLACE FUNCTION count_likes() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO post_counts AS c (post_id, shard, like_count)
        VALUES (NEW.post_id, NEW.user_id % 16, 1)
        ON CONFLICT (post_id, shard) DO UPDATE SET like_count = c.like_count + 1;
    ELSE
        UPDATE post_counts SET like_count = like_count - 1
        WHERE post_id = OLD.post_id AND shard = OLD.user_id % 16;
    END IF;
    RETURN NULL;
END $$

-- name: counts_ddl_likes_counted
-- Every like inserted or deleted, by anyone, moves its post's count.
CREATE TRIGGER likes_counted AFTER INSERT OR DELETE ON likes
FOR EACH ROW EXECUTE FUNCTION count_likes()

-- name: counts_ddl_count_reposts
-- A repost counts on its post, in the reposter's shard.
CREATE OR REPLACE FUNCTION count_reposts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO post_counts AS c (post_id, shard, repost_count)
        VALUES (NEW.post_id, NEW.user_id % 16, 1)
        ON CONFLICT (post_id, shard) DO UPDATE SET repost_count = c.repost_count + 1;
    ELSE
        UPDATE post_counts SET repost_count = repost_count - 1
        WHERE post_id = OLD.post_id AND shard = OLD.user_id % 16;
    END IF;
    RETURN NULL;
END $$

-- name: counts_ddl_reposts_counted
-- Every repost inserted or deleted moves its post's count.
CREATE TRIGGER reposts_counted AFTER INSERT OR DELETE ON reposts
FOR EACH ROW EXECUTE FUNCTION count_reposts()

-- name: counts_ddl_count_comments
-- A comment counts on its post, in its own id's shard.
CREATE OR REPLACE FUNCTION count_comments() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO post_counts AS c (post_id, shard, comment_count)
        VALUES (NEW.post_id, NEW.id % 16, 1)
        ON CONFLICT (post_id, shard) DO UPDATE SET comment_count = c.comment_count + 1;
    ELSE
        UPDATE post_counts SET comment_count = comment_count - 1
        WHERE post_id = OLD.post_id AND shard = OLD.id % 16;
    END IF;
    RETURN NULL;
END $$

-- name: counts_ddl_comments_counted
-- Every comment inserted or deleted moves its post's count.
CREATE TRIGGER comments_counted AFTER INSERT OR DELETE ON comments
FOR EACH ROW EXECUTE FUNCTION count_comments()

-- name: counts_ddl_count_posts
-- A post counts for its author; and before a post goes, its own counts go, so that the cascade
-- that deletes its likes (each firing count_likes) finds no row to update: a popular post is then
-- deleted at the cost of its likes, not of a hundred thousand updates of the same sixteen rows.
CREATE OR REPLACE FUNCTION count_posts() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO user_counts AS c (user_id, shard, post_count)
        VALUES (NEW.author_id, NEW.id % 16, 1)
        ON CONFLICT (user_id, shard) DO UPDATE SET post_count = c.post_count + 1;
        RETURN NULL;
    END IF;
    DELETE FROM post_counts WHERE post_id = OLD.id;
    UPDATE user_counts SET post_count = post_count - 1
    WHERE user_id = OLD.author_id AND shard = OLD.id % 16;
    RETURN OLD;
END $$

-- name: counts_ddl_posts_counted
-- A new post counts for its author.
CREATE TRIGGER posts_counted AFTER INSERT ON posts
FOR EACH ROW EXECUTE FUNCTION count_posts()

-- name: counts_ddl_posts_uncounted
-- A post about to be deleted takes its counts and its author's one with it.
CREATE TRIGGER posts_uncounted BEFORE DELETE ON posts
FOR EACH ROW EXECUTE FUNCTION count_posts()

-- name: counts_ddl_count_follows
-- A follow counts twice: a follower for the followee, one more followed for the follower.
CREATE OR REPLACE FUNCTION count_follows() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO user_counts AS c (user_id, shard, follower_count)
        VALUES (NEW.followee_id, NEW.follower_id % 16, 1)
        ON CONFLICT (user_id, shard) DO UPDATE SET follower_count = c.follower_count + 1;
        INSERT INTO user_counts AS c (user_id, shard, following_count)
        VALUES (NEW.follower_id, NEW.followee_id % 16, 1)
        ON CONFLICT (user_id, shard) DO UPDATE SET following_count = c.following_count + 1;
    ELSE
        UPDATE user_counts SET follower_count = follower_count - 1
        WHERE user_id = OLD.followee_id AND shard = OLD.follower_id % 16;
        UPDATE user_counts SET following_count = following_count - 1
        WHERE user_id = OLD.follower_id AND shard = OLD.followee_id % 16;
    END IF;
    RETURN NULL;
END $$

-- name: counts_ddl_follows_counted
-- Every follow inserted or deleted moves both users' counts.
CREATE TRIGGER follows_counted AFTER INSERT OR DELETE ON follows
FOR EACH ROW EXECUTE FUNCTION count_follows()

-- name: counts_ddl_count_users
-- Before a user goes, their own counts go (as a post's do, for the same reason).
CREATE OR REPLACE FUNCTION uncount_user() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM user_counts WHERE user_id = OLD.id;
    RETURN OLD;
END $$

-- name: counts_ddl_users_uncounted
-- A user about to be deleted takes their counts with them.
CREATE TRIGGER users_uncounted BEFORE DELETE ON users
FOR EACH ROW EXECUTE FUNCTION uncount_user()

-- name: lock_posts_counted
-- While one range of post counts is filled, nothing may add or take away what it counts (SHARE
-- blocks writers, not readers; a writer waits for the one range, under its own limits).
LOCK TABLE posts, likes, reposts, comments IN SHARE MODE

-- name: lock_users_counted
-- The same for a range of user counts.
LOCK TABLE users, posts, follows IN SHARE MODE

-- name: lock_customer_items
-- The same for a range of customers' rollups.
LOCK TABLE customers, purchases IN SHARE MODE

-- name: lock_daily_sales
-- The same for a range of days' rollups.
LOCK TABLE purchases IN SHARE MODE

-- name: fill_daily_sales
-- What was sold on the days in [first, end), per item, in each day's shard 0 (ix_purchases_purchased).
INSERT INTO daily_sales (day, item, shard, purchases, quantity, revenue_cents)
SELECT (purchased_at AT TIME ZONE 'UTC')::date, item, 0, count(*), sum(quantity), sum(total_cents)
FROM purchases
WHERE purchased_at >= (CAST(:first AS timestamp) AT TIME ZONE 'UTC')
  AND purchased_at < (CAST(:end AS timestamp) AT TIME ZONE 'UTC')
GROUP BY 1, 2
ORDER BY 1, 2  -- in key order: each insert lands beside the last in the index
