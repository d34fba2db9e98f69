"""The config reference (docs/config-reference.md), rendered from the schema peftlab validates against.

Every key's type, allowed values, default and description come from `peftlab.validate.config_schema()`
(src/peftlab/config.schema.yaml, where they are written together, with the allowed values it leaves to
a registry filled in: a task's type from peftlab.tasks), so the page cannot drift from the schema.

- As a MkDocs hook (mkdocs.yml `hooks:`), it replaces the page's text with a fresh rendering at
  build time, and `mkdocs build --strict` fails while the committed file differs from it.
- `python docs/hooks/config_reference.py` rewrites the committed file (GitHub shows that one);
  tests/test_docs.py fails while the two differ.
"""

from __future__ import annotations

import html
import json
import logging
import sys
from pathlib import Path

PAGE = "config-reference.md"
PATH = Path(__file__).resolve().parents[1] / PAGE
SOURCE = "src/peftlab/config.schema.yaml"
HEADER = f"""# Config reference

<!-- Generated from {SOURCE} by docs/hooks/config_reference.py: do not edit by hand.
     `python docs/hooks/config_reference.py` rewrites this file; tests/test_docs.py fails while it is stale. -->

Every key a config file may hold, generated from the JSON schema that validates it
(`{SOURCE}`): its type and allowed values, its default, and what it does. A key without a
default may be left out unless it is marked **required**. An unknown key, a wrong type or a value
out of range stops the workflow when Snakemake parses it, naming the key. `<name>` stands for a
task's or a model's name, `[]` for any item of a list. [Writing a matrix](config.md) shows the keys
at work.
"""

log = logging.getLogger("mkdocs.hooks.config_reference")


def _definition(root: dict, ref: str) -> tuple[str, dict]:
    name = ref.rsplit("/", 1)[1]
    return name, (root.get("definitions") or root.get("$defs") or {})[name]


def _merge(root: dict, node: dict) -> dict:
    """`node` with its `$ref` and `allOf` parts folded in, its own words winning (its children keep their own
    `$ref`s)."""
    out = {k: v for k, v in node.items() if k not in ("$ref", "allOf")}
    parts = [_definition(root, node["$ref"])[1]] if "$ref" in node else []
    for part in parts + node.get("allOf", []):
        out = {**_merge(root, part), **out}
    return out


def _bounds(node: dict) -> list[str]:
    words = []
    for key, sign in (("minimum", "≥"), ("exclusiveMinimum", ">"), ("maximum", "≤"), ("exclusiveMaximum", "<")):
        if key in node:
            words.append(f"{sign} {node[key]}")
    if "minItems" in node or "maxItems" in node:
        low = node.get("minItems", 0)
        words.append(
            f"{low}–{node['maxItems']} items" if "maxItems" in node else f"at least {low} item{'s' * (low != 1)}"
        )
    if "minProperties" in node:
        low = node["minProperties"]
        words.append(f"at least {low} entr{'ies' if low != 1 else 'y'}")
    if "pattern" in node:
        words.append(f"matching `{node['pattern']}`")
    return words


def _type(root: dict, node: dict) -> str:
    """A node's type in words: `integer, ≥ 1`, `one of: a, b`, `string or list of string`."""
    node = _merge(root, node)
    if "oneOf" in node or "anyOf" in node:
        branches = [_type(root, b) for b in node.get("oneOf", node.get("anyOf"))]
        if all(branches):
            return " or ".join(dict.fromkeys(branches))
    kinds = node.get("type")
    kinds = [kinds] if isinstance(kinds, str) else list(kinds or [])
    if "enum" in node:
        values = ", ".join(f"`{json.dumps(v)}`" if v is None else f"`{v}`" for v in node["enum"])
        return f"one of {values}"
    if "items" in node and "array" in kinds:
        item = _type(root, node["items"])
        kinds = [f"list of ({item})" if " " in item else f"list of {item}" if k == "array" else k for k in kinds]
    if not kinds and "properties" in node:
        kinds = ["object"]
    words = " or ".join(kinds)
    return ", ".join([words, *_bounds(node)]) if words else ", ".join(_bounds(node))


def _cell(text: str) -> str:
    """Text for a Markdown table cell, on one line: pipes escaped, and `<run_id>` HTML-escaped outside code spans."""
    pieces = " ".join(str(text).split()).split("`")
    return "`".join(p if i % 2 else html.escape(p, quote=False) for i, p in enumerate(pieces)).replace("|", "\\|")


def _default(node: dict, required: bool) -> str:
    if "default" in node:
        return _cell(f"`{json.dumps(node['default'], ensure_ascii=False)}`")
    return "**required**" if required else ""


def _refs(node: dict) -> list[str]:
    """The `$ref`s of a node: its own, and its allOf's and oneOf's."""
    return [r for r in [node.get("$ref"), *(b.get("$ref") for k in ("allOf", "oneOf") for b in node.get(k, []))] if r]


class _Renderer:
    def __init__(self, root: dict):
        self.root = root
        self.home: dict[str, str] = {}  # definition name -> the key path whose rows list its keys

    def _shared(self, node: dict) -> str | None:
        """The name of the object definition `node` is (a `$ref`, directly, in allOf or in oneOf), if any."""
        for ref in _refs(node):
            name, target = _definition(self.root, ref)
            if "properties" in target or any("$ref" in b for b in target.get("oneOf", [])):
                return name
        return None

    def _children(self, node: dict) -> tuple[dict, list, str]:
        """(properties, required keys, path suffix) of the objects a node holds: its own, a map's values, a list's
        items."""
        node = _merge(self.root, node)
        if "properties" in node:
            return node["properties"], node.get("required", []), ""
        for branch in node.get("oneOf", []):
            branch = _merge(self.root, branch)
            if "properties" in branch:
                return branch["properties"], branch.get("required", []), ""
        if isinstance(node.get("additionalProperties"), dict):
            props, required, _ = self._children(node["additionalProperties"])
            return props, required, ".<name>"
        if isinstance(node.get("items"), dict):
            props, required, _ = self._children(node["items"])
            return props, required, "[]"
        return {}, [], ""

    def rows(self, path: str, node: dict, required: bool, top: bool = False) -> list[str]:
        """The table rows of `path` and of every key below it; a definition listed once already is a link to it."""
        shared, merged = self._shared(node), _merge(self.root, node)
        desc = "" if top else merged.get("description", "")
        if shared and self.home.get(shared, path) != path:
            home = self.home[shared]
            # `#/overrides/<name>`: the definition without its defaults (peftlab.schema.schema), what an override refers
            # to
            ref = _refs(node)[0]
            defaults = any("default" in p for p in _definition(self.root, ref)[1].get("properties", {}).values())
            if defaults and not ref.startswith(
                "#/overrides/"
            ):  # a whole section of its own, such as a sweep block's lr_search
                words = f"the keys of [`{home}`](#{home}), with their defaults"
            else:
                words = (
                    f"the keys of [`{home}`](#{home}), without defaults here: a key left out comes from the level above"
                )
            if merged.get("required"):
                words += f" (required here: {', '.join(merged['required'])})"
            desc = f"{desc}; {words}" if desc else words
            return [f"| `{path}` | {_cell(_type(self.root, node))} | {_default(merged, required)} | {_cell(desc)} |"]
        out = [f"| `{path}` | {_cell(_type(self.root, node))} | {_default(merged, required)} | {_cell(desc)} |"]
        for key, suffix in (("additionalProperties", ".<name>"), ("items", "[]")):
            sub = merged.get(key)
            if isinstance(sub, dict) and self._shared(sub) and "properties" not in merged:
                return out + self.rows(path + suffix, sub, False)
        props, needed, suffix = self._children(node)
        for key, sub in props.items():
            out += self.rows(f"{path}{suffix}.{key}", sub, key in needed)
        return out

    def page(self) -> str:
        root = self.root
        parts = [HEADER]
        top_required = root.get("required", [])
        for key, node in root[
            "properties"
        ].items():  # a definition's keys are listed under the top-level key made of it
            if shared := self._shared(node):
                self.home.setdefault(shared, key)
                for branch in _definition(root, f"#/definitions/{shared}")[1].get(
                    "oneOf", []
                ):  # resources: a preset or resourceKeys
                    if "$ref" in branch:
                        self.home.setdefault(_definition(root, branch["$ref"])[0], key)
        for key, node in root["properties"].items():
            desc = _cell(_merge(root, node).get("description", ""))
            parts.append(f"## {key}\n\n{desc[:1].upper() + desc[1:]}.\n" if desc else f"## {key}\n")
            parts.append(
                "| key | type | default | description |\n|---|---|---|---|\n"
                + "\n".join(self.rows(key, node, key in top_required, top=True))
                + "\n"
            )
        parts.append(
            "## Which matrix form\n\n"
            "A config holds `sweep:` (form 1) or `experiments:` (form 2, with an optional `base:`), never both; "
            f"`{'`, `'.join(top_required)}` are required in both.\n"
        )
        return "\n".join(parts)


def render() -> str:
    """The reference page's Markdown, from the schema peftlab validates configs against."""
    from peftlab.validate import config_schema

    return _Renderer(config_schema()).page()


# MkDocs hooks: the page is rendered afresh at build time, and a stale committed copy is a warning (an error under
# --strict).
def on_page_markdown(markdown: str, page, **kwargs) -> str:
    if page.file.src_uri != PAGE:
        return markdown
    fresh = render()
    if markdown != fresh:
        log.warning(f"docs/{PAGE} differs from the schema's rendering: run `python docs/hooks/config_reference.py`")
    return fresh


if __name__ == "__main__":
    PATH.write_text(render())
    print(f"wrote {PATH.relative_to(Path.cwd()) if PATH.is_relative_to(Path.cwd()) else PATH}", file=sys.stderr)
