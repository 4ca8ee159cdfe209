"""Strict grammars for the expression strings a .pt2 archive carries; nothing is evaluated.

``torch.export.load`` hands two kinds of strings from the archive to Python's ``eval``:
the ``expr_str`` of every symbolic size (``sympy.sympify``; torch writes them with
``sympy.srepr``, e.g. ``Add(Symbol('s0', integer=True, positive=True), Integer(1))``) and
the shape guards in ``guards_code`` (``exec``; Python such as ``L['x'].size()[0] >= 2``).
Each string here is tokenized and parsed by a small recursive-descent parser that knows
only what torch writes; anything else raises :class:`ExpressionError` saying why.

>>> check_sympy_repr("Mul(Integer(2), Symbol('s0', integer=True, positive=True))")
>>> check_sympy_repr("__import__('os').system('id')")  # doctest: +IGNORE_EXCEPTION_DETAIL
Traceback (most recent call last):
ExpressionError: name '__import__' is not one torch writes
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = ["MAX_EXPRESSION_CHARS", "ExpressionError", "check_guard", "check_sympy_repr"]

MAX_EXPRESSION_CHARS = 20_000
"""Longest expression string accepted."""

_MAX_DEPTH = 200


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


_SYMPY_FUNCTIONS = _words(
    # sympy's own classes, as srepr names them
    """Add Mul Pow Integer Rational Float Symbol Max Min Abs floor ceiling Piecewise
    ExprCondPair Equality Unequality StrictLessThan LessThan StrictGreaterThan GreaterThan
    And Or Not Eq Ne Lt Le Gt Ge"""
    # torch.utils._sympy.functions: the names torch's deserializer passes to sympify
    """ FloorDiv ModularIndexing Where PythonMod Mod CleanDiv CeilToInt FloorToInt CeilDiv
    LShift RShift PowByNatural FloatPow FloatTrueDiv IntTrueDiv
    IsNonOverlappingAndDenseIndicator TruncToFloat TruncToInt RoundToInt RoundDecimal
    ToFloat Identity"""
)
_SYMPY_CONSTANTS = _words("oo int_oo nan zoo true false True False")
_SYMPY_ASSUMPTIONS = _words(
    """integer positive negative nonnegative nonpositive real finite infinite zero nonzero
    rational irrational even odd prime composite commutative extended_real
    extended_positive extended_negative extended_nonnegative extended_nonpositive"""
)
# the prefixes of torch.utils._sympy.symbol.prefix_str, then digits
_SYMBOL_NAME = re.compile(r"(?:s|u|zf|zuf|ps|q|tmp|idx|i|x|y|z|r0_|r1_|h|indirect|view)\d+")
_FLOAT_TEXT = re.compile(r"-?(?:\d+\.?\d*(?:e[+-]?\d+)?|inf|nan)", re.IGNORECASE)

# what torch.utils._sympy.printers.PythonPrinter writes
_GUARD_FUNCTIONS = _words(
    """max min abs round int float math.floor math.ceil math.trunc math.sqrt math.isnan
    torch.sym_float torch.sym_int torch.sym_max torch.sym_min torch._sym_sqrt"""
)
_GUARD_CONSTANTS = _words("True False math.inf math.nan inf")
_GUARD_KEYWORDS = _words("and or not")
_GUARD_SOURCE_KEY = re.compile(r"'[A-Za-z_][A-Za-z0-9_]*'")

_TOKEN = re.compile(
    r"""\s*(?:
      (?P<number>\d+(?:\.\d*)?(?:[eE][+-]?\d+)?)
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
    | (?P<string>'[^'\\\n]*')
    | (?P<op>\*\*|//|==|!=|<=|>=|[-+*/%()<>\[\],=.])
    )""",
    re.VERBOSE,
)


class ExpressionError(ValueError):
    """An expression string outside the grammar; the text says what was wrong."""


@dataclass(frozen=True)
class _Token:
    kind: str
    text: str


def _tokenize(text: str) -> list[_Token]:
    if not isinstance(text, str):
        raise ExpressionError(f"expected a string; got {type(text).__name__}")
    if len(text) > MAX_EXPRESSION_CHARS:
        raise ExpressionError(
            f"expression is {len(text)} characters long; at most {MAX_EXPRESSION_CHARS}"
        )
    tokens, position = [], 0
    while position < len(text):
        if text[position:].isspace():
            break
        match = _TOKEN.match(text, position)
        if match is None or match.end() == position:
            raise ExpressionError(f"unexpected character {text[position:].lstrip()[:1]!r}")
        kind = match.lastgroup or "op"
        tokens.append(_Token(kind, match.group(kind)))
        position = match.end()
    return tokens


class _Parser:
    """Shared cursor over tokens; subclasses hold one grammar each."""

    def __init__(self, text: str) -> None:
        self.tokens = _tokenize(text)
        self.position = 0
        self.depth = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.position] if self.position < len(self.tokens) else None

    def take(self, kind: str | None = None, text: str | None = None) -> _Token:
        token = self.peek()
        if token is None:
            raise ExpressionError("expression ends too early")
        if (kind and token.kind != kind) or (text and token.text != text):
            wanted = repr(text) if text else f"a {kind}"
            raise ExpressionError(f"expected {wanted}; got {token.text!r}")
        self.position += 1
        return token

    def at(self, text: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "op" and token.text == text

    def descend(self) -> None:
        self.depth += 1
        if self.depth > _MAX_DEPTH:
            raise ExpressionError(f"expression nests deeper than {_MAX_DEPTH} levels")

    def finish(self) -> None:
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek().text!r} after the expression")


class _SympyRepr(_Parser):
    """``expr := NAME '(' [arg {',' arg}] ')' | CONSTANT | ['-'] NUMBER | '-' expr``."""

    def expression(self) -> None:
        self.descend()
        token = self.take()
        if token.kind == "op" and token.text == "-":
            self.expression()
        elif token.kind == "number" or (
            token.kind == "name" and token.text in _SYMPY_CONSTANTS and not self.at("(")
        ):
            pass
        elif token.kind == "name" and token.text in _SYMPY_FUNCTIONS:
            self.call(token.text)
        elif token.kind == "name":
            raise ExpressionError(f"name {token.text!r} is not one torch writes")
        else:
            raise ExpressionError(f"unexpected {token.text!r}")
        self.depth -= 1

    def call(self, function: str) -> None:
        self.take("op", "(")
        if function in ("Symbol", "Float"):
            text = self.take("string").text[1:-1]
            pattern = _SYMBOL_NAME if function == "Symbol" else _FLOAT_TEXT
            if not pattern.fullmatch(text):
                raise ExpressionError(f"{function}({text!r}) is not a name torch writes")
            while self.at(","):
                self.take()
                self.keyword(function)
        elif not self.at(")"):
            self.expression()
            while self.at(","):
                self.take()
                self.expression()
        self.take("op", ")")

    def keyword(self, function: str) -> None:
        name = self.take("name").text
        self.take("op", "=")
        value = self.take()
        if function == "Symbol" and name in _SYMPY_ASSUMPTIONS:
            if value.text not in ("True", "False"):
                raise ExpressionError(f"assumption {name}= must be True or False")
        elif function == "Float" and name == "precision":
            if value.kind != "number" or not value.text.isdigit():
                raise ExpressionError("Float precision= must be an integer")
        else:
            raise ExpressionError(f"keyword {name}= is not one torch writes in {function}()")


class _Guard(_Parser):
    """Python comparisons and arithmetic over input sizes (``L['x'].size()[0]``)."""

    def expression(self) -> None:
        self.descend()
        self.conjunction()
        while self.at_keyword("or"):
            self.take()
            self.conjunction()
        self.depth -= 1

    def at_keyword(self, word: str) -> bool:
        token = self.peek()
        return token is not None and token.kind == "name" and token.text == word

    def conjunction(self) -> None:
        self.negation()
        while self.at_keyword("and"):
            self.take()
            self.negation()

    def negation(self) -> None:
        if self.at_keyword("not"):
            self.take()
            self.descend()
            self.negation()
            self.depth -= 1
        else:
            self.comparison()

    def comparison(self) -> None:
        self.arithmetic()
        while any(self.at(op) for op in ("==", "!=", "<", "<=", ">", ">=")):
            self.take()
            self.arithmetic()

    def arithmetic(self) -> None:
        self.term()
        while self.at("+") or self.at("-"):
            self.take()
            self.term()

    def term(self) -> None:
        self.factor()
        while any(self.at(op) for op in ("*", "/", "//", "%")):
            self.take()
            self.factor()

    def factor(self) -> None:
        if self.at("-") or self.at("+"):
            self.take()
            self.descend()
            self.factor()
            self.depth -= 1
            return
        self.primary()
        if self.at("**"):
            self.take()
            self.descend()
            self.factor()
            self.depth -= 1

    def primary(self) -> None:
        token = self.take()
        if token.kind == "number":
            return
        if token.kind == "op" and token.text == "(":
            self.expression()
            self.take("op", ")")
        elif token.kind == "name" and token.text == "L":
            self.source()
        elif token.kind == "name" and token.text in _GUARD_FUNCTIONS and self.at("("):
            self.take()
            self.expression()
            while self.at(","):
                self.take()
                self.expression()
            self.take("op", ")")
        elif token.kind == "name" and token.text in _GUARD_CONSTANTS:
            return
        elif token.kind == "name" and token.text not in _GUARD_KEYWORDS:
            raise ExpressionError(f"name {token.text!r} is not one torch writes")
        else:
            raise ExpressionError(f"unexpected {token.text!r}")

    def source(self) -> None:
        """``L['name']`` or ``L['name'][0]``, then optionally ``.size()[i]``,
        ``.stride()[i]`` or ``.storage_offset()``."""
        self.take("op", "[")
        key = self.take()
        if key.kind == "string" and not _GUARD_SOURCE_KEY.fullmatch(key.text):
            raise ExpressionError(f"input name {key.text} is not a Python identifier")
        if key.kind != "string" and not (key.kind == "number" and key.text.isdigit()):
            raise ExpressionError(f"unexpected {key.text!r} in an input reference")
        self.take("op", "]")
        while self.at("["):
            self.take()
            if not self.take("number").text.isdigit():
                raise ExpressionError("an input reference takes integer indices")
            self.take("op", "]")
        if not self.at("."):
            return
        self.take()
        method = self.take("name").text
        if method not in ("size", "stride", "storage_offset"):
            raise ExpressionError(f"method {method!r} is not one torch writes in a guard")
        self.take("op", "(")
        self.take("op", ")")
        if method != "storage_offset":
            self.take("op", "[")
            if not self.take("number").text.isdigit():
                raise ExpressionError(f"{method}() takes an integer index")
            self.take("op", "]")


def check_sympy_repr(text: str) -> None:
    """Check a symbolic-size ``expr_str`` against the grammar of ``sympy.srepr`` output.

    Raises:
        ExpressionError: the string is outside the grammar (the message says where).

    >>> check_sympy_repr("FloorDiv(Symbol('s1', integer=True, positive=True), Integer(2))")
    >>> check_sympy_repr("Symbol('s0').__class__")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ExpressionError: unexpected '.' after the expression
    """
    parser = _SympyRepr(text)
    parser.expression()
    parser.finish()


def check_guard(text: str) -> None:
    """Check one ``guards_code`` string against the grammar of torch's shape guards.

    Raises:
        ExpressionError: the string is outside the grammar (the message says where).

    >>> check_guard("(L['x'].size()[0] + L['y'].size()[0]) % 8 == 0")
    >>> check_guard("L['x'].size()[0] == __import__('os').getpid()")  # doctest: +IGNORE_EXCEPTION_DETAIL
    Traceback (most recent call last):
    ExpressionError: name '__import__' is not one torch writes
    """
    parser = _Guard(text)
    parser.expression()
    parser.finish()
