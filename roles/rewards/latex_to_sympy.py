"""Turn a normalised LaTeX answer into text sympy's Python-syntax parser reads.

sympy's own LaTeX parser needs the antlr4 runtime, which troupe does not
install, and it calls ``eval`` on nothing we control either. This converter
covers the forms MATH answers use and refuses everything else (returns None, so
the answer is graded by string comparison only):

    \\frac{a}{b} -> ((a)/(b))        \\sqrt{a} -> sqrt(a)     \\sqrt[n]{a} -> ((a)**(1/(n)))
    a^{b}, a^b  -> a**(b)            {...}     -> (...)       \\pi -> pi, \\infty -> oo
    \\cdot, \\times -> *             \\div -> /               \\sin \\cos \\tan \\ln \\log \\exp
    letters      -> single-letter symbols ("xy" is x*y)

Implicit multiplication (``2x``, ``3\\sqrt{2}``, ``(a)(b)``) is left to the
parser's implicit-multiplication rule. ``e`` and ``i`` are plain symbols, not
Euler's number and the imaginary unit: answers rarely need them, and both sides
are read the same way. Subscripts, ``=``, inequalities,
intervals, sets, absolute values, factorials and any other command are refused.
The result always passes `symbolic_worker.is_safe_sympy_text`.
"""

from __future__ import annotations

from roles.rewards.symbolic_worker import is_safe_sympy_text

_COMMAND_TEXT = {
    "pi": " pi ",
    "infty": " oo ",
    "cdot": "*",
    "times": "*",
    "div": "/",
    "sin": " sin ",
    "cos": " cos ",
    "tan": " tan ",
    "ln": " log ",
    "log": " log ",
    "exp": " exp ",
}
_PLAIN_CHARACTERS = frozenset("0123456789.+-*/(),")


class _UnsupportedLatex(Exception):
    """Raised inside the converter for any form it does not translate."""


def latex_to_sympy_text(latex: str) -> str | None:
    """Translate a whitespace-free normalised answer, or None if unsupported.

    Args:
        latex: the output of `normalize_math_answer`.

    Returns:
        Text for ``sympy.parsing.sympy_parser.parse_expr`` with implicit
        multiplication, or None when the answer uses a form listed as refused.
    """
    if not latex.strip():
        return None
    converter = _Converter(latex)
    try:
        text = converter.expression(closing=None)
    except _UnsupportedLatex:
        return None
    return text if is_safe_sympy_text(text) else None


class _Converter:
    """A recursive-descent pass over the LaTeX text; ``position`` is the cursor."""

    def __init__(self, latex: str) -> None:
        self.latex = latex
        self.position = 0

    def expression(self, closing: str | None) -> str:
        """Convert up to ``closing`` (consumed) or the end of text (when None)."""
        pieces: list[str] = []
        while self.position < len(self.latex):
            char = self.latex[self.position]
            if char == closing:
                self.position += 1
                return "".join(pieces)
            if char == "\\":
                pieces.append(self.command())
            elif char == "{":
                self.position += 1
                pieces.append("(" + self.expression(closing="}") + ")")
            elif char == "^":
                self.position += 1
                pieces.append("**" + self.argument())
            elif char in _PLAIN_CHARACTERS or char == " ":
                pieces.append(char)
                self.position += 1
            elif char.isascii() and char.isalpha():
                pieces.append(f" {char} ")
                self.position += 1
            else:
                raise _UnsupportedLatex(char)
        if closing is not None:
            raise _UnsupportedLatex(f"missing {closing!r}")
        return "".join(pieces)

    def argument(self) -> str:
        """One macro argument: a braced group, a command or a single character."""
        if self.position >= len(self.latex):
            raise _UnsupportedLatex("missing argument")
        char = self.latex[self.position]
        if char == "{":
            self.position += 1
            return "(" + self.expression(closing="}") + ")"
        if char == "\\":
            return "(" + self.command() + ")"
        if char.isdigit() or (char.isascii() and char.isalpha()):
            self.position += 1
            return f"({char})"
        raise _UnsupportedLatex(f"argument {char!r}")

    def command(self) -> str:
        start = self.position + 1
        end = start
        while end < len(self.latex) and self.latex[end].isascii() and self.latex[end].isalpha():
            end += 1
        name = self.latex[start:end]
        self.position = end
        if name == "frac":
            numerator = self.argument()
            denominator = self.argument()
            return f"({numerator}/{denominator})"
        if name == "sqrt":
            if self.latex.startswith("[", self.position):
                self.position += 1
                index = self.expression(closing="]")
                return f"(({self.argument()})**(1/({index})))"
            return f" sqrt({self.argument()})"
        if name in _COMMAND_TEXT:
            return _COMMAND_TEXT[name]
        raise _UnsupportedLatex(f"\\{name}")
