"""Purchase capture: a customer found by email is updated, never inserted twice; batches; reads."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import orjson
from marshmallow import Schema, fields, validate
from starlette.requests import Request
from starlette.responses import Response

from service.access import checks_key_itself
from service.auth import Caller, PresentedApiKey, check_api_key, database, key_not_live
from service.customers import CustomerOut, customer_json, require_customer
from service.db import Database, is_database_unavailable
from service.errors import Problem
from service.group_commit import GroupCommit
from service.idempotency import StoredResponse, idempotency_key, request_fingerprint, run_once
from service.limits import OVERLOADED, POOL_TIMEOUT, limit_reached
from service.metrics import observe_group_fallback
from service.money import CURRENCY, Price, format_cents
from service.openapi import documented
from service.pagination import Page, PageQuery, page_of
from service.responses import JSONResponse
from service.timestamps import EARLIEST, LATEST, from_database, to_text, utc_now
from service.validation import (
    MAX_ID,
    FastLoader,
    NormalizedEmail,
    Text,
    UtcDateTime,
    WholeNumber,
    fast_load,
    load_query,
    path_id,
    read_json,
)

MAX_QUANTITY = 1_000_000
MAX_BATCH = 1000


class CustomerIn(Schema):
    email = NormalizedEmail(required=True)
    name = Text(max=200, required=True)


class PurchaseIn(Schema):
    customer = fields.Nested(CustomerIn, required=True)
    item = Text(max=200, required=True)
    quantity = WholeNumber(required=True, validate=validate.Range(min=1, max=MAX_QUANTITY))
    unit_price = Price(required=True)
    purchased_at = UtcDateTime(load_default=None)


class BatchIn(Schema):
    purchases = fields.List(
        fields.Nested(PurchaseIn), required=True, validate=validate.Length(min=1, max=MAX_BATCH)
    )


class PurchaseQuery(PageQuery):
    customer_id = fields.Integer(load_default=None, validate=validate.Range(min=1, max=MAX_ID))
    item = Text(max=200, load_default=None)
    since = UtcDateTime(load_default=None)
    until = UtcDateTime(load_default=None)


class PurchaseOut(Schema):
    id = fields.Integer(required=True)
    customer = fields.Nested(CustomerOut, required=True)
    customer_created = fields.Boolean(
        metadata={"description": "Only in the response to POST: whether this purchase created the customer."}
    )
    item = fields.String(required=True)
    quantity = fields.Integer(required=True)
    unit_price = fields.String(required=True, metadata={"examples": ["12.50"]})
    total = fields.String(required=True, metadata={"examples": ["25.00"]})
    currency = fields.String(required=True, metadata={"examples": ["USD"]})
    purchased_at = fields.DateTime(required=True)
    captured_by = fields.String(required=True, metadata={"examples": ["api_key:billing", "user:tim"]})


class BatchOut(Schema):
    created = fields.Integer(required=True)
    customers_created = fields.Integer(required=True)
    customers_updated = fields.Integer(required=True)
    ids = fields.List(fields.Integer(), required=True)


PurchasePage = page_of(PurchaseOut, "PurchasePage")
_purchase_in = PurchaseIn()
_batch_in = BatchIn()
# The fast paths for valid input (the schemas still decide, and word every error).
_purchase_loader = FastLoader(_purchase_in)
_batch_loader = FastLoader(_batch_in)
_purchase_query = PurchaseQuery()


def load_batch(body: Any) -> Any:
    """The validated batch, or a 422 with the schema's own errors (paths like purchases.3.item)."""
    return fast_load(_batch_loader, body)


def purchase_json(row: Mapping[str, Any]) -> dict[str, Any]:
    """A purchase as the API shows it; `customer_created` only when the row says (right after capture)."""
    body: dict[str, Any] = {
        "id": row["id"],
        "customer": customer_json(row, prefix="customer_"),
        "item": row["item"],
        "quantity": row["quantity"],
        "unit_price": format_cents(row["unit_price_cents"]),
        "total": format_cents(row["total_cents"]),
        "currency": CURRENCY,
        "purchased_at": from_database(row["purchased_at"]),
        "captured_by": row["captured_by"],
    }
    if "revision" in row:
        body["customer_created"] = row["revision"] == 1
    return body


def _purchase_values(purchase: Mapping[str, Any], captured_by: str | None, now: datetime) -> dict[str, Any]:
    cents = purchase["unit_price"]
    return {
        "item": purchase["item"],
        "quantity": purchase["quantity"],
        "unit_price_cents": cents,
        "total_cents": cents * purchase["quantity"],
        "purchased_at": purchase["purchased_at"] or now,
        "captured_by": captured_by,
        "now": now,
    }


def _credential(caller: Caller | PresentedApiKey) -> dict[str, str | None]:
    """How a write's statement names its writer: a known caller, or an API key to check there."""
    if isinstance(caller, Caller):
        return {"captured_by": caller.captured_by, "key_hash": None, "scope": None}
    return {"captured_by": None, "key_hash": caller.key_hash, "scope": caller.scope}


async def record_purchase(
    db: Database, purchase: Mapping[str, Any], caller: Caller | PresentedApiKey
) -> dict[str, Any]:
    """Upsert the customer by email and append the purchase, atomically; the stored row plus `revision`.

    A presented API key is checked in the same step, for being live and for its scope: when it
    fails nothing is written, and the route answers 401 or 403 (see access.checks_key_itself).
    """
    now = utc_now()
    if "record_purchase" in db.sql:
        # PostgreSQL: the key check, the upsert and the insert reach the server as one statement.
        credential = _credential(caller)
        row = await db.fetch_one(
            db.sql.record_purchase,
            {
                **_purchase_values(purchase, credential["captured_by"], now),
                **credential,
                "email": purchase["customer"]["email"],
                "name": purchase["customer"]["name"],
            },
        )
        if row is None:
            raise key_not_live()  # or 403, if the key is live but lacks the scope: access.guarded
        return dict(row)
    # SQLite: the upsert and the insert each check the key, in one hop to the connection's thread.
    steps = _sqlite_purchase_steps(db, purchase, caller, now)
    upserted_rows, inserted_rows = await db.fetch_all_atomically(steps)
    answer = _sqlite_purchase_answer(steps, upserted_rows, inserted_rows)
    if answer is None:
        raise key_not_live()
    return answer


def _sqlite_purchase_steps(
    db: Database, purchase: Mapping[str, Any], caller: Caller | PresentedApiKey, now: datetime
) -> list[tuple[Any, dict[str, Any]]]:
    """SQLite's two statements for one purchase: upsert the customer, then append the purchase."""
    credential = _credential(caller)
    customer = {"email": purchase["customer"]["email"], "name": purchase["customer"]["name"], "now": now}
    values = _purchase_values(purchase, credential["captured_by"], now)
    return [
        (db.sql.upsert_customer, {**customer, **credential}),
        (db.sql.insert_purchase, {**values, **credential, "email": customer["email"]}),
    ]


def _sqlite_purchase_answer(
    steps: list[tuple[Any, dict[str, Any]]], upserted_rows: list[Any], inserted_rows: list[Any]
) -> dict[str, Any] | None:
    """The stored purchase from what SQLite's two statements returned; None when the key was not live."""
    if not inserted_rows:
        return None
    [upserted], [inserted] = upserted_rows, inserted_rows
    sent = steps[1][1]  # the purchase's values (and the credential, which stays out of the answer)
    return {
        **{key: sent[key] for key in ("item", "quantity", "unit_price_cents", "total_cents")},
        **{f"customer_{key}": upserted[key] for key in ("id", "email", "name", "created_at", "updated_at")},
        "revision": upserted["revision"],
        "id": inserted["id"],
        "purchased_at": inserted["purchased_at"],
        "captured_by": inserted["captured_by"],
    }


Member = tuple[Mapping[str, Any], "Caller | PresentedApiKey"]


def purchase_group(db: Database) -> GroupCommit[Member, dict[str, Any]]:
    """This worker's group commit for single purchases (one per database, made when first used)."""
    group = db.group_commits.get("purchase")
    if group is None:
        group = GroupCommit(
            "purchase",
            lambda members: record_purchase_group(db, members),
            cap=db.group_commit_max,
            tracer=getattr(db, "tracer", None),
        )
        db.group_commits["purchase"] = group
    return group


async def capture_purchase(
    db: Database, purchase: Mapping[str, Any], caller: Caller | PresentedApiKey
) -> dict[str, Any]:
    """`record_purchase`, sent together with the other purchases waiting in this worker."""
    if db.group_commit_max == 1:  # group commit off: each purchase its own statement, at once
        return await record_purchase(db, purchase, caller)
    return await purchase_group(db).submit((purchase, caller))


async def record_purchase_group(db: Database, members: list[Member]) -> list[Any]:
    """Write a group of purchases (no customer twice) in one statement on PostgreSQL, one
    transaction on SQLite; each member's row, or its own error (an API key not live: 401).

    If the shared write fails (a customer locked past the lock limit, a value the database refuses),
    the members are written one at a time instead, each with its own outcome, so that one bad row
    never fails its neighbours. Not when the database is out of reach or its pool full: then every
    member gets that error, as one statement each would.
    """
    if len(members) == 1:
        return [await record_purchase(db, *members[0])]
    try:
        if "record_purchases" in db.sql:
            return await _record_group_in_one_statement(db, members)
        return await _record_group_in_one_hop(db, members)
    except Exception as exc:
        if is_database_unavailable(exc) or limit_reached(exc) in (POOL_TIMEOUT, OVERLOADED):
            raise
        observe_group_fallback("purchase")
        one_at_a_time = [record_purchase(db, purchase, caller) for purchase, caller in members]
        return list(await asyncio.gather(*one_at_a_time, return_exceptions=True))


async def _record_group_in_one_statement(db: Database, members: list[Member]) -> list[Any]:
    """PostgreSQL: the group's columns as arrays, its rows back keyed by customer email."""
    credentials = [_credential(caller) for _, caller in members]
    rows = await db.fetch_all(
        db.sql.record_purchases,
        {
            "emails": [purchase["customer"]["email"] for purchase, _ in members],
            "names": [purchase["customer"]["name"] for purchase, _ in members],
            "items": [purchase["item"] for purchase, _ in members],
            "quantities": [purchase["quantity"] for purchase, _ in members],
            "unit_prices_cents": [purchase["unit_price"] for purchase, _ in members],
            "purchased_ats": [purchase["purchased_at"] for purchase, _ in members],
            "captured_bys": [credential["captured_by"] for credential in credentials],
            "key_hashes": [credential["key_hash"] for credential in credentials],
            "scopes": [credential["scope"] for credential in credentials],
            "now": utc_now(),
        },
    )
    by_email = {row["customer_email"]: dict(row) for row in rows}
    return [by_email.get(purchase["customer"]["email"]) or key_not_live() for purchase, _ in members]


async def _record_group_in_one_hop(db: Database, members: list[Member]) -> list[Any]:
    """SQLite: every member's two statements in one transaction, in one hop to the writer's thread."""
    now = utc_now()
    steps = [_sqlite_purchase_steps(db, purchase, caller, now) for purchase, caller in members]
    results = await db.fetch_all_atomically([step for pair in steps for step in pair])
    return [
        _sqlite_purchase_answer(pair, results[2 * n], results[2 * n + 1]) or key_not_live()
        for n, pair in enumerate(steps)
    ]


async def record_batch(db: Database, purchases: list[Mapping[str, Any]], captured_by: str) -> dict[str, Any]:
    """All purchases or none: their customers upserted once each, then the purchases appended.

    An email may come more than once; its customer gets the batch's last name. Each purchase names
    its customer by email, so the statements need nothing back from each other: PostgreSQL runs the
    batch as one statement, SQLite as four in one hop to its connection's thread. The answer:
    {created, customers_created, customers_updated, ids}, ids in batch order.
    """
    names = {purchase["customer"]["email"]: purchase["customer"]["name"] for purchase in purchases}
    # Sorted: concurrent batches lock shared customers in the same order and never deadlock.
    emails = sorted(names)
    if "record_batch" in db.sql:
        return await _record_batch_in_one_statement(db, purchases, names, emails, captured_by)
    return await _record_batch_in_one_hop(db, purchases, names, emails, captured_by)


async def _record_batch_in_one_statement(
    db: Database,
    purchases: list[Mapping[str, Any]],
    names: dict[str, str],
    emails: list[str],
    captured_by: str,
) -> dict[str, Any]:
    """PostgreSQL: columns as arrays, one statement, one row back."""
    row = await db.fetch_one(
        db.sql.record_batch,
        {
            "emails": emails,
            "names": [names[email] for email in emails],
            "purchase_emails": [purchase["customer"]["email"] for purchase in purchases],
            "items": [purchase["item"] for purchase in purchases],
            "quantities": [purchase["quantity"] for purchase in purchases],
            "unit_prices_cents": [purchase["unit_price"] for purchase in purchases],
            "purchased_ats": [purchase["purchased_at"] for purchase in purchases],
            "captured_by": captured_by,
            "now": utc_now(),
        },
    )
    return {
        "created": len(row["ids"]),
        "customers_created": row["customers_created"],
        "customers_updated": row["customers_updated"],
        "ids": row["ids"],
    }


async def _record_batch_in_one_hop(
    db: Database,
    purchases: list[Mapping[str, Any]],
    names: dict[str, str],
    emails: list[str],
    captured_by: str,
) -> dict[str, Any]:
    """SQLite: rows as JSON arrays, four statements in one transaction, a row back from two."""
    now = utc_now()
    customers = [[email, names[email]] for email in emails]
    rows = [
        [
            purchase["customer"]["email"],
            purchase["item"],
            purchase["quantity"],
            purchase["unit_price"],
            None if purchase["purchased_at"] is None else to_text(purchase["purchased_at"]),
        ]
        for purchase in purchases
    ]
    customers_json = orjson.dumps(customers).decode()
    [[known], _, _, [inserted]] = await db.fetch_all_atomically(
        [
            (db.sql.count_known_customers, {"customers": customers_json}),
            (db.sql.upsert_customers, {"customers": customers_json, "now": now}),
            (
                db.sql.insert_purchases,
                {"purchases": orjson.dumps(rows).decode(), "captured_by": captured_by, "now": now},
            ),
            (db.sql.batch_inserted, {}),
        ]
    )
    count, last_id = inserted["inserted"], inserted["last_id"]
    return {
        "created": count,
        "customers_created": len(customers) - known["known"],
        "customers_updated": known["known"],
        "ids": list(range(last_id - count + 1, last_id + 1)),
    }


async def get_purchase(db: Database, purchase_id: int) -> Any | None:
    return await db.fetch_one(db.sql.get_purchase, {"id": purchase_id})


async def list_purchases(db: Database, query: Mapping[str, Any], page: Page) -> list[Any]:
    """A page of purchases, newest first, through the statement whose index fits the filters."""
    values: dict[str, Any] = {
        **page.values(),
        "since": query["since"] or EARLIEST,
        "until": query["until"] or LATEST,
    }
    customer_id, item = query.get("customer_id"), query.get("item")
    if customer_id is not None and item is not None:
        statement = db.sql.list_purchases_of_customer_and_item
        values.update(customer_id=customer_id, item=item)
    elif customer_id is not None:
        statement = db.sql.list_purchases_of_customer
        values.update(customer_id=customer_id)
    elif item is not None:
        statement = db.sql.list_purchases_of_item
        values.update(item=item)
    else:
        statement = db.sql.list_purchases
    return await db.fetch_all(statement, values)


async def _respond_once(
    request: Request,
    caller: Caller | PresentedApiKey,
    body: Any,
    work: Callable[[Caller | PresentedApiKey], Awaitable[StoredResponse]],
) -> Response:
    """Run `work(caller)` once per Idempotency-Key, or just run it when there is none.

    A presented API key goes to `work` unchecked (the write checks it) unless there is a key to
    claim: a claim is stored under the caller's name, so then the key is looked up first.
    """
    key = idempotency_key(request)
    if key is None:
        return (await work(caller)).to_response(replayed=False)
    db = database(request)
    known = await check_api_key(db, caller) if isinstance(caller, PresentedApiKey) else caller
    response, replayed = await run_once(
        db, known.captured_by, key, request_fingerprint(request, body), lambda: work(known)
    )
    return response.to_response(replayed)


@checks_key_itself
@documented(body=PurchaseIn, responses={201: PurchaseOut}, errors=[409], idempotent=True)
async def create_purchase(request: Request, caller: Caller | PresentedApiKey) -> Response:
    """Record a purchase; the customer (by email) is created or updated. Honours Idempotency-Key."""
    body = await read_json(request)
    purchase = fast_load(_purchase_loader, body)
    db = database(request)
    # With an Idempotency-Key the claim, the write and the stored answer are one transaction of
    # their own; without one the purchase is grouped with the others waiting in this worker.
    record = record_purchase if idempotency_key(request) else capture_purchase

    async def work(writer: Caller | PresentedApiKey) -> StoredResponse:
        row = await record(db, purchase, writer)
        return StoredResponse(201, orjson.dumps(purchase_json(row)), f"/purchases/{row['id']}")

    # One purchase per customer at a time in this worker: they would queue on the customer's row
    # lock anyway, and this way they do not hold pooled connections while they queue.
    async with db.writer_turn(purchase["customer"]["email"]):
        return await _respond_once(request, caller, body, work)


@documented(body=BatchIn, responses={201: BatchOut}, errors=[409], idempotent=True)
async def create_purchase_batch(request: Request, caller: Caller) -> Response:
    """Record 1 to 1000 purchases, all or nothing. Honours Idempotency-Key."""
    body = await read_json(request)
    batch = load_batch(body)
    db = database(request)

    async def work(writer: Caller | PresentedApiKey) -> StoredResponse:
        # `writer` is `caller`: this route's credential was checked before it ran.
        result = await record_batch(db, batch["purchases"], caller.captured_by)
        return StoredResponse(201, orjson.dumps(result), None)

    return await _respond_once(request, caller, body, work)


@documented(responses={200: PurchaseOut})
async def show_purchase(request: Request, caller: Caller) -> Response:
    """One purchase, with its customer as the customer is now."""
    purchase_id = path_id(request)
    row = await get_purchase(database(request), purchase_id)
    if row is None:
        raise Problem(404, f"There is no purchase {purchase_id}.")
    return JSONResponse(purchase_json(row))


@documented(query=PurchaseQuery, responses={200: PurchasePage})
async def index_purchases(request: Request, caller: Caller) -> Response:
    """Purchases newest first; filter by customer_id, item, and purchased_at in [since, until)."""
    query = load_query(_purchase_query, request)
    page = Page.from_query(query)
    rows = await list_purchases(database(request), query, page)
    return JSONResponse(page.respond(rows, purchase_json, sort_key="purchased_at"))


@documented(query=PurchaseQuery, responses={200: PurchasePage})
async def customer_purchases(request: Request, caller: Caller) -> Response:
    """One customer's purchases, newest first (same filters as /purchases)."""
    customer_id = path_id(request)
    db = database(request)
    query = {**load_query(_purchase_query, request), "customer_id": customer_id}
    page = Page.from_query(query)
    rows = await list_purchases(db, query, page)
    if not rows:
        await require_customer(db, customer_id)  # an empty page, or no such customer?
    return JSONResponse(page.respond(rows, purchase_json, sort_key="purchased_at"))
