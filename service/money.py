"""Money: integer cents inside, a decimal string with two places outside."""

from __future__ import annotations

import math
import re
from decimal import Decimal
from typing import Any

from marshmallow import fields

CURRENCY = "USD"
# Prices are below 10^9 units; quantities at most 10^6: every total fits a 64-bit integer of cents.
MAX_PRICE = Decimal(10) ** 9
# A price sent as a string: the OpenAPI document's pattern, and the shape the server reads (which
# then tells a negative, too large or too precise one apart, for a clearer message).
PRICE_PATTERN = r"^[ \t\n\r]*0*[0-9]{1,9}(\.[0-9]{1,2}0*)?[ \t\n\r]*$"
_DECIMAL_TEXT = re.compile(r"[ \t\n\r]*(-?)([0-9]+)(?:\.([0-9]+))?[ \t\n\r]*")


def format_cents(cents: int) -> str:
    """1250 -> "12.50"."""
    sign = "-" if cents < 0 else ""
    whole, part = divmod(abs(int(cents)), 100)
    return f"{sign}{whole}.{part:02d}"


class Price(fields.Field[int]):
    """A price from a JSON number or string: at least 0, below 10^9, at most two decimal places."""

    default_error_messages = {  # noqa: RUF012 - marshmallow reads it as a class attribute
        "invalid": 'Not a valid price: send a number or a decimal string such as "12.50".',
        "negative": "Must not be negative.",
        "too_large": "Must be less than 1000000000.",
        "precision": "Must have at most two decimal places.",
    }

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, float, str)):
            raise self.make_error("invalid")
        if isinstance(value, float) and math.isfinite(value) and 0 <= value < MAX_PRICE:
            # A JSON number is a binary float: 0.57 may arrive as 0.5700000000000001. Within
            # floating-point error of whole cents it is those cents; 12.345 is still refused.
            float_cents = value * 100
            if abs(float_cents - round(float_cents)) < 1e-6:
                return round(float_cents)
        if isinstance(value, str):
            return self._cents_of_text(value)
        amount = Decimal(str(value))
        if not amount.is_finite():
            raise self.make_error("invalid")
        if amount < 0:
            raise self.make_error("negative")
        if amount >= MAX_PRICE:
            raise self.make_error("too_large")
        cents = amount * 100
        if cents != cents.to_integral_value():
            raise self.make_error("precision")
        return int(cents)

    def _cents_of_text(self, text: str) -> int:
        """Exactly what PRICE_PATTERN allows, read as cents; each way of missing it has its message."""
        shape = _DECIMAL_TEXT.fullmatch(text)
        if shape is None:
            raise self.make_error("invalid")
        sign, whole, fraction = shape.group(1), shape.group(2).lstrip("0"), (shape.group(3) or "").rstrip("0")
        if sign:
            raise self.make_error("negative")
        if len(whole) > 9:
            raise self.make_error("too_large")
        if len(fraction) > 2:
            raise self.make_error("precision")
        return int(whole or "0") * 100 + int(fraction.ljust(2, "0"))

    def _serialize(self, value: int | None, attr: str | None, obj: Any, **kwargs: Any) -> str | None:
        return None if value is None else format_cents(value)
