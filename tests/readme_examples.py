"""The README's runnable examples, read from its fenced code blocks.

Blocks of `sh` are split into commands (a line ending in `\\` or `|` continues it); a command's
next line `# <JSON>` is the output it documents. Shell variables set in any block
(`KEY='...'`) are definitions every command gets. Blocks of `python` are run whole; a line
`print(...)  # text` documents that `text` is printed. Only the sections the demo answers are
read: "Quick start" and "Calling it" (with their subsections).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

README = Path(__file__).resolve().parent.parent / "README.md"
SECTIONS = ("Quick start", "Calling it")  # `## ` headings, by prefix

_DEFINITION = re.compile(r"^[A-Z][A-Z0-9_]*=")
_PRINTED = re.compile(r"^\s*print\(.*\)\s+#\s*(\S.*)$")


@dataclass(frozen=True)
class Example:
    kind: Literal["sh", "python"]
    line: int  # in README.md, 1-based: where the command or block starts
    section: str  # the `##` heading and the `###` one under it, if any
    code: str
    expected_json: Any = None  # sh: the output documented below the command, parsed
    printed: tuple[str, ...] = ()  # python: texts the block documents it prints

    @property
    def id(self) -> str:
        first = self.code.strip().splitlines()[0]
        return f"L{self.line}:{first[:60]}"


@dataclass(frozen=True)
class Block:
    language: str
    line: int  # of the block's first code line
    section: str
    lines: tuple[str, ...]


def blocks(text: str) -> list[Block]:
    """The fenced blocks under the sections the demo answers."""
    found: list[Block] = []
    section = subsection = ""
    fence: tuple[str, int, list[str]] | None = None
    for number, line in enumerate(text.splitlines(), start=1):
        if fence is not None:
            if line.startswith("```"):
                language, start, body = fence
                where = f"{section} / {subsection}" if subsection else section
                if section.startswith(SECTIONS):
                    found.append(Block(language, start, where, tuple(body)))
                fence = None
            else:
                fence[2].append(line)
        elif line.startswith("```"):
            fence = (line[3:].strip(), number + 1, [])
        elif line.startswith("## "):
            section, subsection = line[3:].strip(), ""
        elif line.startswith("### "):
            subsection = line[4:].strip()
    return found


def shell_definitions(found: list[Block]) -> str:
    """Every `NAME='value'` line of the shell blocks, in order."""
    return "".join(
        f"{line}\n"
        for block in found
        if block.language == "sh"
        for line in block.lines
        if _DEFINITION.match(line)
    )


def shell_commands(block: Block) -> list[Example]:
    commands: list[Example] = []
    current: list[str] = []
    start = 0
    for offset, line in enumerate(block.lines):
        stripped = line.strip()
        if not current:
            if stripped.startswith("#") and commands and (expected := _json_after(stripped)):
                commands[-1] = Example(
                    "sh", commands[-1].line, block.section, commands[-1].code, expected[0]
                )
            if not stripped or stripped.startswith("#") or _DEFINITION.match(line):
                continue
            start = block.line + offset
        current.append(line)
        if not stripped.endswith(("\\", "|")):
            commands.append(Example("sh", start, block.section, "\n".join(current)))
            current = []
    assert not current, f"README line {start}: a command continues past its block"
    return commands


def python_example(block: Block) -> Example:
    printed = tuple(
        match.group(1).strip() for line in block.lines if (match := _PRINTED.match(line))
    )
    return Example("python", block.line, block.section, "\n".join(block.lines), printed=printed)


def _json_after(comment: str) -> tuple[Any] | None:
    """The JSON value a `# {...}` comment starts with, if it starts with one."""
    text = comment.lstrip("#").strip()
    if not text.startswith(("{", "[")):
        return None
    try:
        value, _ = json.JSONDecoder().raw_decode(text)
    except ValueError:
        return None
    return (value,)


def examples(text: str | None = None) -> tuple[str, list[Example]]:
    """The shell definitions and every runnable example, in README order."""
    found = blocks(README.read_text() if text is None else text)
    runnable: list[Example] = []
    for block in found:
        if block.language == "sh":
            runnable += shell_commands(block)
        elif block.language == "python":
            runnable.append(python_example(block))
    return shell_definitions(found), runnable
