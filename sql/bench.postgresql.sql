-- name: limit_app_next_ids
-- The limit app's sequences past the ids copied into its tables, so that its inserts go on.
SELECT setval(pg_get_serial_sequence(t, 'id'), greatest(m, 1), m IS NOT NULL)
FROM (VALUES ('lim_users', (SELECT max(id) FROM lim_users)), ('lim_posts', (SELECT max(id) FROM lim_posts)),
             ('lim_comments', (SELECT max(id) FROM lim_comments)),
             ('lim_customers', (SELECT max(id) FROM lim_customers)),
             ('lim_purchases', (SELECT max(id) FROM lim_purchases))) AS highest(t, m)
