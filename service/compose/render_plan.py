"""Render each campaign step once, then personalise by substitution.

Rendering the coaching email (Jinja2, then css-inline parsing and re-serialising ~25 KB of HTML) was
the largest cost of sending: ~0.4 ms of the ~1 ms of CPU per email. Yet in a template the reader's
values (greeting, name, address, subject, unsubscribe/preference/view links) are only ever *printed*.
So a step is rendered once with a marker in place of each value, CSS is inlined once, and every email
is then the cached pieces joined with the reader's values, escaped exactly as the full path would have
escaped them.

The output is byte-for-byte what the full path gives (tests/test_render_plan.py compares both on every
campaign with awkward values). That holds because a plan is only made when it is safe, else the step
is rendered in full each time:

1. The templates (with everything they extend, include or import) use the reader's values only as a
   bare `{{ value }}` / `{{ subscriber.attr }}` in output, or in an `is defined` test; never in a
   filter, condition, assignment, macro, call, filter or `{% set %}` block, never under an autoescape
   change, and no template uses `random`/`lipsum`. Output that can be captured as a value (`super()`,
   `self.block()`, a block or include inside a macro or `{% set %}` block, an imported module's own
   output) must not hold them either. So the value cannot change what else is rendered.
2. The stylesheet has no attribute selector (`[href^=...]`) or content-dependent pseudo-class
   (`:empty`, `:has`), so the value cannot change which styles are inlined.
3. Each marker carries a probe of the characters that HTML serialisers treat specially; where it
   lands shows how that spot escapes (plain text in the text part; HTML text or attribute value in
   the HTML part). A spot that escapes any other way (inside <style>, <script> or a comment) means
   no plan.
4. The plan filled with empty values (a reader who gave no name has some) gives the bytes of a full
   render with them: the HTML parser places blank text differently (directly in a <table> or <head>,
   a newline just after <pre>), and the probe, never blank, cannot show that.

HTML values go through Jinja2's escaping and then the HTML parser, which decodes them back to the
value itself, and the serialiser, which escapes `&`, no-break space and `<`/`>` in text or `"` in
attribute values (the HTML serialisation algorithm, as html5ever implements it). `_escape` does just that.
"""
from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass

from jinja2 import Environment, nodes

from service.compose import mime

# The reader's values in a compose context: plain names, and the attributes of `subscriber`.
PERSONAL_NAMES = ("greeting", "subject", "unsubscribe_url", "preferences_url", "view_url", "invite_url")
SUBSCRIBER_ATTRS = ("first_name", "name", "email")
_ALL = (*PERSONAL_NAMES, *(f"subscriber.{a}" for a in SUBSCRIBER_ATTRS))
_OPEN, _MID, _CLOSE = "\ue000", "\ue001", "\ue002"  # private-use characters: never in real content
# Characters HTML serialisers may escape, plus some they must not touch (a change to any of them means
# the spot does not escape the way `_escape` assumes, so no plan is made).
PROBE = "<>&\"'\xa0=`\u2028\té\U0001f600x"
_SLOT = re.compile(f"{_OPEN}(\\d+){_MID}(.*?){_CLOSE}", re.DOTALL)
_RISKY_CSS = re.compile(r"\[|:empty|:has|:blank|:contains", re.IGNORECASE)
_STYLE = re.compile(r"<style\b[^>]*>(.*?)</style>", re.IGNORECASE | re.DOTALL)
_NONDETERMINISTIC = {"random", "lipsum"}


def _escape(value: str, mode: str) -> str:
    if mode == "raw":
        return value
    value = value.replace("&", "&amp;").replace("\xa0", "&nbsp;")
    if mode == "text":
        return value.replace("<", "&lt;").replace(">", "&gt;")
    return value.replace('"', "&quot;")


_MODES = {mode: _escape(PROBE, mode) for mode in ("raw", "text", "attr")}


@dataclass(frozen=True)
class Part:
    """A rendered part as literal pieces and (value index, escaping) slots, in order."""

    pieces: tuple[str, ...]  # len(slots) + 1 literal strings
    slots: tuple[tuple[int, str], ...]

    def fill(self, values: tuple[str, ...]) -> str:
        return self.join(self.escaped(values))

    def escaped(self, values: tuple[str, ...]) -> list[str]:
        """The value of each slot, escaped as its spot asks."""
        return [_escape(values[index], mode) for index, mode in self.slots]

    def join(self, escaped: list[str]) -> str:
        if len(escaped) != len(self.slots):
            raise ValueError("one value per slot")
        out = [""] * (2 * len(escaped) + 1)  # pieces and values interleaved by slicing, not a Python loop
        out[0::2] = self.pieces
        out[1::2] = escaped
        return "".join(out)


def split(rendered: str, modes: tuple[str, ...]) -> Part | None:
    """`rendered` (made with `marked` values) as a Part, or None when a spot escapes otherwise."""
    pieces, slots, last = [], [], 0
    for match in _SLOT.finditer(rendered):
        mode = next((m for m in modes if _MODES[m] == match.group(2)), None)
        if mode is None:
            return None
        pieces.append(rendered[last:match.start()])
        slots.append((int(match.group(1)), mode))
        last = match.end()
    pieces.append(rendered[last:])
    if any(ch in piece for piece in pieces for ch in (_OPEN, _MID, _CLOSE)):
        return None  # a marker was cut up (a filter or a serialiser did something to it)
    return Part(tuple(pieces), tuple(slots))


def marked(context: Mapping) -> dict:
    """`context` with each of the reader's values replaced by its marker (probe included)."""
    out = dict(context)
    for index, key in enumerate(_ALL):
        marker = f"{_OPEN}{index}{_MID}{PROBE}{_CLOSE}"
        if key.startswith("subscriber."):
            out["subscriber"] = {**out.get("subscriber", {}), key.partition(".")[2]: marker}
        elif key in out:
            out[key] = marker
    return out


def emptied(context: Mapping) -> dict:
    """`context` with each of the reader's values empty (check 4 of the module docstring)."""
    out = dict(context)
    out["subscriber"] = {**out.get("subscriber", {}), **dict.fromkeys(SUBSCRIBER_ATTRS, "")}
    out.update({key: "" for key in PERSONAL_NAMES if key in out})
    return out


def values_of(context: Mapping) -> tuple[str, ...]:
    subscriber = context.get("subscriber", {})
    return tuple(str(subscriber.get(k.partition(".")[2], "")) if k.startswith("subscriber.") else
                 str(context.get(k, "")) for k in _ALL)


def stylesheet_is_safe(html: str) -> bool:
    return not any(_RISKY_CSS.search(css) for css in _STYLE.findall(html))


# -- is a template safe to plan? -----------------------------------------------------------------------
def prints_values_only(env: Environment, name: str) -> bool:
    """True when `name` and every template it extends, includes or imports use the reader's values only
    as bare output or in `is defined` tests (see the module docstring)."""
    seen: set[tuple[str, bool]] = set()
    todo = [(name, True)]
    while todo:
        current, printing = todo.pop()
        if (current, printing) in seen:
            continue
        seen.add((current, printing))
        source = env.loader.get_source(env, current)[0] if env.loader else None
        if source is None:
            return False
        tree = env.parse(source, current)
        # An imported template's own output is never printed: the module is a value (`m|string`).
        if not _safe(tree, None, () if printing else (nodes.Macro,)):
            return False
        for node in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)):
            if not isinstance(node.template, nodes.Const) or not isinstance(node.template.value, str):
                return False  # a template chosen at render time cannot be checked
            todo.append((node.template.value, printing and isinstance(node, (nodes.Extends, nodes.Include))))
    return True


def string_prints_values_only(env: Environment, source: str) -> bool:
    """The same check for a template given as a string (a step's subject line)."""
    tree = env.parse(source)
    if any(True for _ in tree.find_all((nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport))):
        return False
    return _safe(tree, None, ())


def _personal(node: nodes.Node) -> bool:
    if isinstance(node, nodes.Name):
        return node.name in PERSONAL_NAMES or node.name == "subscriber"
    return False


def _safe(node: nodes.Node, parent: nodes.Node | None, enclosing: tuple[type, ...]) -> bool:
    if isinstance(node, (nodes.FilterBlock, nodes.ScopedEvalContextModifier, nodes.EvalContextModifier)):
        return False  # a filter block or an autoescape change would transform printed values
    if isinstance(node, nodes.Filter) and node.name in _NONDETERMINISTIC:
        return False
    if isinstance(node, nodes.Call) and isinstance(node.node, nodes.Name) and node.node.name in _NONDETERMINISTIC:
        return False
    captured = any(issubclass(t, _CAPTURING) for t in enclosing)
    if captured and isinstance(node, (nodes.Block, nodes.Include)):
        return False  # their output (another block or file) would be a value here, not printed
    printed = isinstance(parent, nodes.Output) and not captured
    if isinstance(node, nodes.Call) and _renders_block(node.node):
        return printed and not (node.args or node.kwargs or node.dyn_args or node.dyn_kwargs)
    if isinstance(node, nodes.Name) and node.name in ("self", "super"):
        return False  # a block's output as a value (`self.b()|length`); printed calls are handled above
    if isinstance(node, nodes.Getattr) and _personal(node.node) and node.node.name == "subscriber":  # type: ignore[attr-defined]
        return printed and node.attr in SUBSCRIBER_ATTRS
    if _personal(node):
        assert isinstance(node, nodes.Name)
        if node.ctx != "load":
            return False  # assigned or a loop variable: shadows the reader's value
        if isinstance(parent, nodes.Test) and parent.name in ("defined", "undefined"):
            return True
        return printed and node.name != "subscriber"
    inner = (*enclosing, type(node))
    return all(_safe(child, node, inner) for child in _children(node))


_CAPTURING = (nodes.Macro, nodes.CallBlock, nodes.AssignBlock)  # their body's output becomes a value


def _renders_block(node: nodes.Node) -> bool:
    """`super` or `self.name`: a call that renders a block."""
    return (isinstance(node, nodes.Name) and node.name == "super") or (
        isinstance(node, nodes.Getattr) and isinstance(node.node, nodes.Name) and node.node.name == "self")


def _children(node: nodes.Node) -> Iterator[nodes.Node]:
    yield from node.iter_child_nodes()


@dataclass(frozen=True)
class Plan:
    """One step's text and HTML parts, ready to fill with a reader's values; with their MIME bodies
    encoded ahead (`mime.BodyTemplate`) when the caller made them."""

    text: Part
    html: Part
    text_body: mime.BodyTemplate | None = None  # of the text as finished (see `finished_pieces`)
    html_body: mime.BodyTemplate | None = None
    strip_values: tuple[bool, bool] = (False, False)  # the text's first/last value is at its start/end

    def render(self, context: Mapping, finish_text: Callable[[str], str]) -> tuple[str, str]:
        return self.render_bodies(context, finish_text)[:2]

    def render_bodies(self, context: Mapping, finish_text: Callable[[str], str]
                      ) -> tuple[str, str, tuple[tuple[bytes, list[bytes]], tuple[bytes, list[bytes]]] | None]:
        """(text, html, their `mime.BodyTemplate.part_pieces`, or None when this plan has no body templates or the
        values reach past an end of the text)."""
        values = values_of(context)
        text, html = self.text.escaped(values), self.html.escaped(values)
        bodies = None
        if self.text_body is not None and self.html_body is not None:
            ends = text
            if self.strip_values[0] or self.strip_values[1]:
                ends = list(text)
                if self.strip_values[0]:
                    ends[0] = ends[0].lstrip()
                if self.strip_values[1]:
                    ends[-1] = ends[-1].rstrip()
            if not ((self.strip_values[0] and not ends[0]) or (self.strip_values[1] and not ends[-1])):
                bodies = (self.text_body.part_pieces(ends), self.html_body.part_pieces(html))
        return finish_text(self.text.join(text)), self.html.join(html), bodies


def finished_pieces(part: Part) -> tuple[list[str], tuple[bool, bool]]:
    """`part`'s pieces as `text.strip() + "\n"` leaves them, and whether that strip reaches the first or
    the last value (a piece at an end that is all blank): those values are then stripped too, and a
    value left empty would let the strip go on into the next piece (`Plan.render_bodies` then gives up)."""
    pieces = list(part.pieces)
    if len(pieces) == 1:
        return [pieces[0].strip() + "\n"], (False, False)
    first, last = not pieces[0].strip(), not pieces[-1].strip()
    pieces[0] = "" if first else pieces[0].lstrip()
    pieces[-1] = ("" if last else pieces[-1].rstrip()) + "\n"
    return pieces, (first, last)
