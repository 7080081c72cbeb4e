"""Griffe extension for the API reference: reads the package's docstrings as they are written.

The docstrings are Google style with reStructuredText touches, and they stay that way (they are
also the doctests). For the rendered reference only:

* ``Example:`` starts griffe's examples section (griffe would otherwise read the singular as an
  admonition and render the doctest as nested quotes);
* a role such as ``:class:`~evojax_nets.engine.Evolution``` becomes a code span
  (``Evolution``; the full path without the ``~``);
* a paragraph ending in ``::`` before an indented literal block ends in ``:``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:\s*$", re.MULTILINE)
_ROLE = re.compile(r":(?:[a-z]+:)?[a-z]+:`(~?)([^`<]+?)(?:\s*<[^>]+>)?`")
_LITERAL = re.compile(r"(\S)::\n\n", re.MULTILINE)


def _role(match: re.Match) -> str:
    short, target = match.groups()
    target = target.strip()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def clean(text: str) -> str:
    text = _EXAMPLE.sub(r"\1Examples:", text)
    text = _ROLE.sub(_role, text)
    return _LITERAL.sub(r"\1:\n\n", text)


class ReadableDocstrings(griffe.Extension):
    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = clean(obj.docstring.value)
