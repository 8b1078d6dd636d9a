"""YAML with limits, for config text that may come from the network (`POST /admin/reload`).

PyYAML's safe loader builds no objects, but aliases let a few hundred bytes stand for billions of
nodes (every later step walks the expanded tree), and its composer recurses once per level, so
deep nesting ends in a RecursionError. `load_yaml` refuses, before anything walks the tree:
more than `MAX_BYTES` of text, more than `MAX_ALIASES` aliases, nesting deeper than `MAX_DEPTH`
(aliases followed), more than `MAX_NODES` nodes once aliases are expanded, and an alias inside
the node it names (a recursive document).
"""

from __future__ import annotations

from typing import Any, cast

import yaml
from yaml.composer import ComposerError
from yaml.error import Mark
from yaml.events import AliasEvent
from yaml.nodes import MappingNode, Node, SequenceNode

MAX_BYTES = 1024 * 1024
MAX_ALIASES = 100
MAX_DEPTH = 64
MAX_NODES = 500_000


class TooLarge(yaml.YAMLError):
    """The text is over `MAX_BYTES`."""


class LimitedLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` counting aliases and nesting as it composes the document."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._aliases = 0
        self._depth = 0

    def compose_node(self, parent: Node | None, index: int) -> Node | None:
        event = self.peek_event()  # type: ignore[no-untyped-call]
        if isinstance(event, AliasEvent):
            self._aliases += 1
            if self._aliases > MAX_ALIASES:
                raise ComposerError(None, None, f"more than {MAX_ALIASES} aliases", _mark(event))
            return super().compose_node(parent, index)  # type: ignore[no-any-return]
        self._depth += 1
        try:
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


def load_yaml(text: str) -> Any:
    """The document in `text`; raises yaml.YAMLError (TooLarge, or marked errors) on a bad one."""
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_BYTES:
        raise TooLarge(f"the config is {size} bytes, over the limit of {MAX_BYTES}")
    loader = LimitedLoader(text)
    try:
        return loader.get_single_data()
    finally:
        loader.dispose()
