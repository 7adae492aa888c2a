-- name: count_login_attempt
-- Count a sign-in attempt against both of its limits before the password is checked, so attempts
-- arriving together cannot all slip under a limit. A count already at its limit stays as it is and
-- returns no row: that limit refuses the attempt. The attempt's row stays counted as a failure
-- unless the password turns out right (forgive_login_attempt).
INSERT INTO login_failures (limit_name, subject, window_ends_at, failures)
VALUES ('account', :account, :window_ends_at, 1), ('address', :address, :window_ends_at, 1)
ON CONFLICT (limit_name, subject, window_ends_at) DO UPDATE
SET failures = login_failures.failures + 1
WHERE login_failures.failures
    < CASE login_failures.limit_name
        WHEN 'account' THEN CAST(:per_account AS INTEGER) ELSE CAST(:per_address AS INTEGER) END
RETURNING limit_name, failures

-- name: forget_account_failures
-- A right password: this username's failures from this address are forgotten, in every window.
DELETE FROM login_failures
WHERE limit_name = 'account' AND subject = :account

-- name: forgive_login_attempt
-- ...and the attempt no longer counts against the address (its other failures still do).
UPDATE login_failures
SET failures = failures - 1
WHERE limit_name = 'address' AND subject = :address AND window_ends_at = :window_ends_at
  AND failures > 0

-- name: purge_ended_login_windows
-- Housekeeping: counts of windows that have ended limit nothing any more.
DELETE FROM login_failures
WHERE window_ends_at <= :now
