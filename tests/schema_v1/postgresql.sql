CREATE TABLE api_keys (
	id BIGSERIAL NOT NULL, 
	name VARCHAR(100) NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	key_prefix VARCHAR(16) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	revoked_at TIMESTAMP WITH TIME ZONE, 
	PRIMARY KEY (id), 
	UNIQUE (key_hash)
);

CREATE INDEX ix_api_keys_created ON api_keys (created_at, id);

CREATE UNIQUE INDEX ux_api_keys_live_name ON api_keys (name) WHERE revoked_at IS NULL;

CREATE TABLE customers (
	id BIGSERIAL NOT NULL, 
	email VARCHAR(254) NOT NULL, 
	name VARCHAR(200) NOT NULL, 
	revision INTEGER DEFAULT 1 NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	updated_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (email)
);

CREATE INDEX ix_customers_created ON customers (created_at, id);

CREATE TABLE idempotency_keys (
	caller VARCHAR(120) NOT NULL, 
	key VARCHAR(255) NOT NULL, 
	request_hash VARCHAR(64) NOT NULL, 
	status_code INTEGER, 
	response_body TEXT, 
	location VARCHAR(200), 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (caller, key)
);

CREATE INDEX ix_idempotency_keys_created ON idempotency_keys (created_at);

CREATE TABLE users (
	id BIGSERIAL NOT NULL, 
	username VARCHAR(32) NOT NULL, 
	email VARCHAR(254) NOT NULL, 
	password_hash VARCHAR(60) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	UNIQUE (username), 
	UNIQUE (email)
);

CREATE TABLE purchases (
	id BIGSERIAL NOT NULL, 
	customer_id BIGINT NOT NULL, 
	item VARCHAR(200) NOT NULL, 
	quantity INTEGER NOT NULL, 
	unit_price_cents BIGINT NOT NULL, 
	total_cents BIGINT NOT NULL, 
	purchased_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	captured_by VARCHAR(120) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	CONSTRAINT ck_purchases_quantity_positive CHECK (quantity > 0), 
	CONSTRAINT ck_purchases_price_not_negative CHECK (unit_price_cents >= 0), 
	FOREIGN KEY(customer_id) REFERENCES customers (id) ON DELETE CASCADE
);

CREATE INDEX ix_purchases_customer ON purchases (customer_id, purchased_at, id);

CREATE INDEX ix_purchases_purchased ON purchases (purchased_at, id);

CREATE INDEX ix_purchases_item ON purchases (item, purchased_at, id);

CREATE TABLE sessions (
	id BIGSERIAL NOT NULL, 
	user_id BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	expires_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	revoked_at TIMESTAMP WITH TIME ZONE, 
	PRIMARY KEY (id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_sessions_expires ON sessions (expires_at);

CREATE INDEX ix_sessions_revoked ON sessions (revoked_at);

CREATE INDEX ix_sessions_user ON sessions (user_id, created_at, id);

CREATE TABLE posts (
	id BIGSERIAL NOT NULL, 
	author_id BIGINT NOT NULL, 
	content VARCHAR(280) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(author_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_posts_created ON posts (created_at, id);

CREATE INDEX ix_posts_author ON posts (author_id, created_at, id);

CREATE TABLE follows (
	follower_id BIGINT NOT NULL, 
	followee_id BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (follower_id, followee_id), 
	CONSTRAINT ck_follows_not_self CHECK (follower_id <> followee_id), 
	FOREIGN KEY(follower_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(followee_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_follows_followee ON follows (followee_id, created_at, follower_id);

CREATE INDEX ix_follows_follower ON follows (follower_id, created_at, followee_id);

CREATE TABLE comments (
	id BIGSERIAL NOT NULL, 
	post_id BIGINT NOT NULL, 
	author_id BIGINT NOT NULL, 
	body VARCHAR(1000) NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (id), 
	FOREIGN KEY(post_id) REFERENCES posts (id) ON DELETE CASCADE, 
	FOREIGN KEY(author_id) REFERENCES users (id) ON DELETE CASCADE
);

CREATE INDEX ix_comments_author ON comments (author_id);

CREATE INDEX ix_comments_post ON comments (post_id, created_at, id);

CREATE TABLE likes (
	user_id BIGINT NOT NULL, 
	post_id BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (user_id, post_id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(post_id) REFERENCES posts (id) ON DELETE CASCADE
);

CREATE INDEX ix_likes_post ON likes (post_id);

CREATE TABLE reposts (
	user_id BIGINT NOT NULL, 
	post_id BIGINT NOT NULL, 
	created_at TIMESTAMP WITH TIME ZONE NOT NULL, 
	PRIMARY KEY (user_id, post_id), 
	FOREIGN KEY(user_id) REFERENCES users (id) ON DELETE CASCADE, 
	FOREIGN KEY(post_id) REFERENCES posts (id) ON DELETE CASCADE
);

CREATE INDEX ix_reposts_post ON reposts (post_id);
