"""Griffe extension: the reStructuredText bits of cachekit's docstrings, as Markdown.

cachekit's docstrings end with a ``Usage::`` literal block and name other objects with
Sphinx roles (``:class:`Cache```), which read well in ``help()`` and in the source. The
site renders Markdown: a literal block becomes a fenced Python block and a role becomes
inline code.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:class|func|meth|attr|data|mod|exc|obj):`~?([^`]+)`")


def markdown(text: str) -> str:
    """``text`` with literal blocks fenced and Sphinx roles turned into inline code."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.strip().startswith(".."):
            lead = line.rstrip()[:-2].rstrip()
            out.append((lead + ":") if lead else "")
            i += 1
            block: list[str] = []
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
                block.append(lines[i])
                i += 1
            while block and not block[-1].strip():
                block.pop()
            body = [b for b in block if b.strip() or block.index(b) > 0]
            indent = min((len(b) - len(b.lstrip()) for b in body if b.strip()), default=0)
            out += ["", "```python", *(b[indent:] for b in body), "```", ""]
            continue
        out.append(_ROLE.sub(r"`\1`", line))
        i += 1
    return "\n".join(out)


class RstToMarkdown(griffe.Extension):
    """Rewrite every docstring griffe loads (see the module docstring)."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = markdown(obj.docstring.value)
