"""Messages name real keys: every config key path that peftlab's messages, hints and docstrings, the README or the
docs (docs/*.md) name (`training.learning_rate`, `tasks.<name>.max_length`, `{where}.lr_search.range`) resolves in the
schema (issue 28)."""

from __future__ import annotations

import ast
import re

from conftest import ROOT
from peftlab.schema import schema

SRC = ROOT / "src" / "peftlab"
ANY = "<*>"  # an f-string's replacement field, or a placeholder such as <name>: any key or index
# sections a message names without the path above them, and where they lie
RELATIVE = {"data": ["tasks", ANY, "data"], "build": ["models", ANY, "build"], "rl": ["training", "rl"]}
SEGMENT = r"(?:[a-z_][a-z0-9_]*|<[^<>\s]*>|\{[^{}\s]*\}|\[[^\]\s]*\])"
# a section's name, not after a word and a dot (peftlab.models.X, self.training), then at least one more segment
KEY_PATH = re.compile(
    rf"(?<!\w)(?<!\w\.)(?P<path>(?P<section>[a-z_]+)(?:\.?\[[^\]\s]*\])*(?:\.{SEGMENT}(?:\[[^\]\s]*\])*)+)"
)
FILE = re.compile(r"\.(py|json|jsonl|md|png|pdf|csv|tsv|tex|yaml|log|txt)$")  # lr_search.png, build.py: files, not keys
NOT_KEYS = {"wandb.init"}  # the wandb library's function, which peftlab.observe's docstring names
# PeRL's own config format names PeRL's keys (base.dataset.dataset_name_or_path), which peftlab.perl translates
PERL = ("src/peftlab/perl.py", "## PeRL config files")  # the section of docs/config.md


def _text(node: ast.AST) -> str | None:
    """A string constant, or an f-string with ANY for each replacement field."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else ANY for v in node.values)
    return None


def strings() -> list[tuple[str, str]]:
    """(where, text) of every string in peftlab's source (messages, hints, docstrings), of the README and of the
    docs."""
    out = []
    # docs/config-reference.md is left out: it is the schema itself, rendered (its words name PeRL's base.description)
    for page in [
        ROOT / "README.md",
        *sorted(p for p in (ROOT / "docs").glob("*.md") if p.name != "config-reference.md"),
    ]:
        text = page.read_text()
        if (perl := text.find(PERL[1])) >= 0:  # PeRL's section names PeRL's keys
            end = text.find("\n#", perl + 1)
            text = text[:perl] + (text[end:] if end >= 0 else "")
        out.append((str(page.relative_to(ROOT)), text))
    assert any(
        PERL[1] in page.read_text() for page in (ROOT / "docs").glob("*.md")
    )  # the section left out is still there
    for file in sorted(f for f in SRC.rglob("*.py") if str(f.relative_to(ROOT)) != PERL[0]):
        tree = ast.parse(file.read_text())
        inner = {id(v) for n in ast.walk(tree) if isinstance(n, ast.JoinedStr) for v in n.values}
        out += [
            (f"{file.relative_to(ROOT)}:{n.lineno}", t)
            for n in ast.walk(tree)
            if id(n) not in inner and (t := _text(n)) is not None
        ]
    return out


def parts(path: str) -> list[str]:
    """`tasks.<name>.data.files[0]` -> [tasks, <*>, data, files, <*>]."""
    path = re.sub(r"<[^<>]*>|\{[^{}]*\}", ANY, path)
    return [ANY if p.startswith("[") or p == ANY else p for p in re.findall(r"\[[^\]]*\]|<\*>|[a-z_][a-z0-9_]*", path)]


def resolves(node: dict, keys: list[str]) -> bool:
    """Whether the key path `keys` exists under the schema node."""
    if "$ref" in node:
        node = schema()["definitions"][node["$ref"].rsplit("/", 1)[1]]
    if not keys:
        return True
    if any(resolves(branch, keys) for k in ("oneOf", "anyOf", "allOf") for branch in node.get(k, [])):
        return True
    head, rest = keys[0], keys[1:]
    if "items" in node and (head == ANY or node.get("type") == "array"):
        return resolves(node["items"], rest if head == ANY else keys)
    props, extra = node.get("properties", {}), node.get("additionalProperties")
    if head in props:
        return resolves(props[head], rest)
    if head == ANY and not isinstance(extra, dict) and any(resolves(p, rest) for p in props.values()):
        return True
    if isinstance(extra, dict):
        return resolves(extra, rest)
    return (
        node.get("type") == "object" and extra is None and not props
    )  # a free-form mapping: peft.options, training.extra


def named_key_paths() -> dict[str, list[str]]:
    """Every key path named in the strings: {path as written: [where]}."""
    sections = {k for k, v in schema()["properties"].items() if resolves(v, [ANY])} | set(
        RELATIVE
    )  # those that hold keys: not name
    found: dict[str, list[str]] = {}
    for where, text in strings():
        for m in KEY_PATH.finditer(text):
            if m["section"] in sections and not FILE.search(m["path"]) and m["path"] not in NOT_KEYS:
                found.setdefault(m["path"], []).append(where)
    return found


def test_every_key_path_a_message_the_readme_or_the_docs_name_is_in_the_schema():
    found = named_key_paths()
    assert {"training.learning_rate", "lr_search.validation_share", "tasks.<name>.columns"} <= set(
        found
    )  # the collector sees them
    root = schema()
    unknown = {}
    for path, where in found.items():
        keys = parts(path)
        if keys[0] in RELATIVE:
            keys = RELATIVE[keys[0]] + keys[1:]
        if not resolves(root, keys):
            unknown[path] = where[:3]
    listed = "\n".join(f"  {k}: {v}" for k, v in unknown.items())
    assert not unknown, f"key paths that are not in the schema (config.schema.yaml):\n{listed}"


def test_the_schema_lookup_finds_real_keys_only():
    root = schema()
    real = [
        "resources.runtime",
        "sweep[0].training.max_steps",
        "tasks.<name>.data.num_train",
        "peft.options.<*>",
        "lr_search.range.low",
    ]
    wrong = [
        "resources.time",
        "training.lr",
        "tasks.<name>.data.size",
        "models.<name>.build.width",
        "lr_search.range.lo",
    ]
    assert all(resolves(root, parts(p)) for p in real) and not any(resolves(root, parts(p)) for p in wrong)
