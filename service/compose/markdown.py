"""A step body written once in Markdown becomes both parts of the email: an HTML template and a text
template, each over the shared layout (`_base/email.html`, `_base/email.txt`), rendered like the
hand-written pair would be.

The body may hold Jinja2 expressions and statements (`{{ greeting }}`, `[the guide]({{ resources.x }})`,
`{{ m.button(resources.x, "Watch it") }}`, `{% if ... %}`). They are set aside before the Markdown is
parsed and put back afterwards, so Markdown never sees (or escapes) them and a reader's value is never
read as Markdown: a name such as `[x](https://evil.example)` stays text. Raw HTML in the Markdown is
shown as text, not passed through: the body is the coach's words, the layout is the design.

markdown-it-py parses (CommonMark, plus tables and strikethrough); the text part is written here from
its syntax tree: headings in capitals, lists with "- " and "1. ", a link as "label (URL)" ("label: URL" on
a line of its own), paragraphs
wrapped at 72 characters as the hand-written text parts are.
"""
from __future__ import annotations

import functools
import re
import textwrap

from markdown_it import MarkdownIt
from markdown_it.tree import SyntaxTreeNode

_JINJA = re.compile(r"\{\{.*?\}\}|\{%.*?%\}|\{#.*?#\}", re.DOTALL)
# Letters and digits only: Markdown leaves them alone in text and in link destinations alike.
_HOLE = re.compile(r"QJINJA(\d+)Q")
WIDTH = 72

HTML_HEAD = '{% extends "_base/email.html" %}{% import "_base/macros.html" as m %}{% block content %}\n'
TEXT_HEAD = '{% extends "_base/email.txt" %}{% import "_drip/macros.txt" as m %}{% block content %}\n'
TAIL = "{% endblock %}\n"
# The text part's versions of the layout's macros, so a body that uses `m.button` renders in both parts.
TEXT_MACROS = ("{% macro button(url, label) -%}{{ label }}: {{ url }}{%- endmacro %}\n"
               "{% macro callout() -%}{{ caller() }}{%- endmacro %}\n")


@functools.lru_cache(maxsize=1)
def _parser() -> MarkdownIt:
    return MarkdownIt("commonmark", {"html": False}).enable(["table", "strikethrough"])


def templates(markdown: str) -> tuple[str, str]:
    """(HTML template source, text template source) made from one Markdown body."""
    held: list[str] = []

    def hold(match: re.Match) -> str:
        held.append(match.group(0))
        return f"QJINJA{len(held) - 1}Q"

    source = _JINJA.sub(hold, markdown.replace("\r\n", "\n"))
    tokens = _parser().parse(source)
    html = _parser().renderer.render(tokens, _parser().options, {})
    # A statement ({% if %}) or a macro call ({{ m.button(...) }}, which writes its own <p>) alone in a
    # paragraph is put back bare, not inside <p>.
    html = re.sub(r"<p>QJINJA(\d+)Q</p>", lambda m: held[int(m.group(1))] if _bare(held[int(m.group(1))])
                  else m.group(0), html)
    text = _Text().render(SyntaxTreeNode(tokens))

    def put_back(match: re.Match) -> str:
        return held[int(match.group(1))]

    return (HTML_HEAD + _HOLE.sub(put_back, html) + TAIL,
            TEXT_HEAD + _HOLE.sub(put_back, text).strip("\n") + "\n" + TAIL)


def _bare(jinja: str) -> bool:
    return not jinja.startswith("{{") or jinja[2:].lstrip().startswith("m.")


class _Text:
    """The text part from the syntax tree: blocks separated by a blank line."""

    def render(self, node: SyntaxTreeNode, indent: str = "", sep: str = "\n\n") -> str:
        blocks = [self.block(child, indent) for child in node.children]
        return sep.join(b for b in blocks if b.strip())

    def block(self, node: SyntaxTreeNode, indent: str) -> str:
        kind = node.type
        if kind == "paragraph":
            return self.wrap(self.inline(node.children[0]) if node.children else "", indent)
        if kind == "heading":
            return self.wrap(self.inline(node.children[0]).upper(), indent)
        if kind in ("bullet_list", "ordered_list"):
            start = int(node.attrs.get("start", 1) or 1) if kind == "ordered_list" else 1
            items = []
            for n, item in enumerate(node.children, start=start):
                mark = f"{n}. " if kind == "ordered_list" else "- "
                pad = indent + " " * len(mark)
                body = self.render(item, pad, "\n")  # the item's lines, indented under its mark
                items.append(indent + mark + body.removeprefix(pad))
            return "\n".join(items)
        if kind == "blockquote":
            return "\n".join(f"{indent}> {line}" if line else f"{indent}>"
                             for line in self.render(node, "").splitlines())
        if kind in ("fence", "code_block"):
            return "\n".join(f"{indent}    {line}" for line in node.content.rstrip("\n").splitlines())
        if kind == "hr":
            return indent + "-" * 20
        if kind == "table":
            rows = [[self.inline(cell.children[0]) if cell.children else "" for cell in row.children]
                    for part in node.children for row in part.children]
            return "\n".join(indent + " | ".join(row) for row in rows)
        return self.render(node, indent)

    def wrap(self, text: str, indent: str) -> str:
        lines = []
        for line in text.split("\n"):  # a hard line break stays a line break
            lines.append(textwrap.fill(line, WIDTH, initial_indent=indent, subsequent_indent=indent,
                                       break_long_words=False, break_on_hyphens=False) or indent)
        return "\n".join(lines)

    def inline(self, node: SyntaxTreeNode) -> str:
        out: list[str] = []
        for child in node.children:
            kind = child.type
            if kind == "text" or kind == "code_inline":
                out.append(child.content)
            elif kind == "softbreak":
                out.append(" ")
            elif kind == "hardbreak":
                out.append("\n")
            elif kind == "link":
                label, href = self.inline(child), str(child.attrs.get("href", ""))
                if label in (href, ""):
                    out.append(href)
                elif len(node.children) == 1:  # a link on a line of its own, as the layout's buttons read
                    out.append(f"{label}: {href}")
                else:  # in a sentence: the URL in brackets, so the words around it stay readable
                    out.append(f"{label} ({href})")
            elif kind == "image":
                out.append(str(child.attrs.get("alt") or child.content or ""))
            else:  # emphasis, strong, strikethrough: their words
                out.append(self.inline(child))
        return "".join(out)
