"""Find the final ``\\boxed{...}`` answer of a MATH-style solution.

The last box counts: solutions often box intermediate results before the final
one. Both ``\\boxed`` and ``\\fbox`` are recognised, in two forms:

- braced, ``\\boxed{\\frac{1}{2}}``: the content runs to the matching closing
  brace, so nested braces are kept whole;
- unbraced, ``\\boxed 5``: the content is the run of characters after any
  spaces, up to the next whitespace, ``$``, brace or end of text.

A box whose braces never close (a truncated response) has no answer.
"""

from __future__ import annotations

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)(?![a-zA-Z])")
_UNBRACED_CONTENT = re.compile(r"\s*(?P<content>[^\s${}]+)")


def extract_last_boxed(text: str) -> str | None:
    """Return the content of the last ``\\boxed``/``\\fbox`` in ``text``, or None.

    The content is returned as written (not normalised), without the braces.
    """
    starts = [match.end() for match in _BOX_COMMAND.finditer(text)]
    for start in reversed(starts):
        content = _box_content(text, start)
        if content is not None:
            return content
    return None


def _box_content(text: str, start: int) -> str | None:
    """The content of a box whose command ends at ``start``, or None if malformed."""
    rest = text[start:].lstrip()
    if rest.startswith("{"):
        end = matching_brace(rest, 0)
        return rest[1:end] if end is not None else None
    unbraced = _UNBRACED_CONTENT.match(text, start)
    return unbraced.group("content") if unbraced else None


def matching_brace(text: str, open_index: int) -> int | None:
    """Index of the ``}`` that closes the ``{`` at ``open_index``, or None.

    Escaped braces (``\\{`` and ``\\}``) do not count.
    """
    depth = 0
    index = open_index
    while index < len(text):
        char = text[index]
        if char == "\\":
            index += 2  # skip the escaped character, e.g. \{ or \}
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return index
        index += 1
    return None
