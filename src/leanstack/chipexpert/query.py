"""Query analysis: which tools a question names, and the question without those names.

A question such as "How do I count cells in yosys?" names the tool whose documentation holds the
answer. The tool name says *where* to look, not *what* is asked: left in the query it pulls dense
search toward overview chunks that mention the tool everywhere. So the retriever embeds the
question without it and instead gives chunks of that tool's sources a small prior.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# words in source names that name no tool
_GENERIC = frozenset({"man", "py", "help", "manual", "slides", "file", "doc", "docs"})
# other names users give a tool: alias -> tool words as they appear in source names
ALIASES = {"spice": ("ngspice",), "icarus": ("iverilog", "vvp")}


def source_tools(source: str) -> set[str]:
    """The tool words in a source name: ``man-iverilog`` -> {"iverilog"}, ``yosys-help`` ->
    {"yosys"}, ``py-amaranth`` -> {"amaranth"}."""
    return {w for w in re.split(r"[-_.\s]+", source.lower()) if w and w not in _GENERIC}


def tool_vocabulary(sources: Iterable[str]) -> set[str]:
    """Every tool word of these sources, plus the aliases of those tools."""
    tools = set().union(*(source_tools(s) for s in sources))
    return tools | {a for a, names in ALIASES.items() if tools & set(names)}


def _pattern(vocab: set[str]) -> re.Pattern[str]:
    names = "|".join(sorted((re.escape(t) for t in vocab), key=len, reverse=True))
    return re.compile(rf"\b(?:(?:in|with|using|for|of|by|from)\s+)?({names})(?:'s)?\b", re.I)


def mentioned_tools(question: str, vocab: set[str]) -> set[str]:
    """The tools (as source-name words) that ``question`` names."""
    if not vocab:
        return set()
    found = {m.group(1).lower() for m in _pattern(vocab).finditer(question)}
    return {t for w in found for t in ALIASES.get(w, (w,))}


def without_tools(question: str, vocab: set[str]) -> str:
    """``question`` with the tool names (and an "in"/"with"... before them) taken out; the
    question itself when nothing else would be left."""
    if not vocab:
        return question
    rest = " ".join(_pattern(vocab).sub(" ", question).split())
    rest = re.sub(r"\s+([?.!,])", r"\1", rest)
    return rest if re.search(r"\w", rest) else question
