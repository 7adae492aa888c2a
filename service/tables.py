"""The schema, written once as SQLAlchemy Core metadata. The DDL is generated from it at start-up."""

from __future__ import annotations

from typing import Any

from sqlalchemy import BigInteger, Column, DateTime, Index, Integer, MetaData, String, Table, Text, text
from sqlalchemy.types import TypeEngine

metadata = MetaData()

# SQLite only auto-assigns ids to a column declared exactly INTEGER PRIMARY KEY.
Id: TypeEngine[int] = BigInteger().with_variant(Integer(), "sqlite")

# PostgreSQL stores real timestamps; SQLite stores the ISO 8601 text the service writes
# (always microseconds and a Z), which sorts and compares correctly as text.
Timestamp: TypeEngine[Any] = DateTime(timezone=True).with_variant(Text(), "sqlite")

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Id, primary_key=True),
    Column("name", String(100), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("key_prefix", String(16), nullable=False),
    Column("created_at", Timestamp, nullable=False),
    Column("revoked_at", Timestamp),
)
# A name names one live key; a revoked key's name can be used again.
Index(
    "ux_api_keys_live_name",
    api_keys.c.name,
    unique=True,
    postgresql_where=text("revoked_at IS NULL"),
    sqlite_where=text("revoked_at IS NULL"),
)
Index("ix_api_keys_created", api_keys.c.created_at, api_keys.c.id)
