"""Write the reference of every field this project adds to the recipes (not TRL's or transformers') into a page.

    .venv/bin/python tools/docs_fields.py docs/stages.md           # rewrite the block (make docs)
    .venv/bin/python tools/docs_fields.py docs/stages.md --check   # exit 1 when the page is out of date

The block lies between `<!-- begin fields -->` and `<!-- end fields -->`: one table per dataclass, in the order of
RECIPES, with each field's default and its help text, taken from the dataclasses themselves.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
import sys
import warnings
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("sft", "reward", "ppo", "grpo", "rloo", "best_of_n", "evaluate", "sample", "label", "chat", "iterate")
BEGIN, END = "<!-- begin fields -->", "<!-- end fields -->"


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return "required"
    if hasattr(value, "value"):  # enums
        value = value.value
    if isinstance(value, str) and value.startswith(f"{REPO}/"):
        value = value[len(f"{REPO}/"):]  # a default computed from the checkout: the same page in every checkout
    return f"`{value!r}`" if not isinstance(value, str) else f"`{value}`" if value else '`""`'


def _cell(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")


def fields_markdown(recipes: tuple[str, ...] = RECIPES) -> str:
    """One table per dataclass of ours (the class that declares the fields), with the recipes that use it."""
    from rlhf_recipes.config import _field_origins, is_own_class, load_recipe_module

    users: dict[type, list[str]] = {}
    owned: dict[type, list[dataclasses.Field]] = {}
    for recipe in recipes:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            module = load_recipe_module(REPO / "recipes" / f"{recipe}.py")
        for dataclass_type in module.DATACLASSES:
            by_name = {f.name: f for f in dataclasses.fields(dataclass_type)}
            for name, origin in _field_origins(dataclass_type).items():
                if not is_own_class(origin):
                    continue
                if recipe not in users.setdefault(origin, []):
                    users[origin].append(recipe)
                if name not in {f.name for f in owned.setdefault(origin, [])}:
                    owned[origin].append(by_name[name])
    lines = []
    for cls, cls_fields in owned.items():
        used_by = ", ".join(f"`recipes/{r}.py`" for r in users[cls])
        lines += [f"#### `{cls.__name__}`", "", f"Used by {used_by}.", "", "| field | default | what it does |",
                  "| --- | --- | --- |"]
        lines += [f"| `{f.name}` | {_cell(_default(f))} | {_cell(f.metadata.get('help', ''))} |" for f in cls_fields]
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("page", type=Path, help="the page holding the markers")
    parser.add_argument("--check", action="store_true", help="fail if the page's block is not what it would write")
    args = parser.parse_args(argv)
    text = args.page.read_text()
    pattern = re.compile(re.escape(BEGIN) + r"\n(.*?)" + re.escape(END), re.DOTALL)
    found = pattern.search(text)
    if not found:
        parser.error(f"{args.page} has no `{BEGIN}` ... `{END}` markers")
    block = fields_markdown()
    if args.check:
        if found.group(1) != block:
            print(f"{args.page}: the fields reference is out of date; run `make docs` and commit the page.",
                  file=sys.stderr)
            return 1
        return 0
    args.page.write_text(text[:found.start(1)] + block + text[found.end(1):])
    return 0


if __name__ == "__main__":
    sys.exit(main())
