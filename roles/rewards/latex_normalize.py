"""Normalise a MATH-style answer so equal answers become equal strings.

`normalize_math_answer` applies these steps, in order:

1. Strip surrounding whitespace and trailing periods; turn the unicode minus
   into ``-`` and ``{,}`` into ``,``.
2. Drop layout that does not change the value: spacing commands (``\\!``,
   ``\\,``, ``\\;``, ``\\:``, ``\\ ``, ``\\quad``, ``\\qquad``), ``\\displaystyle``,
   ``\\left``/``\\right`` (``\\left.``/``\\right.`` entirely), degree marks
   (``^\\circ``, ``^{\\circ}``, ``°``), percent signs (``\\%``, ``%``) and dollar
   signs (``\\$``, ``$``).
3. ``\\dfrac`` and ``\\tfrac`` become ``\\frac``.
4. Units: a ``\\text``, ``\\textrm``, ``\\textnormal``, ``\\mbox`` or ``\\mathrm``
   group at the end of the answer, after other content and optionally raised
   to a digit power, is a unit and is dropped (``5\\text{ cm}^2`` -> ``5``).
   Every other text group (also ``\\textbf``, ``\\textit``, ``\\mathbf``,
   ``\\mathit``) is unwrapped to its content (``\\text{(B)}`` -> ``(B)``).
5. Shorthand arguments get braces: ``\\frac12`` -> ``\\frac{1}{2}``,
   ``\\sqrt3`` -> ``\\sqrt{3}``.
6. All whitespace is removed, except one space between a command and a
   letter that follows it (``\\cdot x`` stays ``\\cdot x``, not ``\\cdotx``).
7. A single-letter assignment prefix is dropped: ``x=5`` -> ``5``.
8. Rational numbers get one canonical form, the ``str`` of a Python
   ``Fraction``: integers, decimals, thousands-grouped numbers, ``\\frac{p}{q}``,
   ``p/q`` and mixed numbers ``2\\frac{1}{2}`` all become ``"p/q"`` or ``"p"``,
   so ``0.5``, ``\\frac{1}{2}`` and ``1/2`` all become ``"1/2"``.
9. Other ``a/b`` answers made of two plain tokens become ``\\frac{a}{b}``
   (``\\pi/2`` -> ``\\frac{\\pi}{2}``).
"""

from __future__ import annotations

import re
from fractions import Fraction

from roles.rewards.boxed import matching_brace

_SPACING_COMMANDS = (r"\qquad", r"\quad", r"\!", r"\,", r"\;", r"\:", "\\ ")
_LEFT_RIGHT = re.compile(r"\\(?:left|right)(?:\.|(?![a-zA-Z]))")
_DEGREES = re.compile(r"\^\s*\{\s*\\circ\s*\}|\^\s*\\circ(?![a-zA-Z])|°")
_TEXT_GROUP = re.compile(
    r"\\(?P<name>text|textrm|textnormal|mbox|mathrm|textbf|textit|mathbf|mathit)\s*\{"
)
_UNIT_COMMANDS = frozenset({"text", "textrm", "textnormal", "mbox", "mathrm"})
_DIGIT_POWER = re.compile(r"\s*(?:\^\s*(?:\{\s*\d\s*\}|\d))?\s*")
_ASSIGNMENT_PREFIX = re.compile(r"[a-zA-Z]=")
_PLAIN_TOKEN = r"\\?[a-zA-Z0-9]+"
_PLAIN_QUOTIENT = re.compile(rf"(?P<numerator>{_PLAIN_TOKEN})/(?P<denominator>{_PLAIN_TOKEN})")

_COMMAND_BEFORE_LETTER = re.compile(r"(\\[a-zA-Z]+)\s+(?=[a-zA-Z])")
_SHORTHAND_COMMAND = re.compile(r"\\(?P<name>frac|sqrt)(?![a-zA-Z])")
_ROOT_INDEX = re.compile(r"\s*\[[^\]]*\]")
_COMMAND_TOKEN = re.compile(r"\\[a-zA-Z]+")

_UNSIGNED_DECIMAL = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
_DECIMAL_NUMBER = re.compile(rf"(?P<sign>-?)(?P<number>{_UNSIGNED_DECIMAL})")
_LATEX_FRACTION = re.compile(r"(?P<sign>-?)\\frac\{(?P<numerator>-?\d+)\}\{(?P<denominator>-?\d+)\}")
_SLASH_FRACTION = re.compile(r"(?P<sign>-?)(?P<numerator>\d+)/(?P<denominator>\d+)")
_MIXED_NUMBER = re.compile(
    r"(?P<sign>-?)(?P<whole>\d+)\\frac\{(?P<numerator>\d+)\}\{(?P<denominator>\d+)\}"
)


def normalize_math_answer(answer: str) -> str:
    """Return the normalised form of one answer (see the module docstring)."""
    text = answer.strip().rstrip(".").replace("\u2212", "-").replace("{,}", ",")
    for command in _SPACING_COMMANDS:
        text = text.replace(command, " ")
    text = text.replace(r"\displaystyle", "")
    text = _LEFT_RIGHT.sub("", text)
    text = _DEGREES.sub("", text)
    for sign in (r"\%", "%", r"\$", "$"):
        text = text.replace(sign, "")
    text = re.sub(r"\\[dt]frac(?![a-zA-Z])", r"\\frac", text)
    text = _strip_text_groups(text.strip())
    text = brace_shorthand_arguments(text)
    # "\cdot x" must not become the unknown command "\cdotx": keep one space there
    text = _COMMAND_BEFORE_LETTER.sub(lambda match: match[1] + "\0", text)
    text = re.sub(r"\s+", "", text).replace("\0", " ").rstrip(".")
    if _ASSIGNMENT_PREFIX.match(text) and text.count("=") == 1:
        text = text[2:]
    value = rational_value(text)
    if value is not None:
        return str(value)
    quotient = _PLAIN_QUOTIENT.fullmatch(text)
    if quotient:
        return rf"\frac{{{quotient['numerator']}}}{{{quotient['denominator']}}}"
    return text


def rational_value(text: str) -> Fraction | None:
    """The exact value of a whitespace-free rational answer, or None.

    Reads integers, decimals (``.5``, ``1,234.5``), ``\\frac{p}{q}``, ``p/q`` and
    mixed numbers ``2\\frac{1}{2}`` (= 5/2), each with an optional leading ``-``.
    """
    if match := _DECIMAL_NUMBER.fullmatch(text):
        value = Fraction(match["number"].replace(",", ""))
    elif match := _LATEX_FRACTION.fullmatch(text) or _SLASH_FRACTION.fullmatch(text):
        denominator = int(match["denominator"])
        if denominator == 0:
            return None
        value = Fraction(int(match["numerator"]), denominator)
    elif match := _MIXED_NUMBER.fullmatch(text):
        denominator = int(match["denominator"])
        if denominator == 0:
            return None
        value = int(match["whole"]) + Fraction(int(match["numerator"]), denominator)
    else:
        return None
    return -value if match["sign"] else value


def brace_shorthand_arguments(text: str) -> str:
    """Give ``\\frac`` and ``\\sqrt`` arguments braces: ``\\frac12`` -> ``\\frac{1}{2}``.

    An unbraced argument is one character or one ``\\command``, as in LaTeX;
    whitespace before an argument is skipped. Braced arguments are processed
    recursively. ``\\sqrt``'s optional ``[n]`` index is kept as written.
    """
    pieces: list[str] = []
    position = 0
    while match := _SHORTHAND_COMMAND.search(text, position):
        pieces.append(text[position : match.end()])
        position = match.end()
        if match["name"] == "sqrt":
            index_match = _ROOT_INDEX.match(text, position)
            if index_match:
                pieces.append(index_match.group().strip())
                position = index_match.end()
        for _ in range(2 if match["name"] == "frac" else 1):
            argument, position = _read_argument(text, position)
            if argument is None:
                break
            pieces.append("{" + brace_shorthand_arguments(argument) + "}")
    pieces.append(text[position:])
    return "".join(pieces)


def _read_argument(text: str, position: int) -> tuple[str | None, int]:
    """Read one macro argument at ``position``: (its content, the position after it)."""
    while position < len(text) and text[position].isspace():
        position += 1
    if position >= len(text) or text[position] == "}":
        return None, position
    if text[position] == "{":
        end = matching_brace(text, position)
        if end is None:
            return None, position
        return text[position + 1 : end], end + 1
    command = _COMMAND_TOKEN.match(text, position)
    if command:
        return command.group(), command.end()
    return text[position], position + 1


def _strip_text_groups(text: str) -> str:
    """Drop trailing unit groups, then unwrap every other text group (step 4)."""
    while True:
        groups = list(_TEXT_GROUP.finditer(text))
        if not groups:
            return text
        last = groups[-1]
        end = matching_brace(text, last.end() - 1)
        if end is None:
            return text  # unbalanced braces: leave the answer as written
        before = text[: last.start()].strip()
        is_trailing_unit = (
            last["name"] in _UNIT_COMMANDS
            and before != ""
            and _DIGIT_POWER.fullmatch(text, end + 1) is not None
        )
        if is_trailing_unit:
            text = before
            continue
        return _unwrap_text_groups(text)


def _unwrap_text_groups(text: str) -> str:
    while match := _TEXT_GROUP.search(text):
        end = matching_brace(text, match.end() - 1)
        if end is None:
            return text
        text = text[: match.start()] + text[match.end() : end] + text[end + 1 :]
    return text
