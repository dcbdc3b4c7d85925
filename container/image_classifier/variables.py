"""An environment variable as the docs show it. Each program's environment.py (training/, serving/)
lists the variables it reads in a table of these, from which its `--help` lines and its docs table
are written, so the three never disagree."""
from __future__ import annotations

import textwrap
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Variable:
    name: str
    default: str  # as the docs show it
    meaning: str


def markdown_table(variables: tuple[Variable, ...]) -> str:
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    rows += [f"| `{v.name}` | {v.default} | {v.meaning} |" for v in variables]
    return "\n".join(rows) + "\n"


def help_text(variables: tuple[Variable, ...], plain: Callable[[str], str] = lambda text: text) -> str:
    """One entry a variable for `--help`, without the docs' markup (backquotes; `plain` drops the rest)."""
    def bare(text: str) -> str:
        return plain(text).replace("`", "")
    return "\n".join(textwrap.fill(f"{v.name} (default {bare(v.default)}): {bare(v.meaning)}", 100,
                                   initial_indent="  ", subsequent_indent="      ") for v in variables)
