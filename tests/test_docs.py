"""The docs hold to the code: the config reference is the schema rendered, every page is in the site's nav,
the README stays short, links into the docs and shows the commands CI runs, every command a code block shows is
run by a test or marked with what it needs, and the site's link check finds broken links.

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
    assert (DOCS / "config-reference.md").read_text() == reference.render(), (
        "stale: run `python docs/hooks/config_reference.py`"
    )


def test_the_config_reference_gives_each_key_its_definition_and_its_default():
    """A shared section's type, description and default, from its definition in `definitions:`, on one row."""
    root, rows = schema(), reference_rows(reference.render())
    checked = 0
    for section in ("peft", "training", "tracker", "outputs", "lr_search"):
        for key, node in root["definitions"][section]["properties"].items():
            kind, default, description = rows[f"{section}.{key}"]
            want = f"`{json.dumps(node['default'], ensure_ascii=False)}`" if "default" in node else ""
            assert default == want, (section, key)
            assert description == " ".join(node["description"].split()), (section, key)
            for value in node.get("enum", []):
                assert f"`{value}`" in kind, (section, key, value)
            checked += 1
    for section, prefix in (
        ("tasks", "tasks.<name>"),
        ("models", "models.<name>"),
        ("wandb", "wandb"),
        ("tables", "tables"),
    ):
        node = root["properties"][section]
        props = (
            node["additionalProperties"]["properties"]
            if isinstance(node.get("additionalProperties"), dict)
            else node["properties"]
        )
        for key, sub in props.items():
            if "default" in sub:
                assert rows[f"{prefix}.{key}"][1] == f"`{json.dumps(sub['default'], ensure_ascii=False)}`", (
                    section,
                    key,
                )
                checked += 1
    assert checked > 60
    assert set(root["properties"]) <= {path.split(".")[0] for path in rows}  # every top-level key has its table
    assert rows["training.rl.num_generations"][1] == "`8`" and rows["tasks.<name>.type"][1] == "**required**"
    assert rows["lr_search.validation_share"][1] == "`0.1`" and rows["lr_search.rates"][1] == ""
    assert (
        "without defaults here" in rows["sweep[].training"][2] and "with their defaults" in rows["sweep[].lr_search"][2]
    )


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
    assert shown(install_and_run)[0].endswith("pip install -e . && snakemake --cores 2") and install_and_run.startswith(
        "python3 -m venv"
    )
    assert "pip install torch==2.13.0 && pip install -e '.[test]' && pytest" in install_and_test
    getting_started = bash_blocks((DOCS / "getting-started.md").read_text())
    assert [install_and_run, install_and_test] == getting_started[:2]
    assert install_and_run in bash_blocks((DOCS / "index.md").read_text())
    ci = [
        line
        for line in (ROOT / ".ci/run").read_text().splitlines()
        if line.startswith("python3 -m venv .venv") and "pytest" in line
    ]
    assert len(ci) == 1
    plain = re.sub(r" -q\b| -v\b| --durations=\d+", "", ci[0]).removesuffix(" || exit 1")
    assert plain == install_and_test


# What the tests do not have, as a comment at the end of a command that no test runs.
MARKS = ("needs a GPU", "needs a Slurm cluster", "needs the network (hub)", "needs the network (PyPI)")

# {command as shown, its comment left out: (the file that runs it, the text there that runs it)}. Placeholders
# (<run_id>, CONFIG, config/my.yaml) are run on the test's own runs and configs. The README's test command is
# added below: .ci/run runs it, as the test above checks.
RUN_BY_TESTS = {
    "snakemake --cores 2 --configfile config/my.yaml": (
        "tests/test_tasks.py",
        'snakemake(work, "--cores", "2", config=path)',
    ),
    "python -m peftlab.evaluate --spec results/<name>/specs/evaluate_run/<run_id>.json"
    " --adapter results/<name>/checkpoints/<run_id>/checkpoint-40/adapter --out step40.json --predictions "
    "step40.jsonl": (
        "tests/test_outputs.py",
        '"--adapter", adapter, "--out", f"{out}.json"]',
    ),
    "python -m peftlab.cost CONFIG --peak-tflops 312 --mfu 0.35": (
        "tests/test_outputs.py",
        '"--peak-tflops", "312", "--mfu", "0.35"',
    ),
    "python -m peftlab.cost config/test.yaml --validate": (
        "tests/test_outputs.py",
        'cost.main([str(config), "--validate"])',
    ),
    'python -m peftlab.infer --run results/default/runs/<run_id> --input "Tom has 3 pens and buys 4 more. How '
    'many pens now?"': (
        "tests/test_tasks.py",
        'infer(work, "--run", run, "--input", "Tom has 2 pens and buys 3 more. How many pens now?")',
    ),
    "python -m peftlab.infer --run results/default/runs/<run_id> --merged --inputs questions.jsonl --out "
    "answers.json": (
        "tests/test_tasks.py",
        'infer(work, "--run", run, "--merged", "--inputs", "questions.jsonl")',
    ),
    "python -m peftlab.infer --run results/default/runs/<run_id> --input_file inputs.txt --output_file results.json": (
        "tests/test_tasks.py",
        '"peftlab.infer", "--run", run, "--input_file", "inputs.txt", "--output_file", "results.json"',
    ),
    """python -m peftlab.infer --run results/default/runs/<run_id> --input '{"nums": [3, 5, 2], "target": 11}'""": (
        "tests/test_tasks.py",
        """infer(work, "--run", run, "--input", '{"nums": [3, 5, 2], "target": 11}')""",
    ),
    "snakemake --profile profiles/slurm all": ("tests/test_slurm.py", '"--profile", str(ROOT / "profiles" / "slurm")'),
}


def shown(line: str) -> tuple[str, str]:
    """(the command, its trailing comment) of a line as a code block shows it."""
    command, _, comment = line.partition("  # ")
    return " ".join(command.split()), comment


def shown_commands() -> list[tuple[str, str, str]]:
    """(page, command, comment) for each line of a shell block (continuation lines joined), and each `# Run:` line
    of another block (a config file's first line) in the README and docs/*.md."""
    found = []
    for page in [README, *sorted(DOCS.glob("*.md"))]:
        for _, lang, body in re.findall(r"^([ \t]*)```(\w*)[^\n]*\n(.*?)^\1```", page.read_text(), re.M | re.S):
            if lang in ("bash", "sh", "shell", "console"):
                lines = [
                    line
                    for line in body.replace("\\\n", " ").splitlines()
                    if line.strip() and not line.strip().startswith("#")
                ]
            else:
                lines = [m[1] for m in re.finditer(r"^\s*# Run:\s*(.+)$", body, re.M)]
            found += [(page.name, *shown(line)) for line in lines]
    return found


def test_every_command_the_docs_show_is_run_by_a_test_or_marked_with_what_it_needs():
    """Issue 30: a command no test runs says why: it needs a GPU, a Slurm cluster or the network."""
    commands = shown_commands()
    test_command = shown(bash_blocks(README.read_text().split("## Set up and run", 1)[1])[1])[0]
    listed = {**RUN_BY_TESTS, test_command: (".ci/run", "-e '.[test]' && pytest")}
    assert (
        len(commands) >= 15 and ("config.md", "snakemake --cores 2 --configfile config/my.yaml", "") in commands
    )  # it sees them
    neither = [(page, c) for page, c, comment in commands if c not in listed and not any(m in comment for m in MARKS)]
    assert not neither, f"shown, run by no test listed in RUN_BY_TESTS and not marked with one of {MARKS}: {neither}"
    assert sorted(listed) == sorted({c for _, c, _ in commands if c in listed}), (
        "RUN_BY_TESTS lists a command no page shows"
    )
    for command, (path, text) in listed.items():
        assert re.fullmatch(r"tests/test_\w+\.py|\.ci/run", path), (command, path)
        unspaced = "".join(text.split())  # the formatter may spread a call's arguments over lines
        assert unspaced in "".join((ROOT / path).read_text().split()), (
            f"{path} does not hold {text!r}, which runs {command!r}"
        )


def test_the_link_check_finds_missing_files_and_anchors(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a/index.html").write_text('<h2 id="here">x</h2><a href="../">up</a><a href="#here">self</a>')
    (tmp_path / "index.html").write_text(
        '<a href="a/">ok</a><a href="a/#here">ok</a><a href="https://example.org/x">external</a><img src="img/x.png">'
        '<a href="a/#gone">bad anchor</a><a href="b/">no page</a><a href="#top">no id</a><a '
        'href="../../etc/passwd">out</a>'
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
