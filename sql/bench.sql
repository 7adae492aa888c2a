-- The limit app (../shared/bench/limit_app.py) on the bench's large data: its own tables (lim_*,
-- made by its first start) refilled with the service's rows, so that both serve the same data.
-- service.bench.runner clears them (in this order, for their foreign keys), then copies.

-- name: clear_limit_app_likes
-- Forget the limit app's likes.
DELETE FROM lim_likes

-- name: clear_limit_app_reposts
-- Forget the limit app's reposts.
DELETE FROM lim_reposts

-- name: clear_limit_app_comments
-- Forget the limit app's comments.
DELETE FROM lim_comments

-- name: clear_limit_app_posts
-- Forget the limit app's posts.
DELETE FROM lim_posts

-- name: clear_limit_app_users
-- Forget the limit app's users.
DELETE FROM lim_users

-- name: clear_limit_app_purchases
-- Forget the limit app's purchases.
DELETE FROM lim_purchases

-- name: clear_limit_app_customers
-- Forget the limit app's customers.
DELETE FROM lim_customers

-- name: copy_users_to_limit_app
-- The service's users, as the limit app's.
INSERT INTO lim_users (id, username) SELECT id, username FROM users

-- name: copy_posts_to_limit_app
-- The service's posts, as the limit app's.
INSERT INTO lim_posts (id, owner_id, content, created_at) SELECT id, author_id, content, created_at FROM posts

-- name: copy_likes_to_limit_app
-- The service's likes, as the limit app's.
INSERT INTO lim_likes (user_id, post_id) SELECT user_id, post_id FROM likes

-- name: copy_reposts_to_limit_app
-- The service's reposts, as the limit app's.
INSERT INTO lim_reposts (user_id, post_id) SELECT user_id, post_id FROM reposts

-- name: copy_comments_to_limit_app
-- The service's comments, as the limit app's.
INSERT INTO lim_comments (id, post_id, author_id, body) SELECT id, post_id, author_id, body FROM comments

-- name: copy_customers_to_limit_app
-- The service's customers, as the limit app's.
INSERT INTO lim_customers (id, email, name, revision, created_at, updated_at)
SELECT id, email, name, revision, created_at, updated_at FROM customers

-- name: copy_purchases_to_limit_app
-- The service's purchases, as the limit app's.
INSERT INTO lim_purchases (id, customer_id, item, quantity, unit_price_cents, purchased_at)
SELECT id, customer_id, item, quantity, unit_price_cents, purchased_at FROM purchases
