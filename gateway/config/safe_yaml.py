"""YAML with limits, for config text that may come from the network (`POST /admin/reload`).

PyYAML's safe loader builds no objects, but aliases let a few hundred bytes stand for billions of
nodes (every later step walks the expanded tree), and its composer recurses once per level, so
deep nesting ends in a RecursionError. `load_yaml` refuses, before anything walks the tree:
more than `MAX_BYTES` of text, more than `MAX_ALIASES` aliases, nesting deeper than `MAX_DEPTH`
(aliases followed), more than `MAX_NODES` nodes (aliases expanded), and an alias inside the node
it names (a recursive document). The events come from libyaml when PyYAML has it (its scanner is
an order of magnitude faster than PyYAML's); the tree is composed here, within the limits.
"""

from __future__ import annotations

from typing import Any, cast

import yaml
from yaml.composer import Composer, ComposerError
from yaml.constructor import SafeConstructor
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode
from yaml.parser import Parser
from yaml.reader import Reader
from yaml.resolver import Resolver
from yaml.scanner import Scanner, ScannerError

_CParser: Any
try:
    from yaml._yaml import CParser

    _CParser = CParser
except ImportError:  # pragma: no cover - PyYAML built without libyaml
    _CParser = None

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 200_000  # composing and constructing costs ~10-30 µs a node


class TooLarge(yaml.YAMLError):
    """The text is over `MAX_BYTES`."""


class _LimitedComposer(Composer):
    """PyYAML's composer, counting aliases and nesting as it composes the document."""

    _aliases = 0
    _depth = 0
    _nodes = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[attr-defined]
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases", _mark(event))
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        self._nodes += 1
        try:
            if self._nodes > MAX_NODES:
                raise ComposerError(None, None, f"more than {MAX_NODES} nodes", _mark(event))
            if self._depth > MAX_DEPTH:
                raise ComposerError(
                    None, None, f"nested deeper than {MAX_DEPTH} levels", _mark(event)
                )
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        finally:
            self._depth -= 1

    def compose_document(self) -> Node | None:
        node = super().compose_document()
        if node is not None:
            _Expansion().measure(node, 1)
        return node  # type: ignore[no-any-return]


class _LimitedScanner(Scanner):
    """The pure-Python scanner looks ahead through every open flow collection for a possible key
    (slow in the nesting): it stops at MAX_DEPTH too."""

    def fetch_flow_collection_start(self, TokenClass: Any) -> None:
        if self.flow_level >= MAX_DEPTH:
            raise ScannerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels",
                self.get_mark(),  # type: ignore[attr-defined]
            )
        super().fetch_flow_collection_start(TokenClass)  # type: ignore[no-untyped-call]

    def add_indent(self, column: int) -> bool:
        if len(self.indents) >= MAX_DEPTH and self.indent < column:
            raise ScannerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels",
                self.get_mark(),  # type: ignore[attr-defined]
            )
        return super().add_indent(column)  # type: ignore[no-untyped-call,no-any-return]


class PureLoader(Reader, _LimitedScanner, Parser, _LimitedComposer, SafeConstructor, Resolver):
    """`yaml.SafeLoader` with the limits, all in Python."""

    def __init__(self, stream: str) -> None:
        Reader.__init__(self, stream)
        Scanner.__init__(self)
        Parser.__init__(self)
        Composer.__init__(self)
        SafeConstructor.__init__(self)
        Resolver.__init__(self)


if _CParser is not None:

    class LimitedLoader(_LimitedComposer, _CParser, SafeConstructor, Resolver):  # type: ignore[misc]
        """libyaml's parser (15-20x faster at scanning than PyYAML's) under the limited
        composer: the events come from C, the tree is composed here, with the limits."""

        def __init__(self, stream: str) -> None:
            _CParser.__init__(self, stream)
            Composer.__init__(self)
            SafeConstructor.__init__(self)
            Resolver.__init__(self)

else:  # pragma: no cover - PyYAML built without libyaml
    LimitedLoader = PureLoader  # type: ignore[misc,assignment]


def _mark(event: Any) -> Mark | None:
    return cast(Mark | None, event.start_mark)


class _Expansion:
    """The size and height of the tree once aliases are expanded, memoised per node (an alias is
    the same node object as its anchor), so measuring never expands anything."""

    def __init__(self) -> None:
        self.measured: dict[int, tuple[int, int]] = {}  # id(node) → (nodes, height)
        self.open: set[int] = set()  # the nodes on the path being measured
        self.total = 0

    def measure(self, node: Node, depth: int) -> tuple[int, int]:
        known = self.measured.get(id(node))
        if known is None:
            if id(node) in self.open:
                raise ComposerError(
                    None, None, "an alias refers to a node that contains it", node.start_mark
                )
            self.open.add(id(node))
            known = self._children(node, depth)
            self.open.discard(id(node))
            self.measured[id(node)] = known
        else:
            self.total += known[0]  # a repeated (aliased) subtree counts again, expanded
        if depth - 1 + known[1] > MAX_DEPTH:
            raise ComposerError(
                None,
                None,
                f"nested deeper than {MAX_DEPTH} levels (aliases expanded)",
                node.start_mark,
            )
        if self.total > MAX_NODES:
            raise ComposerError(
                None,
                None,
                f"more than {MAX_NODES} nodes once aliases are expanded",
                node.start_mark,
            )
        return known

    def _children(self, node: Node, depth: int) -> tuple[int, int]:
        if isinstance(node, SequenceNode):
            children: list[Node] = list(node.value)
        elif isinstance(node, MappingNode):
            children = [part for pair in node.value for part in pair]
        else:
            children = []
        before = self.total
        self.total += 1
        height = 0
        for child in children:
            height = max(height, self.measure(child, depth + 1)[1])
        return self.total - before, height + 1


def load_yaml(text: str, loader_class: type[PureLoader] | None = None) -> Any:
    """The document in `text`; raises yaml.YAMLError (TooLarge, or marked errors) on a bad one."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise TooLarge(f"the config is {size} bytes, over the limit of {MAX_BYTES}")
    loader = (loader_class or LimitedLoader)(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
