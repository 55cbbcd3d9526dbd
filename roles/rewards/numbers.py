"""Plain numbers as GSM8K writes them, and their canonical form.

A number is ``[-][$]digits[.digits]`` where the digits may be grouped by commas in
threes (``1,234,567``). A ``-`` counts as a sign only when it does not follow a letter,
digit or dot, so in ``"pages 3-5"`` the last number is ``5``. A trailing period is a
sentence end, not part of the number.

The canonical form has no ``$``, no commas, no trailing zeros after the decimal point
and no decimal point for whole numbers (``"72.0"`` -> ``"72"``, ``"-$1,234.50"`` ->
``"-1234.5"``); two numbers are equal when their canonical forms are.
"""

from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

NUMBER = (
    r"(?:(?<![\w.])(?P<sign>-))?(?:\$\s*(?P<sign_after_dollar>-)?)?"
    r"(?P<digits>(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+)"
)
"""One number, with named groups ``sign``, ``sign_after_dollar`` and ``digits``."""
_BARE_NUMBER_PATTERN = re.compile(r"\s*" + NUMBER + r"\.?\s*")


def canonical_decimal(value: Decimal) -> str:
    """The canonical string of a finite decimal.

    Raises:
        InvalidOperation: the value is not finite.
    """
    if not value.is_finite():
        raise InvalidOperation(f"{value} is not finite")
    if value == value.to_integral_value():
        return str(int(value))
    return format(value.normalize(), "f")


def canonical_number(match: re.Match[str]) -> str:
    """The canonical string of a match of `NUMBER`."""
    value = Decimal(match.group("digits").replace(",", ""))
    if match.group("sign") or match.group("sign_after_dollar"):
        value = -value
    return canonical_decimal(value)


def normalize_number(text: str) -> str | None:
    """Return the canonical string of a text holding one number, or None.

    ``" $1,234.50. "`` -> ``"1234.5"``; ``"72.0"`` -> ``"72"``; ``"abc"`` -> None.
    """
    match = _BARE_NUMBER_PATTERN.fullmatch(text)
    return canonical_number(match) if match else None
