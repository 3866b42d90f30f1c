"""Print (or, with --write, refresh in README.md) the recipe reference table generated from the schema."""

from __future__ import annotations

import sys
from pathlib import Path

from slmtrain.config import reference

BEGIN, END = "<!-- recipe-reference:begin -->", "<!-- recipe-reference:end -->"


def table() -> str:
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for key, typ, default, doc in reference():
        shown = repr(default) if isinstance(default, (str, list)) else str(default).lower() \
            if isinstance(default, bool) else str(default)
        rows.append(f"| `{key}` | {typ} | `{shown}` | {doc.replace('|', '/')} |")
    return "\n".join(rows)


def main() -> int:
    text = table()
    if "--write" not in sys.argv:
        print(text)
        return 0
    readme = Path(__file__).resolve().parents[1] / "README.md"
    body = readme.read_text()
    head, rest = body.split(BEGIN, 1)
    _, tail = rest.split(END, 1)
    readme.write_text(f"{head}{BEGIN}\n{text}\n{END}{tail}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
