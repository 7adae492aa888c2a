-- name: create_user
-- Register a user; no row back when the username or email is taken (the caller says which).
INSERT INTO users (username, email, password_hash, created_at)
VALUES (:username, :email, :password_hash, :now)
ON CONFLICT DO NOTHING
RETURNING id, username, email, role, created_at

-- name: find_taken_names
-- Which of this username and email are taken already (for the 409's field errors).
SELECT username = :username AS username_taken, email = :email AS email_taken
FROM users
WHERE username = :username OR email = :email

-- name: find_user_for_login
-- The user and password hash for a login attempt: one lookup on the unique username index.
SELECT id, username, password_hash
FROM users
WHERE username = :username

-- name: get_user
-- A user's own account (never the hash).
SELECT id, username, email, role, created_at
FROM users
WHERE id = :id

-- name: set_user_role
-- Make a user staff or a member again (the command line's `user set-role`; never the API).
UPDATE users
SET role = :role
WHERE username = :username
RETURNING id, username, role

-- name: find_staff
-- Is anyone staff? Checked once at start-up, to say how to make the first one while nobody is.
SELECT username
FROM users
WHERE role = 'staff'
LIMIT 1

-- name: create_session
-- Open a session for a login; its id becomes the access token's sid.
INSERT INTO sessions (user_id, created_at, expires_at)
VALUES (:user_id, :now, :expires_at)
RETURNING id, created_at, expires_at

-- name: find_live_session
-- The check on every authenticated request: the token's session, live and its own user's,
-- by primary key (one indexed read), with the username for captured_by and the role that says
-- what the user may do (so a change of role counts from the user's next request).
SELECT s.id, s.user_id, u.username, u.role
FROM sessions s
JOIN users u ON u.id = s.user_id
WHERE s.id = :session_id AND s.user_id = :user_id
  AND s.revoked_at IS NULL AND s.expires_at > :now

-- name: list_live_sessions
-- A page of the user's live sessions, newest first (index ix_sessions_user).
SELECT id, created_at, expires_at
FROM sessions
WHERE user_id = :user_id AND revoked_at IS NULL AND expires_at > :now
  AND (created_at, id) < (:before_at, :before_id)
ORDER BY created_at DESC, id DESC
LIMIT :limit

-- name: revoke_session
-- Revoke one of the user's own live sessions; no row changes for anyone else's or a dead one.
UPDATE sessions
SET revoked_at = :now
WHERE id = :session_id AND user_id = :user_id AND revoked_at IS NULL AND expires_at > :now

-- name: purge_dead_sessions
-- Forget sessions that expired or were revoked before the cutoff (the retention period).
DELETE FROM sessions
WHERE expires_at < :cutoff OR revoked_at < :cutoff

-- name: purge_dead_sessions_of_user
-- The same, for one user, at login: that user's dead sessions never pile up.
DELETE FROM sessions
WHERE user_id = :user_id AND (expires_at < :cutoff OR revoked_at < :cutoff)
