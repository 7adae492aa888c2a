"""Sales reports: purchases, quantity and revenue grouped by item, customer or day."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from marshmallow import Schema, fields, validate
from starlette.requests import Request
from starlette.responses import Response

from service.auth import Caller, database
from service.db import Database
from service.money import format_cents
from service.openapi import documented
from service.responses import JSONResponse
from service.timestamps import EARLIEST, LATEST, utc_midnight
from service.validation import UtcDateTime, load_query

GROUPINGS = ("item", "customer", "day")


class SalesQuery(Schema):
    group_by = fields.String(required=True, validate=validate.OneOf(GROUPINGS))
    since = UtcDateTime(load_default=None)
    until = UtcDateTime(load_default=None)
    limit = fields.Integer(load_default=100, validate=validate.Range(min=1, max=1000))


class SalesRowOut(Schema):
    key = fields.String(
        required=True, metadata={"description": "The item, the customer's email, or the UTC day."}
    )
    purchases = fields.Integer(required=True)
    quantity = fields.Integer(required=True)
    revenue = fields.String(required=True, metadata={"examples": ["1250.00"]})


class SalesReportOut(Schema):
    group_by = fields.String(required=True)
    rows = fields.List(fields.Nested(SalesRowOut), required=True)


def whole_days(since: datetime, until: datetime) -> tuple[datetime, datetime]:
    """The UTC midnights that bound the whole days in [since, until), for the rollups to answer;
    the rest of the range is read from the purchases. Both are `until` when no day is whole."""
    days_from, days_until = utc_midnight(since), utc_midnight(until)
    if since > days_from and days_from < days_until:  # (never the day after LATEST's)
        days_from += timedelta(days=1)
    if days_from >= days_until:
        return until, until
    return days_from, days_until


async def sales_report(
    db: Database, group_by: str, since: datetime, until: datetime, limit: int
) -> list[Any]:
    statement = getattr(db.sql, f"sales_by_{group_by}")
    values: dict[str, Any] = {"since": since, "until": until, "limit": limit}
    if "days_from" in statement.parameters:
        values["days_from"], values["days_until"] = whole_days(since, until)
    return await db.fetch_all(statement, values)


async def fold_ended_days(db: Database, now: datetime) -> None:
    """PostgreSQL spreads each day's rollups over shards while it is young (see service.tables);
    fold every ended day's into one row per item. (SQLite keeps one row from the start.)"""
    if db.dialect == "postgresql":
        await db.execute(db.sql.fold_ended_days, {"today": utc_midnight(now)})


_sales_query = SalesQuery()


@documented(query=SalesQuery, responses={200: SalesReportOut})
async def sales(request: Request, caller: Caller) -> Response:
    """Totals per item, customer (email) or UTC day in [since, until); by revenue, or by day ascending."""
    query = load_query(_sales_query, request)
    rows = await sales_report(
        database(request),
        query["group_by"],
        query["since"] or EARLIEST,
        query["until"] or LATEST,
        query["limit"],
    )
    return JSONResponse(
        {
            "group_by": query["group_by"],
            "rows": [
                {
                    "key": row["key"],
                    "purchases": int(row["purchases"]),
                    "quantity": int(row["quantity"]),
                    "revenue": format_cents(int(row["revenue_cents"])),
                }
                for row in rows
            ],
        }
    )
