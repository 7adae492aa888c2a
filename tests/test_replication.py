"""The replication the replica support (issue 14) stands on, built for real: a private primary and
a streaming standby held back on purpose. What the consistency token will rely on: a write is on
the standby exactly when its replay position has reached the primary's WAL insert position taken
after the commit.
"""

from __future__ import annotations

import time

import psycopg
import pytest

from tests.replication import Cluster

pytestmark = pytest.mark.slow


def test_a_held_back_standby_has_a_write_exactly_when_it_has_replayed_past_its_position(
    cluster: Cluster,
) -> None:
    with psycopg.connect(cluster.primary.url(), autocommit=True) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS marks (id int PRIMARY KEY)")
    deadline = time.monotonic() + 10
    with psycopg.connect(cluster.standby.url(), autocommit=True) as standby:
        while standby.execute("SELECT to_regclass('marks') IS NULL").fetchone() == (True,):
            assert time.monotonic() < deadline
            time.sleep(0.05)
    cluster.hold_back_standby("1s")
    try:
        with psycopg.connect(cluster.primary.url(), autocommit=True) as primary:
            primary.execute("INSERT INTO marks VALUES (1)")
            # The insert position, not pg_current_wal_lsn() (the *write* position): after an
            # asynchronous commit the commit record may not be written yet, and the write position
            # then lies before it - a standby "caught up" to it would not have the row.
            written_at = primary.execute("SELECT pg_current_wal_insert_lsn()").fetchone()
        assert written_at is not None
        with psycopg.connect(cluster.standby.url(), autocommit=True) as standby:

            def caught_up() -> bool:
                row = standby.execute("SELECT pg_last_wal_replay_lsn() >= %s::pg_lsn", written_at).fetchone()
                return bool(row and row[0])

            def has_it() -> bool:
                return standby.execute("SELECT count(*) FROM marks WHERE id = 1").fetchone() == (1,)

            # Held back: neither yet.
            assert not caught_up() and not has_it()
            started = time.monotonic()
            while not caught_up():
                assert time.monotonic() - started < 10
                time.sleep(0.02)
            assert has_it()  # once replayed that far, the write is there
            assert time.monotonic() - started > 0.5  # and it was held back
    finally:
        cluster.hold_back_standby("0")


def test_a_stopped_standby_comes_back_and_catches_up(cluster: Cluster) -> None:
    cluster.standby.stop()
    with psycopg.connect(cluster.primary.url(), autocommit=True) as primary:
        primary.execute("CREATE TABLE IF NOT EXISTS marks (id int PRIMARY KEY)")
        primary.execute("INSERT INTO marks VALUES (2) ON CONFLICT DO NOTHING")
    cluster.standby.start()
    deadline = time.monotonic() + 15
    with psycopg.connect(cluster.standby.url(), autocommit=True) as standby:
        while standby.execute("SELECT count(*) FROM marks WHERE id = 2").fetchone() != (1,):
            assert time.monotonic() < deadline
            time.sleep(0.05)
