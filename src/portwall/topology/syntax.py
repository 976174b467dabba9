"""YAML and JSON syntax errors in words: PyYAML's messages name parser states ("found
character that cannot start any token"), which say nothing to someone who typed a tab."""

from __future__ import annotations

import json

import yaml

#: PyYAML problem -> what it usually means in a hand-written file.
_EXPLAIN = (
    ("mapping values are not allowed here",
     "a ':' where a value was expected: quote a value that contains ': ', or check the"
     " indentation of this line against the line above"),
    ("could not find expected ':'",
     "a line that is neither 'key: value' nor a '- ' list item (a missing ':' or a wrong"
     " indentation?)"),
    ("did not find expected key",
     "this line's indentation does not match any open mapping: align it with its siblings"),
    ("did not find expected '-' indicator",
     "a list item without '- ', or a line indented as if it were one"),
    ("found unexpected end of stream",
     "the file ends inside a quoted string or a [ ] / { } flow: a closing quote or bracket"
     " is missing"),
    ("did not find expected ',' or ']'", "a [ ... ] list is not closed, or lacks a ','"),
    ("did not find expected ',' or '}'", "a { ... } mapping is not closed, or lacks a ','"),
    ("found undefined alias", "a '*name' alias with no '&name' anchor before it"),
    ("expected <block end>, but found", "this line is indented more or less than its"
     " siblings, or a list item follows a mapping at the same level"),
)


def explain_yaml(text: str, e: yaml.YAMLError) -> tuple[int | None, str]:
    """(line, message) for a YAML error: the line as a person counts it, and why."""
    mark = getattr(e, "problem_mark", None)
    problem = str(getattr(e, "problem", None) or e).strip()
    line = mark.line + 1 if mark is not None else None
    col = mark.column + 1 if mark is not None else None
    lines = text.splitlines()
    tab_line = _tab_line(lines, line)
    if tab_line is not None:
        return tab_line, ("a tab character is used for indentation; YAML indents with spaces"
                          " only: replace the tab(s) on this line with spaces")
    why = next((w for p, w in _EXPLAIN if problem.startswith(p)), None)
    where = f" (column {col})" if col else ""
    if why is None:
        return line, f"not valid YAML{where}: {problem}"
    return line, f"not valid YAML{where}: {why} [parser: {problem}]"


def _tab_line(lines: list[str], near: int | None) -> int | None:
    """The line (1-based) whose indentation holds a tab: the error's own line if it has
    one, else the closest earlier one (the parser may stop a line later)."""
    def tabbed(n: int) -> bool:
        ln = lines[n - 1] if 0 < n <= len(lines) else ""
        return "\t" in ln[: len(ln) - len(ln.lstrip(" \t"))]

    if near is not None:
        for n in (near, near - 1, near + 1):
            if tabbed(n):
                return n
    return next((n for n in range(1, len(lines) + 1) if tabbed(n)), None) if near is None \
        else None


def explain_json(e: json.JSONDecodeError) -> tuple[int, str]:
    hints = {
        "Expecting property name enclosed in double quotes":
            "a key must be in double quotes, and a trailing ',' before '}' is not allowed",
        "Expecting value": "a value is missing (a trailing ',' before ']' or '}'?), or a"
                           " string is not in double quotes",
        "Expecting ',' delimiter": "a ',' is missing between two items",
    }
    why = hints.get(e.msg)
    return e.lineno, f"not valid JSON (column {e.colno}): " + (
        f"{why} [parser: {e.msg}]" if why else e.msg)
