"""The fast validation path accepts and normalises exactly what the marshmallow schema does.

`POST /purchases/batch` and `POST /purchases` validate through `FastLoader` (each distinct value
through its field's own `deserialize`, once per batch) and fall back to the schema's `load` for
anything it cannot vouch for. Here hypothesis builds batches of every shape - mostly valid rows
with a few broken ones, wrong types, missing and unknown keys, values at their limits - and both
paths must agree: the fast path vouches for a batch exactly when the schema accepts it, with the
same values of the same types; every other batch gets the schema's own errors.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, fields, post_load

from service.errors import ValidationProblem
from service.purchases import (
    MAX_BATCH,
    MAX_QUANTITY,
    _batch_in,
    _batch_loader,
    _purchase_in,
    _purchase_loader,
    load_batch,
)
from service.validation import FastLoader, load


def sometimes_broken(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Mostly `valid`, one draw in eight from `other` (values of every kind, valid or not)."""
    return st.integers(0, 7).flatmap(lambda roll: other if roll == 0 else valid)


ANYTHING_SCALAR = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=5),
    st.lists(st.integers(), max_size=2),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=2),
)
SPACES = st.sampled_from(["", " ", "\t", "\n ", "\r\n"])
EMAILS = st.builds(
    lambda pad, user, domain, tail: f"{pad}{user}@{domain}{tail}",
    SPACES,
    st.sampled_from(["tim", "Tim.Smith", "a+b", "x" * 64, "ü", "", "a b", "a@b"]),
    st.sampled_from(["example.com", "Example.COM", "b.co", "localhost", "", "-x.com", "e" * 250 + ".com"]),
    SPACES,
)
TEXTS = st.one_of(
    st.builds(
        lambda pad, word, tail: pad + word + tail, SPACES, st.sampled_from(["book", "Tim", "漢字"]), SPACES
    ),
    st.text(max_size=8),
    st.text(alphabet="ab \t\x00\x1f\x7f\ud800", max_size=4),
    st.sampled_from(["a" * 200, "a" * 201, " " + "a" * 200, "a" * 199 + "\x85"]),
)
QUANTITIES = st.one_of(
    st.integers(1, 20),
    st.sampled_from([0, -1, MAX_QUANTITY, MAX_QUANTITY + 1, 2**63, 3.0, 3.5, -0.0, True, False, "3"]),
)
PRICES = st.one_of(
    st.sampled_from(["12.50", "0", "0.5", " 7.10 ", "007.10", "1.230", "999999999.99", "1000000000", "-1"]),
    st.sampled_from(["1.234", "1e3", "", " ", ".5", "5.", "12,50", "NaN", "١٢"]),
    st.integers(-5, 10**9 + 5),
    st.floats(-1, 1e10),
    st.sampled_from([0.57, 12.345, True, None, [12]]),
)
MOMENTS = st.sampled_from(
    [
        None,
        "2026-11-29T10:00:00Z",
        "2026-11-29T10:00:00.5+02:00",
        "2026-11-29T10:00:00",
        "2026-13-01T00:00:00Z",
        "yesterday",
        1764000000,
    ]
)


VALID_EMAILS = st.sampled_from(["tim@example.com", " Ann@Example.COM\t", "a+b@b.co"])
VALID_TEXTS = st.sampled_from(["Tim", " Ann ", "漢字\n", "a" * 200])
VALID_QUANTITIES = st.one_of(st.integers(1, 5), st.sampled_from([MAX_QUANTITY, 2.0]))
VALID_PRICES = st.sampled_from(["12.50", " 007.10 ", "999999999.99", 3, 0.57, 0])
VALID_MOMENTS = st.sampled_from([None, "2026-11-29T10:00:00Z", "2026-11-29T10:00:00.5+02:00"])


@st.composite
def purchases(draw: st.DrawFn, clean: bool = False) -> Any:
    """One row of a batch: valid throughout when `clean`, else now and then broken somewhere."""

    def value(valid: st.SearchStrategy[Any], other: st.SearchStrategy[Any]) -> Any:
        return draw(valid if clean else sometimes_broken(valid, other))

    customer: Any = {"email": value(VALID_EMAILS, EMAILS), "name": value(VALID_TEXTS, TEXTS)}
    row: Any = {
        "customer": customer,
        "item": value(VALID_TEXTS, TEXTS),
        "quantity": value(VALID_QUANTITIES, QUANTITIES),
        "unit_price": value(VALID_PRICES, PRICES),
    }
    if draw(st.booleans()):
        row["purchased_at"] = value(VALID_MOMENTS, MOMENTS)
    damage = 99 if clean else draw(st.integers(0, 40))
    if damage == 0:
        del row[draw(st.sampled_from(sorted(row)))]
    elif damage == 1:
        del customer[draw(st.sampled_from(sorted(customer)))]
    elif damage == 2:
        row["discount"] = "10%"
    elif damage == 3:
        customer["phone"] = "555"
    elif damage == 4:
        row["customer"] = draw(ANYTHING_SCALAR)
    elif damage == 5:
        row = draw(ANYTHING_SCALAR)
    elif damage == 6:
        row[draw(st.sampled_from(["item", "quantity", "unit_price"]))] = draw(ANYTHING_SCALAR)
    return row


# Values that compare equal across types (1 == 1.0 == True): one batch holding several of them
# must not have one row's answer reused for another's.
LOOKALIKE_VALUES = [1, 1.0, True, 0, 0.0, -0.0, False, "1", "1.0"]


def plain_row(quantity: Any = 1, unit_price: Any = "12.50") -> dict[str, Any]:
    return {
        "customer": {"email": "tim@example.com", "name": "Tim"},
        "item": "book",
        "quantity": quantity,
        "unit_price": unit_price,
    }


LOOKALIKE_ROWS = st.builds(plain_row, st.sampled_from(LOOKALIKE_VALUES), st.sampled_from(LOOKALIKE_VALUES))

BATCHES = st.one_of(
    st.lists(LOOKALIKE_ROWS, min_size=2, max_size=6).map(lambda rows: {"purchases": rows}),
    st.lists(purchases(clean=True), min_size=1, max_size=12).map(lambda rows: {"purchases": rows}),
    st.lists(purchases(), min_size=1, max_size=12).map(lambda rows: {"purchases": rows}),
    st.lists(purchases(), min_size=0, max_size=2).map(lambda rows: {"purchases": rows, "extra": 1}),
    ANYTHING_SCALAR.map(lambda value: {"purchases": value}),
    ANYTHING_SCALAR,
    st.just({}),
)


def typed(value: Any) -> Any:
    """A value with every type spelled out: 1, 1.0 and True differ; so do naive and aware times."""
    if isinstance(value, dict):
        return {key: typed(item) for key, item in value.items()}
    if isinstance(value, list):
        return [typed(item) for item in value]
    if isinstance(value, datetime):
        return ("datetime", value.isoformat())
    return (type(value).__name__, value)


def schema_answer(body: Any) -> tuple[Any, dict[str, list[str]] | None]:
    try:
        return load(_batch_in, body), None
    except ValidationProblem as problem:
        return None, dict(problem.errors or {})


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(BATCHES)
def test_the_fast_path_agrees_with_the_schema(body: Any) -> None:
    expected, errors = schema_answer(body)
    vouched = _batch_loader.load(body)
    if errors is None:
        assert vouched is not None, "a batch the schema accepts took the slow path"
        assert typed(vouched) == typed(expected)
    else:
        assert vouched is None, f"the fast path accepted a batch the schema refuses: {errors}"
        with pytest.raises(ValidationProblem) as refused:
            load_batch(body)
        assert dict(refused.value.errors or {}) == errors


@settings(max_examples=300, deadline=None)
@given(purchases())
def test_the_fast_path_agrees_with_the_schema_on_a_single_purchase(body: Any) -> None:
    try:
        expected, refused = load(_purchase_in, body), False
    except ValidationProblem:
        expected, refused = None, True
    vouched = _purchase_loader.load(body)
    assert (vouched is None) == refused
    if not refused:
        assert typed(vouched) == typed(expected)


@pytest.mark.parametrize("field", ["quantity", "unit_price"])
def test_values_equal_across_types_are_judged_each_on_its_own(field: str) -> None:
    for first in LOOKALIKE_VALUES:
        for second in LOOKALIKE_VALUES:
            body = {"purchases": [plain_row(**{field: first}), plain_row(**{field: second})]}
            expected, errors = schema_answer(body)
            vouched = _batch_loader.load(body)
            assert (vouched is None) == (errors is not None), (first, second, errors)
            if vouched is not None:
                assert typed(vouched) == typed(expected)


def test_both_outcomes_are_generated() -> None:
    """The property above means something only if valid and invalid batches both come up often."""
    outcomes = {"valid": 0, "invalid": 0}

    # One fixed sample: drawn afresh each run, the valid share fell to 16 of 300 once in CI.
    @settings(max_examples=300, deadline=None, database=None, derandomize=True)
    @given(BATCHES)
    def tally(body: Any) -> None:
        outcomes["valid" if schema_answer(body)[1] is None else "invalid"] += 1

    tally()
    assert outcomes["valid"] > 30 and outcomes["invalid"] > 30, outcomes


def test_a_full_batch_with_repeats_normalises_like_the_schema() -> None:
    rows = [
        {
            "customer": {"email": f" Cust{n % 7}@Example.COM ", "name": f" Customer {n % 7} "},
            "item": f"item{n % 3}\t",
            "quantity": n % 5 + 1,
            "unit_price": ["12.50", 3, 0.57, "007.10"][n % 4],
            **({"purchased_at": "2026-11-29T10:00:00+02:00"} if n % 2 else {}),
        }
        for n in range(MAX_BATCH)
    ]
    vouched = _batch_loader.load({"purchases": rows})
    assert vouched is not None
    assert typed(vouched) == typed(load(_batch_in, {"purchases": rows}))
    assert vouched["purchases"][1]["customer"] == {"email": "cust1@example.com", "name": "Customer 1"}
    assert vouched["purchases"][2]["unit_price"] == 57
    too_many = {"purchases": [*rows, rows[0]]}
    assert _batch_loader.load(too_many) is None
    with pytest.raises(ValidationProblem) as refused:
        load_batch(too_many)
    assert "purchases" in (refused.value.errors or {})


def test_schemas_it_cannot_mirror_are_refused_at_construction() -> None:
    class Hooked(Schema):
        name = fields.String()

        @post_load
        def shout(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            return {"name": data["name"].upper()}

    with pytest.raises(TypeError):
        FastLoader(Hooked())
