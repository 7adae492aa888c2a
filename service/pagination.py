"""Keyset pagination: `?limit=` and an opaque `?cursor=` naming the last row of the previous page."""

from __future__ import annotations

import base64
import binascii
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from marshmallow import Schema, fields, validate

from service.timestamps import EARLIEST, LATEST, from_database, from_text
from service.validation import MAX_ID

DEFAULT_LIMIT = 20
MAX_LIMIT = 100


class Cursor(fields.Field[tuple[datetime, int] | None]):
    """base64url of `["<timestamp>", <id>]`: the sort key of the last row already seen."""

    default_error_messages = {"invalid": "Not a valid cursor; pass next_cursor from the previous page."}  # noqa: RUF012

    def _deserialize(
        self, value: Any, attr: str | None, data: Any, **kwargs: Any
    ) -> tuple[datetime, int] | None:
        if value == "":
            return None  # `?cursor=` is page one
        try:
            padded = str(value) + "=" * (-len(str(value)) % 4)
            moment, row_id = orjson.loads(base64.urlsafe_b64decode(padded.encode("ascii")))
            if not isinstance(row_id, int) or isinstance(row_id, bool) or not 0 < row_id <= MAX_ID:
                raise ValueError(row_id)
            return from_text(moment), row_id
        except (ValueError, TypeError, UnicodeEncodeError, binascii.Error, orjson.JSONDecodeError):
            raise self.make_error("invalid") from None


def encode_cursor(moment: datetime | str, row_id: int) -> str:
    raw = orjson.dumps([from_database(moment), row_id])
    return base64.urlsafe_b64encode(raw).decode("ascii").rstrip("=")


class PageQuery(Schema):
    """The query parameters every list takes."""

    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1, max=MAX_LIMIT))
    cursor = Cursor(load_default=None)


@dataclass(frozen=True)
class Page:
    """One page of a list ordered by (timestamp, id): newest first, or oldest first if `ascending`."""

    limit: int
    at: datetime
    row_id: int
    ascending: bool = False

    @classmethod
    def from_query(cls, query: Mapping[str, Any], ascending: bool = False) -> Page:
        # Page one starts past a key beyond every row's, so it needs no statement of its own.
        start = (EARLIEST, 0) if ascending else (LATEST, MAX_ID)
        at, row_id = query.get("cursor") or start
        return cls(int(query["limit"]), at, row_id, ascending)

    def values(self) -> dict[str, Any]:
        """The parameters of a page statement; one row more than the page tells whether another follows."""
        if self.ascending:
            return {"limit": self.limit + 1, "after_at": self.at, "after_id": self.row_id}
        return {"limit": self.limit + 1, "before_at": self.at, "before_id": self.row_id}

    def respond(
        self, rows: Sequence[Any], shape: Callable[[Any], dict[str, Any]], sort_key: str = "created_at"
    ) -> dict[str, Any]:
        """`{"items": [...], "next_cursor": ...}` from up to limit + 1 rows."""
        items = rows[: self.limit]
        next_cursor = None
        if len(rows) > self.limit:
            last = items[-1]
            next_cursor = encode_cursor(last[sort_key], last["id"])
        return {"items": [shape(row) for row in items], "next_cursor": next_cursor}


def page_of(item: type[Schema], name: str) -> type[Schema]:
    """A page of `item`s, `{"items": [...], "next_cursor": ... | null}`, for the OpenAPI document."""
    return Schema.from_dict(
        {
            "items": fields.List(fields.Nested(item), required=True),
            "next_cursor": fields.String(required=True, allow_none=True),
        },
        name=name,
    )
