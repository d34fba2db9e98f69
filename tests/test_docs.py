"""The docs hold to the code: the config reference is the schema rendered, every page is in the site's nav,
the README stays short, links into the docs and shows the commands CI runs, and the site's link check finds
broken links.

Elsewhere: tests/test_rerun.py holds docs/config.md's rerun table to peftlab.spec, tests/test_methods.py
docs/methods.md's table to the registry, tests/test_api.py runs docs/inference.md's Python block,
tests/test_messages.py checks every key path the docs name, and tests/test_workflow.py that every config file
they name exists and validates. CI builds the site with `mkdocs build --strict` and runs docs/check_links.py.
"""

from __future__ import annotations

import html
import importlib.util
import json
import re

import yaml

from conftest import ROOT
from peftlab.schema import schema

README = ROOT / "README.md"
DOCS = ROOT / "docs"


def _module(path):
    spec = importlib.util.spec_from_file_location(path.stem, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


reference = _module(DOCS / "hooks/config_reference.py")
check_links = _module(DOCS / "check_links.py")


def reference_rows(page: str) -> dict[str, tuple[str, str, str]]:
    """{key path: (type, default, description)} of the reference's tables, as a reader sees them (HTML unescaped)."""
    rows = re.finditer(r"^\| `([^`]+)` \| (.*?) \| (.*?) \| (.*) \|$", page, re.M)
    return {m[1]: tuple(html.unescape(c) for c in m.groups()[1:]) for m in rows}


def test_the_committed_config_reference_is_the_schema_rendered():
    assert (DOCS / "config-reference.md").read_text() == reference.render(), "stale: run `python docs/hooks/config_reference.py`"


def test_the_config_reference_gives_each_key_its_definition_and_its_default():
    """The type and description from `definitions:`, the default from the `properties:` further down, on one row."""
    root, rows = schema(), reference_rows(reference.render())
    checked = 0
    for section in ("peft", "training", "tracker", "outputs"):
        defaults = root["properties"][section]["properties"]
        for key, node in root["definitions"][section]["properties"].items():
            kind, default, description = rows[f"{section}.{key}"]
            assert default == f"`{json.dumps(defaults[key]['default'], ensure_ascii=False)}`", (section, key)
            assert description == " ".join(node["description"].split()), (section, key)
            for value in node.get("enum", []):
                assert f"`{value}`" in kind, (section, key, value)
            checked += 1
    for section, prefix in (("tasks", "tasks.<name>"), ("models", "models.<name>"), ("wandb", "wandb"), ("tables", "tables")):
        node = root["properties"][section]
        props = node["additionalProperties"]["properties"] if isinstance(node.get("additionalProperties"), dict) else node["properties"]
        for key, sub in props.items():
            if "default" in sub:
                assert rows[f"{prefix}.{key}"][1] == f"`{json.dumps(sub['default'], ensure_ascii=False)}`", (section, key)
                checked += 1
    assert checked > 60
    assert set(root["properties"]) <= {path.split(".")[0] for path in rows}  # every top-level key has its table
    assert rows["training.rl.num_generations"][1] == "`8`" and rows["tasks.<name>.type"][1] == "**required**"


def test_every_docs_page_is_in_the_sites_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())

    def pages(nav):
        for item in nav:
            for value in item.values() if isinstance(item, dict) else [item]:
                yield from pages(value) if isinstance(value, list) else [value]

    assert sorted(pages(config["nav"])) == sorted(p.name for p in DOCS.glob("*.md"))
    assert config["hooks"] == ["docs/hooks/config_reference.py"]


def github_slug(heading: str) -> str:
    """The anchor GitHub (and MkDocs' toc) gives a heading."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def test_the_readme_is_short_and_its_links_into_the_docs_resolve():
    text = README.read_text()
    assert len(text.encode()) <= 15_000  # a newcomer reads it in five minutes; the manual is docs/
    links = re.findall(r"\]\(((?:docs/)[^)#\s]+)(?:#([^)\s]+))?\)", text)
    assert {"docs/getting-started.md", "docs/config-reference.md", "docs/img/rank.png"} <= {path for path, _ in links}
    for path, anchor in links:
        assert (ROOT / path).is_file(), path
        if anchor:
            headings = re.findall(r"^#+ (.+)$", (ROOT / path).read_text(), re.M)
            assert anchor in {github_slug(h) for h in headings}, (path, anchor)


def bash_blocks(text: str) -> list[str]:
    return re.findall(r"```bash\n(.*?)\n```", text, re.S)


def test_the_readmes_two_commands_are_the_ones_ci_and_the_docs_run():
    """The install-and-run and install-and-test commands: the same in the README and the docs, and CI's test line
    is the README's with only quieter pip, more verbose pytest and `|| exit 1` added."""
    install_and_run, install_and_test = bash_blocks(README.read_text().split("## Set up and run", 1)[1])[:2]
    assert install_and_run.endswith("pip install -e . && snakemake --cores 2") and install_and_run.startswith("python3 -m venv")
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && pytest" in install_and_test
    getting_started = bash_blocks((DOCS / "getting-started.md").read_text())
    assert [install_and_run, install_and_test] == getting_started[:2]
    assert install_and_run in bash_blocks((DOCS / "index.md").read_text())
    ci = [line for line in (ROOT / ".ci/run").read_text().splitlines() if line.startswith("python3 -m venv .venv") and "pytest" in line]
    assert len(ci) == 1
    plain = re.sub(r" -q\b| -v\b| --durations=\d+", "", ci[0]).removesuffix(" || exit 1")
    assert plain == install_and_test


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/index.html").write_text('<h2 id="here">x</h2><a href="../">up</a><a href="#here">self</a>')
    (tmp_path / "index.html").write_text(
        '<a href="a/">ok</a><a href="a/#here">ok</a><a href="https://example.org/x">external</a><img src="img/x.png">'
        '<a href="a/#gone">bad anchor</a><a href="b/">no page</a><a href="#top">no id</a><a href="../../etc/passwd">out</a>'
    )
    broken = check_links.broken_links(tmp_path)
    assert [(page, link) for page, link, _ in broken] == [
        ("index.html", "img/x.png"),
        ("index.html", "a/#gone"),
        ("index.html", "b/"),
        ("index.html", "#top"),
        ("index.html", "../../etc/passwd"),
    ]
    assert check_links.main([str(tmp_path)]) == 1
