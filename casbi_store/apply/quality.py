"""Quality cuts on a star table: a small, safe expression language over its columns.

``snr > 50 and (TEFF < 5500 or LOGG >= 2)`` keeps the rows for which it is true. The grammar,
parsed with Python's ``ast`` and checked against a whitelist, never evaluated as Python:

- comparisons ``<``, ``<=``, ``>``, ``>=``, ``==``, ``!=`` (chains like ``0 < x < 5`` too)
  between column names and numbers (``-3``, ``1.5e2``);
- ``and``, ``or``, ``not`` and parentheses to combine them;
- a column whose name is no Python identifier is written in backticks: ```[Fe/H]` > -2``.

Anything else (calls, attributes, subscripts, arithmetic, strings, ``__import__('os')``) is
refused with a ``QualityExpressionError`` naming what is not allowed. A row whose compared value
is NaN fails that comparison (``!=`` included), so missing values never pass a cut.
"""

from __future__ import annotations

import ast
import operator
import re
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from casbi_store import CasbiError

COMPARISONS: dict[type, Callable] = {
    ast.Lt: operator.lt, ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge,
    ast.Eq: operator.eq, ast.NotEq: operator.ne,
}
_BACKTICK = re.compile(r"`([^`]*)`")


class QualityExpressionError(CasbiError, ValueError):
    """An expression outside the grammar (or unparseable)."""


@dataclass(frozen=True)
class QualityExpression:
    """A parsed, checked expression; ``columns`` are the column names it reads."""

    text: str
    tree: ast.Expression
    columns: tuple[str, ...]
    _aliases: tuple[tuple[str, str], ...]  # placeholder identifier -> backticked column name

    def evaluate(self, column: Callable[[str], np.ndarray], n_rows: int) -> np.ndarray:
        """Boolean mask of the rows that pass; ``column(name)`` returns a column as floats."""
        aliases = dict(self._aliases)
        values = {name: np.asarray(column(aliases.get(name, name)), dtype=np.float64)
                  for name in _names(self.tree)}
        return np.broadcast_to(_evaluate(self.tree.body, values), (n_rows,)).copy()


def parse_quality(text: str) -> QualityExpression:
    """Parse and check ``text``; raises ``QualityExpressionError`` outside the grammar."""
    aliases: dict[str, str] = {}

    def alias(match: re.Match) -> str:
        name = match.group(1)
        if not name:
            raise QualityExpressionError(f"quality expression {text!r}: empty `` column name")
        placeholder = f"_col{len(aliases)}_"
        aliases[placeholder] = name
        return placeholder

    source = _BACKTICK.sub(alias, text)
    if "`" in source:
        raise QualityExpressionError(f"quality expression {text!r}: unmatched backtick")
    try:
        tree = ast.parse(source.strip(), mode="eval")
    except SyntaxError as exc:
        raise QualityExpressionError(f"quality expression {text!r}: not parseable ({exc.msg})"
                                     ) from exc
    _check(tree.body, text, top=True)
    columns = tuple(dict.fromkeys(aliases.get(n, n) for n in _names(tree)))
    return QualityExpression(text, tree, columns, tuple(aliases.items()))


def _names(tree: ast.AST) -> list[str]:
    return [n.id for n in ast.walk(tree) if isinstance(n, ast.Name)]


def _number(node: ast.AST) -> bool:
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.UAdd | ast.USub):
        return _number(node.operand)
    return (isinstance(node, ast.Constant) and isinstance(node.value, int | float)
            and not isinstance(node.value, bool))


def _check(node: ast.AST, text: str, top: bool = False) -> None:
    """Accept boolean combinations of comparisons between column names and numbers only."""
    if isinstance(node, ast.BoolOp):
        for value in node.values:
            _check(value, text)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.Not):
        _check(node.operand, text)
    elif isinstance(node, ast.Compare):
        for op in node.ops:
            if type(op) not in COMPARISONS:
                raise QualityExpressionError(
                    f"quality expression {text!r}: operator {type(op).__name__} is not allowed "
                    "(use <, <=, >, >=, ==, !=)")
        for operand in (node.left, *node.comparators):
            if not (isinstance(operand, ast.Name) or _number(operand)):
                raise QualityExpressionError(
                    f"quality expression {text!r}: {ast.unparse(operand)!r} is not allowed "
                    "(compare column names with numbers only)")
        if not any(isinstance(o, ast.Name) for o in (node.left, *node.comparators)):
            raise QualityExpressionError(
                f"quality expression {text!r}: {ast.unparse(node)!r} compares no column")
    else:
        what = "a bare column or number" if isinstance(node, ast.Name | ast.Constant) else \
            f"{ast.unparse(node)!r}"
        raise QualityExpressionError(
            f"quality expression {text!r}: {what} is not allowed; write comparisons such as "
            "'snr > 50' joined by and/or/not")


def _operand(node: ast.AST, values: dict[str, np.ndarray]) -> np.ndarray | float:
    if isinstance(node, ast.Name):
        return values[node.id]
    return float(ast.literal_eval(node))


def _evaluate(node: ast.AST, values: dict[str, np.ndarray]) -> np.ndarray:
    if isinstance(node, ast.BoolOp):
        combine = np.logical_and if isinstance(node.op, ast.And) else np.logical_or
        result = _evaluate(node.values[0], values)
        for value in node.values[1:]:
            result = combine(result, _evaluate(value, values))
        return result
    if isinstance(node, ast.UnaryOp):
        return np.logical_not(_evaluate(node.operand, values))
    result = np.bool_(True)
    left = _operand(node.left, values)
    for op, right_node in zip(node.ops, node.comparators, strict=True):
        right = _operand(right_node, values)
        with np.errstate(invalid="ignore"):
            passed = COMPARISONS[type(op)](left, right) & np.isfinite(left) & np.isfinite(right)
        result = result & passed
        left = right
    return result
