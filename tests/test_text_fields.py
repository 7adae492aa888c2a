"""The OpenAPI document and the server agree on every text field: what one refuses, so does the other.

A generated test once found `POST /posts` taking content the document forbids: a control
character at one end (which `str.strip()` removes as whitespace) and 280 more characters were
trimmed first, then passed the 280-character check. Here hypothesis throws strings at each text
field's marshmallow field and at its schema in the served document (checked by jsonschema_rs, the
validator schemathesis uses), and both must give the same answer.
"""

from __future__ import annotations

from typing import Any

import jsonschema_rs
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from marshmallow import Schema

from service.accounts import RegisterIn
from service.app import all_routes
from service.openapi import build_spec
from service.purchases import CustomerIn, PurchaseIn
from service.social import CommentIn, PostIn

DOCUMENT = build_spec(all_routes())

# Characters where engines and str methods disagree: the ASCII controls (\x1c-\x1f are whitespace
# to str.strip()), NEL, no-break and other Unicode spaces, the byte-order mark, line separators.
AWKWARD = " \t\n\r\x00\x01\x08\x0b\x0c\x0e\x1c\x1d\x1f\x7f\x85\xa0\u1680\u2000\u2028\u202f\u3000\ufeff"
ORDINARY = "aZ0é.-_ 漢"


def texts(limit: int) -> st.SearchStrategy[str]:
    """Strings of any kind, and strings near `limit` with awkward characters at their ends."""
    no_surrogates = st.characters(exclude_categories=("Cs",))
    edge = st.text(alphabet=st.sampled_from(AWKWARD), max_size=3)
    near_limit = st.builds(
        lambda head, body, tail: head + body + tail,
        edge,
        st.text(alphabet=st.sampled_from(ORDINARY), min_size=max(0, limit - 3), max_size=limit + 1),
        edge,
    )
    return st.one_of(
        st.text(alphabet=no_surrogates, max_size=limit + 5),
        st.text(alphabet=st.sampled_from(AWKWARD + ORDINARY), max_size=12),
        near_limit,
    )


def document_allows(schema_name: str, field: str, value: Any) -> bool:
    rule = DOCUMENT["components"]["schemas"][schema_name]["properties"][field]
    return bool(jsonschema_rs.validator_for(rule).is_valid(value))


def server_allows(schema: Schema, field: str, value: Any) -> bool:
    return field not in schema.validate({field: value}, partial=True)


TEXT_FIELDS = [
    ("PostIn", PostIn(), "content", 280),
    ("CommentIn", CommentIn(), "body", 1000),
    ("CustomerIn", CustomerIn(), "name", 200),
    ("PurchaseIn", PurchaseIn(), "item", 200),
    ("RegisterIn", RegisterIn(), "password", 72),
    ("RegisterIn", RegisterIn(), "username", 32),
]


@pytest.mark.parametrize(("schema_name", "schema", "field", "limit"), TEXT_FIELDS, ids=lambda v: str(v))
@settings(max_examples=400, deadline=None)
@given(data=st.data())
def test_server_and_document_agree_on_text(
    schema_name: str, schema: Schema, field: str, limit: int, data: st.DataObject
) -> None:
    value = data.draw(texts(limit))
    if field == "password" and len(value.encode()) > 72 >= len(value):
        # Bytes past bcrypt's 72 cannot be said in JSON Schema; the description says it, the server refuses.
        assert not server_allows(schema, field, value)
        return
    assert server_allows(schema, field, value) == document_allows(schema_name, field, value), repr(value)


PRICE_CHARACTERS = "0123456789.-+e \t\n\r\x1c\x85\u0663"


@settings(max_examples=600, deadline=None)
@given(
    value=st.one_of(
        st.text(alphabet=st.sampled_from(PRICE_CHARACTERS), max_size=16),
        st.from_regex(r"\A[ ]?0{0,3}[0-9]{1,11}(\.[0-9]{0,5})?[ ]?\Z"),
    )
)
def test_server_and_document_agree_on_prices_sent_as_text(value: str) -> None:
    assert server_allows(PurchaseIn(), "unit_price", value) == document_allows(
        "PurchaseIn", "unit_price", value
    ), repr(value)


def test_the_reported_case_is_refused_by_both() -> None:
    content = "\x1c" + "a" * 280
    assert not document_allows("PostIn", "content", content)
    errors = PostIn().validate({"content": content})
    assert errors == {"content": ["Longer than maximum length 280."]}
    assert PostIn().validate({"content": "\x1ca"}) == {"content": ["Must not contain control characters."]}


def test_what_both_allow_is_stored_trimmed_of_exactly_the_documented_spaces() -> None:
    assert PostIn().load({"content": " \t\nhello\r\n "}) == {"content": "hello"}
    # Other Unicode spaces are text, kept as sent (the document does not trim them either).
    assert PostIn().load({"content": "\u3000hello\xa0"}) == {"content": "\u3000hello\xa0"}
    assert PurchaseIn().load(
        {
            "customer": {"email": " Tim@Example.COM\n", "name": " Tim "},
            "item": "book ",
            "quantity": 1,
            "unit_price": " 0012.500 ",
        }
    ) == {
        "customer": {"email": "tim@example.com", "name": "Tim"},
        "item": "book",
        "quantity": 1,
        "unit_price": 1250,
        "purchased_at": None,
    }


@pytest.mark.parametrize(("schema", "field"), [(PostIn(), "content"), (RegisterIn(), "password")])
def test_lone_surrogates_are_refused_as_the_description_says(schema: Schema, field: str) -> None:
    assert schema.validate({field: "abcdefgh\ud800"}, partial=True) == {field: ["Not valid Unicode text."]}


def test_a_username_with_a_trailing_newline_is_refused() -> None:
    # Python's $ matches before a final newline; the document's pattern (and the server) do not.
    assert not document_allows("RegisterIn", "username", "tim\n")
    assert "username" in RegisterIn().validate({"username": "tim\n"}, partial=True)
