"""Reading a JSON body and checking it against a marshmallow schema, with errors keyed by field path."""

from __future__ import annotations

import functools
import json
import re
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import orjson
from marshmallow import EXCLUDE, RAISE, Schema, ValidationError, fields, missing, validate
from starlette.datastructures import QueryParams
from starlette.requests import Request

from service.errors import Problem, ValidationProblem

JSON_TYPES = ("application/json",)
MAX_ID = 2**63 - 1  # ids are 64-bit: a larger one names nothing
USERNAME_REGEX = "[a-z0-9_]{3,32}"  # registration, the {username} path convertor, login, the OpenAPI document
USERNAME = re.compile(USERNAME_REGEX)
# Text, as the OpenAPI document states it and the server checks it (one rule, two spellings): no
# control characters but tab, newline and carriage return, at least one character that is not one
# of the four spaces trimmed at the ends. No \s in the pattern: it means different characters to
# different regex engines (and to str.strip()). Lone surrogates (not Unicode text, which a JSON
# string may still carry) are refused too; a pattern cannot say so: many engines reject the range.
TRIMMED = " \t\n\r"
TRIMMED_DOC = "spaces, tabs and line breaks at either end are removed"
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
SURROGATE = re.compile(r"[\ud800-\udfff]")
_ALLOWED = r"[^\u0000-\u0008\u000b\u000c\u000e-\u001f\u007f]"
_VISIBLE = r"[^ \t\n\r\u0000-\u001f\u007f]"
TEXT_PATTERN = f"^{_ALLOWED}*{_VISIBLE}{_ALLOWED}*$"


def _refuse_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media in JSON_TYPES or (media.startswith("application/") and media.endswith("+json"))


async def read_json(request: Request) -> Any:
    """The parsed body; 415 for another content type, 400 for an empty or malformed one."""
    if not is_json(request.headers.get("content-type", "")):
        raise Problem(415, "Send the body as Content-Type: application/json.")
    body = await request.body()
    if not body.strip():
        raise Problem(400, "The request body is empty; send a JSON object.")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        fast_error = exc
    # orjson refuses integers beyond 64 bits; they are valid JSON, and the field that holds one
    # deserves a 422 naming it, so parse those bodies again with the standard library.
    try:
        return json.loads(body.decode("utf-8"), parse_constant=_refuse_constant)
    except (ValueError, UnicodeDecodeError):
        raise Problem(400, f"The body is not valid JSON: {fast_error}.") from None


def flatten_errors(messages: Any, prefix: str = "") -> dict[str, list[str]]:
    """marshmallow's nested messages -> {"purchases.3.customer.email": ["Not a valid email address."]}."""
    if isinstance(messages, Mapping):
        flat: dict[str, list[str]] = {}
        for key, value in messages.items():
            part = "" if key == "_schema" else str(key)
            path = ".".join(p for p in (prefix, part) if p)
            for field, errors in flatten_errors(value, path).items():
                flat.setdefault(field, []).extend(errors)
        return flat
    if isinstance(messages, list) and all(isinstance(m, str) for m in messages):
        return {prefix or "body": list(messages)}
    return {prefix or "body": [str(messages)]}


def load(schema: Schema, data: Any) -> Any:
    """Validate and convert `data`, or raise a 422 problem naming every field at fault."""
    try:
        return schema.load(data)
    except ValidationError as exc:
        raise ValidationProblem(flatten_errors(exc.messages)) from None


class FastLoader:
    """`schema.load` for input that is valid, several times faster on long lists of rows.

    The schema stays the one definition of what is valid: every value still goes through its
    field's own `deserialize` (type check, conversion, validators), but each distinct value once
    per call (a batch repeats its items and prices), and without the schema machinery around it
    (error stores, hooks, per-field bookkeeping). Anything this cannot vouch for (a missing or
    unknown key, a wrong type, a value its field refuses) makes `load` return None: the caller then
    runs `schema.load`, whose errors are the answer. Only what it can mirror exactly is accepted at
    construction: no hooks, unknown keys refused, fields that are plain, Nested or List of Nested.
    """

    def __init__(self, schema: Schema) -> None:
        if any(schema._hooks.values()) or schema.unknown != RAISE or schema.many:
            raise TypeError(f"{type(schema).__name__} has hooks or options FastLoader cannot mirror")
        self.schema = schema
        self.fields = []
        for name, field in schema.load_fields.items():
            inner = None
            if isinstance(field, fields.Nested):
                inner = FastLoader(field.schema)
            elif isinstance(field, fields.List) and isinstance(field.inner, fields.Nested):
                inner = FastLoader(field.inner.schema)
            key, attribute = field.data_key or name, field.attribute or name
            self.fields.append((key, attribute, field, inner, _converter(field)))
        self.keys = frozenset(key for key, _, _, _, _ in self.fields)

    def load(self, data: Any) -> dict[str, Any] | None:
        try:
            return self._load(data, {})
        except (ValidationError, _NotVouched):
            return None

    def _load(self, data: Any, seen: dict[Any, Any]) -> dict[str, Any]:
        if type(data) is not dict or not self.keys.issuperset(data):
            raise _NotVouched
        loaded: dict[str, Any] = {}
        for key, attribute, field, inner, convert in self.fields:
            try:
                value = data[key]
            except KeyError:
                if field.required:
                    raise _NotVouched from None
                default = field.load_default
                if default is not missing:
                    loaded[attribute] = default() if callable(default) else default
                continue
            if inner is not None:
                loaded[attribute] = self._load_inner(field, inner, value, seen)
                continue
            # Fields are pure functions of their value: one call per distinct value. A string is
            # its own key; anything else is keyed with its type, so that True, 1 and 1.0 stay apart.
            memo = (field, value) if type(value) is str else (field, type(value), value)
            try:
                loaded[attribute] = seen[memo]
            except KeyError:
                loaded[attribute] = seen[memo] = convert(value, key, data)
            except TypeError:  # unhashable: a list or an object where a scalar belongs
                loaded[attribute] = field.deserialize(value)
        return loaded

    @staticmethod
    def _load_inner(field: fields.Field[Any], inner: FastLoader, value: Any, seen: dict[Any, Any]) -> Any:
        if isinstance(field, fields.Nested):
            if value is None:
                return field.deserialize(value)  # the field's own answer to null
            return inner._load(value, seen)
        if type(value) is not list:
            raise _NotVouched
        for validator in field.validators:
            validator(value)
        return [inner._load(item, seen) for item in value]


def _converter(field: fields.Field[Any]) -> Callable[[Any, str, Any], Any]:
    """What `field.deserialize` does with a value that is present: convert, then each validator.

    Without the wrapping (`deserialize` checks for a missing value and builds an `And` of the
    validators on every call): a 1,000-row batch 17.2-18.8 -> 16.7 ms. A field with hooks of its
    own, and null (the field decides what it means), take `deserialize` itself.
    """
    if field.pre_load or field.post_load:
        return lambda value, key, data: field.deserialize(value, key, data)
    convert = field._deserialize
    validators = tuple(field.validators)

    def converted(value: Any, key: str, data: Any) -> Any:
        if value is None:
            return field.deserialize(value, key, data)
        output = convert(value, key, data)
        for validator in validators:
            if validator(output) is False:  # a plain function may refuse by returning False
                raise _NotVouched
        return output

    return converted


class _NotVouched(Exception):
    """The fast path cannot tell; the schema decides."""


def fast_load(loader: FastLoader, data: Any) -> Any:
    """What `load(loader.schema, data)` returns, by the fast path when it can vouch for the data."""
    loaded = loader.load(data)
    return load(loader.schema, data) if loaded is None else loaded


async def read_valid_json(request: Request, schema: Schema) -> Any:
    return load(schema, await read_json(request))


class Text(fields.String):
    """A string of at most `max` characters with no control characters, trimmed of the spaces,
    tabs and line breaks at its ends.

    The checks read the string as sent, as the OpenAPI document's maxLength and pattern do: a
    string the document refuses is refused here, and one it allows is stored trimmed. PostgreSQL
    refuses NUL in text and both databases refuse lone surrogates; catching them here makes them a
    422 naming the field rather than a database error.
    """

    def __init__(self, *, max: int, **kwargs: Any) -> None:
        self.max = max
        kwargs.setdefault("metadata", {"pattern": TEXT_PATTERN, "description": f"Trimmed: {TRIMMED_DOC}."})
        # The validator states the limits for the document; _deserialize checks them before trimming.
        super().__init__(validate=validate.Length(min=1, max=max), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        text = super()._deserialize(value, attr, data, **kwargs)
        if len(text) > self.max:
            raise ValidationError(f"Longer than maximum length {self.max}.")
        if _CONTROL.search(text):
            raise ValidationError("Must not contain control characters.")
        if SURROGATE.search(text):
            raise ValidationError("Not valid Unicode text.")
        trimmed = text.strip(TRIMMED)
        if not trimmed:
            raise ValidationError("Must contain something besides spaces.")
        return trimmed


class NormalizedEmail(fields.Email):
    """An email address, trimmed and lower-cased before it is checked: the customer's identity."""

    MAX = 254

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("metadata", {"description": f"Trimmed ({TRIMMED_DOC}) and lower-cased."})
        super().__init__(validate=validate.Length(max=self.MAX), **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        if not isinstance(value, str):
            raise self.make_error("invalid")
        if len(value) > self.MAX:  # as sent, as the document's maxLength reads it
            raise ValidationError(f"Longer than maximum length {self.MAX}.")
        return str(super()._deserialize(value.strip(TRIMMED).lower(), attr, data, **kwargs))


class WholeNumber(fields.Integer):
    """A JSON integer (3 or 3.0): not a string, not a fraction, not true/false."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(strict=True, **kwargs)

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        # 3.0 is an integer in JSON Schema's terms, so it is one here; 3.5 and "3" are not.
        if isinstance(value, float) and value.is_integer() and abs(value) < 2**63:
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.make_error("invalid")
        return int(super()._deserialize(value, attr, data, **kwargs))


class UtcDateTime(fields.AwareDateTime):
    """An ISO 8601 timestamp that names its offset; converted to UTC."""

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> datetime:
        if not isinstance(value, str):
            raise self.make_error("invalid", input=value, obj_type=self.OBJ_TYPE)
        moment: datetime = super()._deserialize(value, attr, data, **kwargs)
        return moment.astimezone(UTC)


def load_query(schema: Schema, request: Request) -> Mapping[str, Any]:
    """Validate the query string; parameters the schema does not name are ignored."""
    return _load_query_string(schema, request.scope["query_string"])


# Lists are read again and again with the same query (`?limit=20`); the answer depends on the raw
# string alone, so it is kept (read-only) instead of parsing and validating it each time. Invalid
# queries raise, and exceptions are never cached.
@functools.lru_cache(maxsize=1024)
def _load_query_string(schema: Schema, query_string: bytes) -> Mapping[str, Any]:
    try:
        return MappingProxyType(schema.load(dict(QueryParams(query_string)), unknown=EXCLUDE))
    except ValidationError as exc:
        raise ValidationProblem(flatten_errors(exc.messages), "The query has invalid parameters.") from None


def path_id(request: Request, name: str = "id") -> int:
    """A numeric id from the path; one no row could have is simply not found."""
    value = int(request.path_params[name])
    if not 0 < value <= MAX_ID:
        raise Problem(404, "No resource at this address.")
    return value
