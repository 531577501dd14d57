"""What a notebook shows besides figures: code side by side (the lesson is often the difference between two
small pieces of code), and tables whose text wraps instead of being cut ("fo…")."""

from __future__ import annotations

import html
import inspect

import pandas as pd


class Columns:
    """Titled texts side by side: columns of HTML in a notebook, one after the other in plain text."""

    def __init__(self, texts: dict[str, str]):
        self.texts = texts

    def _repr_html_(self) -> str:
        cells = "".join(f'<td style="vertical-align:top; text-align:left"><b>{html.escape(title)}</b>'
                        f'<pre style="white-space:pre-wrap">{html.escape(text)}</pre></td>'
                        for title, text in self.texts.items())
        return f"<table><tr>{cells}</tr></table>"

    def __repr__(self) -> str:
        return "\n\n".join(f"# {title}\n{text}" for title, text in self.texts.items())


def sources(*objects, titles: list[str] | None = None) -> Columns:
    """The source code of functions or classes, side by side (titled with their names unless `titles`)."""
    titles = titles or [o.__name__ for o in objects]
    return Columns({t: inspect.getsource(o).rstrip() for t, o in zip(titles, objects)})


def wrapped(table: pd.DataFrame, precision: int = 3):
    """`table` with every text whole and wrapped, and numbers to `precision` decimals (a pandas Styler: its HTML
    never cuts a value at display.max_colwidth)."""
    return (table.style.format(precision=precision)
            .set_properties(**{"white-space": "pre-wrap", "text-align": "left", "max-width": "32em"}))
