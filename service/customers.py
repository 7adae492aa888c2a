"""Customers: found by email, listed newest first, summarised in one aggregate query."""

from __future__ import annotations

from typing import Any

from marshmallow import Schema, fields
from starlette.requests import Request
from starlette.responses import Response

from service.auth import Caller, database
from service.db import Database
from service.errors import Problem
from service.money import format_cents
from service.openapi import documented
from service.pagination import Page, PageQuery, page_of
from service.responses import JSONResponse
from service.timestamps import from_database
from service.validation import NormalizedEmail, load_query, path_id


class CustomerQuery(PageQuery):
    email = NormalizedEmail(load_default=None)


class CustomerOut(Schema):
    id = fields.Integer(required=True)
    email = fields.String(required=True)
    name = fields.String(required=True)
    created_at = fields.DateTime(required=True)
    updated_at = fields.DateTime(required=True)


class TopItemOut(Schema):
    item = fields.String(required=True)
    quantity = fields.Integer(required=True)
    spent = fields.String(required=True, metadata={"examples": ["37.50"]})


class SummaryOut(Schema):
    customer_id = fields.Integer(required=True)
    purchase_count = fields.Integer(required=True)
    total_quantity = fields.Integer(required=True)
    total_spent = fields.String(required=True)
    first_purchase_at = fields.DateTime(required=True, allow_none=True)
    last_purchase_at = fields.DateTime(required=True, allow_none=True)
    top_items = fields.List(fields.Nested(TopItemOut), required=True)


CustomerPage = page_of(CustomerOut, "CustomerPage")


def customer_json(row: Any, prefix: str = "") -> dict[str, Any]:
    """A customer from a row; `prefix` reads the customer_* columns of a joined purchase row."""
    return {
        "id": row[f"{prefix}id"],
        "email": row[f"{prefix}email"],
        "name": row[f"{prefix}name"],
        "created_at": from_database(row[f"{prefix}created_at"]),
        "updated_at": from_database(row[f"{prefix}updated_at"]),
    }


async def get_customer(db: Database, customer_id: int) -> Any | None:
    return await db.fetch_one(db.sql.get_customer, {"id": customer_id})


async def require_customer(db: Database, customer_id: int) -> Any:
    row = await get_customer(db, customer_id)
    if row is None:
        raise Problem(404, f"There is no customer {customer_id}.")
    return row


async def customer_summary(db: Database, customer_id: int) -> dict[str, Any] | None:
    """Totals and top five items, from one statement; None when there is no such customer."""
    rows = await db.fetch_all(db.sql.customer_summary, {"customer_id": customer_id})
    if not rows:
        return None
    first = rows[0]
    return {
        "customer_id": first["customer_id"],
        "purchase_count": int(first["purchase_count"]),
        "total_quantity": int(first["total_quantity"]),
        "total_spent": format_cents(int(first["total_spent_cents"])),
        "first_purchase_at": from_database(first["first_purchase_at"]),
        "last_purchase_at": from_database(first["last_purchase_at"]),
        "top_items": [
            {
                "item": row["item"],
                "quantity": int(row["quantity"]),
                "spent": format_cents(int(row["spent_cents"])),
            }
            for row in rows
            if row["item"] is not None
        ],
    }


_customer_query = CustomerQuery()


@documented(query=CustomerQuery, responses={200: CustomerPage})
async def list_customers(request: Request, caller: Caller) -> Response:
    """Customers, newest first; `?email=` finds the one with that address."""
    query = load_query(_customer_query, request)
    db = database(request)
    if query["email"] is not None:
        row = await db.fetch_one(db.sql.find_customer_by_email, {"email": query["email"]})
        return JSONResponse({"items": [customer_json(row)] if row else [], "next_cursor": None})
    page = Page.from_query(query)
    rows = await db.fetch_all(db.sql.list_customers, page.values())
    return JSONResponse(page.respond(rows, customer_json))


@documented(responses={200: CustomerOut})
async def show_customer(request: Request, caller: Caller) -> Response:
    """One customer."""
    return JSONResponse(customer_json(await require_customer(database(request), path_id(request))))


@documented(responses={200: SummaryOut})
async def show_customer_summary(request: Request, caller: Caller) -> Response:
    """One customer's purchase count, totals, first and last purchase, and top five items by spend."""
    customer_id = path_id(request)
    summary = await customer_summary(database(request), customer_id)
    if summary is None:
        raise Problem(404, f"There is no customer {customer_id}.")
    return JSONResponse(summary)
