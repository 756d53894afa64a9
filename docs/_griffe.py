"""A Griffe extension for the API reference: fnn's docstrings are Google style, with two
habits of their own that mkdocstrings would otherwise render wrongly.

- Sphinx roles (``:class:`~fnn.Foo```, ``:func:`fnn.fit```), readable in ``help()``, become
  code spans (the display name Sphinx would show).
- Parameters that travel together share one ``Args:`` line (``net, loss, params: ...``); the
  line is repeated for each name, so the parameter table lists each with its own default.
"""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|data|attr|exc|obj|py:\w+):`(~?)([^`]+)`")
SECTIONS = ("Args:", "Arguments:", "Parameters:", "Attributes:")
GROUPED = re.compile(r"^(\s*)(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)+):(\s.*)?$")


def _role(match: re.Match) -> str:
    short, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if short else target}`"


def split_grouped(text: str) -> str:
    """Repeats a grouped ``a, b: description`` item of an Args-like section once per name."""
    lines, out, i = text.splitlines(), [], 0
    section_indent = None
    while i < len(lines):
        line = lines[i]
        indent = len(line) - len(line.lstrip())
        if line.strip() in SECTIONS:
            section_indent, item_indent = indent, None
            out.append(line)
            i += 1
            continue
        if section_indent is not None and line.strip() and indent <= section_indent:
            section_indent = None
        match = GROUPED.match(line) if section_indent is not None else None
        if section_indent is not None and line.strip() and item_indent is None:
            item_indent = indent
        if match and indent == item_indent:
            body = [line]
            i += 1
            while i < len(lines) and (not lines[i].strip() or len(lines[i]) - len(lines[i].lstrip()) > indent):
                if not lines[i].strip() and (i + 1 >= len(lines) or len(lines[i + 1]) - len(lines[i + 1].lstrip()) <= indent):
                    break
                body.append(lines[i])
                i += 1
            rest = match.group(3) or ""
            for name in re.split(r"\s*,\s*", match.group(2)):
                out.append(f"{match.group(1)}{name}:{rest}")
                out.extend(body[1:])
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def rewrite(text: str) -> str:
    return split_grouped(ROLE.sub(_role, text))


class FnnDocstrings(griffe.Extension):
    """Rewrites every docstring as described in the module docstring, before it is parsed."""

    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = rewrite(obj.docstring.value)
