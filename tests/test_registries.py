"""One home for each name: the schema's enums agree with the registries they name, and the package's layers import one
way.

Every `enum` in the config schema must be listed in ENUMS with the registry it
names, so a new reward, task type or resource key cannot land in one place only.
"""

from __future__ import annotations

import ast
import collections
import dataclasses
import re
from pathlib import Path

import pytest

from peftlab import checkpoints, dataset, health, launch, merge, methods, metrics, models, rewards, spec, tasks
from peftlab.schema import SCHEMA_PATH, keys_of, load_yaml, schema, schema_default
from peftlab.validate import config_schema

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "peftlab"
SCHEMA = load_yaml(SCHEMA_PATH)

# key path of an enum in the schema -> the names its registry holds
ENUMS = {
    "properties.tasks.additionalProperties.properties.rewards.items": lambda: rewards.REWARDS,
    "properties.tasks.additionalProperties.properties.answer_format": lambda: metrics.ANSWER_FORMATS,
    "properties.models.additionalProperties.properties.dtype": lambda: models.DTYPES,
    "definitions.outputs.properties.merge": lambda: merge.MODES,
    "definitions.training.properties.on_degenerate": lambda: health.ON_DEGENERATE,
    "definitions.outputs.properties.checkpoints.oneOf.0": lambda: checkpoints.KEEP,
    "properties.tasks.additionalProperties.properties.data.properties.format": lambda: (
        [f.lstrip(".") for f in dataset._FORMATS] + ["tsv", None]
    ),
}
# enums of outside libraries' settings, not of a peftlab registry
FOREIGN = {
    "definitions.training.properties.lr_scheduler",  # transformers' scheduler names
    "definitions.training.properties.rl.properties.loss_type",  # TRL's GRPO losses
    "definitions.training.properties.rl.properties.scale_rewards",
    "properties.models.additionalProperties.properties.build.properties.arch",  # peftlab.build's two tiny architectures
    "properties.wandb.properties.mode",
    "properties.models.additionalProperties.properties.attn_implementation",  # transformers' attention kernels
}


def enums(node, path=()):
    """(key path, enum values) of every enum in the schema."""
    if isinstance(node, dict):
        if "enum" in node:
            yield ".".join(path), node["enum"]
        for k, v in node.items():
            yield from enums(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from enums(v, (*path, str(i)))


def test_every_schema_enum_is_its_registry():
    found = dict(enums(SCHEMA))
    assert set(found) == set(ENUMS) | FOREIGN, "a new enum: name its registry in ENUMS (or FOREIGN)"
    for path, registry in ENUMS.items():
        assert sorted(map(str, found[path])) == sorted(map(str, set(registry()))), path


def test_a_tasks_type_has_one_home_the_registry():
    """The schema file lists no task types; the schema configs are validated against takes them, and their
    summaries, from peftlab.tasks (a new type is its own file and its row: tests/test_extending.py)."""
    node = SCHEMA["properties"]["tasks"]["additionalProperties"]["properties"]["type"]
    assert "enum" not in node
    filled = config_schema()["properties"]["tasks"]["additionalProperties"]["properties"]["type"]
    assert filled["enum"] == list(tasks.TASK_TYPES)
    assert all(f"{t.name}: {t.summary}" in filled["description"] for t in tasks.TASK_TYPES.values())


def test_resource_keys_are_launch_resources():
    keys = SCHEMA["definitions"]["resourceKeys"]["properties"]
    assert set(keys) == {"preset", *launch.KEYS}


def test_methods_have_one_home_the_registry():
    """The schema lists no methods of its own (peft.type is checked against methods.METHODS when a config
    is parsed); the examples it gives exist, and every method with a peft tuner has a module to register."""
    description = SCHEMA["definitions"]["peft"]["properties"]["type"]["description"]
    examples = description.split("e.g.")[1].replace(" ", "").split(",")
    assert examples and set(examples) <= set(methods.METHODS)
    for m in methods.METHODS.values():
        if m.peft_tuner:
            assert (PACKAGE / "methods" / f"{m.impl.split(':')[0].rsplit('.', 1)[1]}.py").exists()


def test_defaults_live_in_the_schema():
    """GRPO's defaults are the schema's, filled into the top-level training.rl."""
    rl = SCHEMA["definitions"]["training"]["properties"]["rl"]["properties"]
    assert all("default" in v for v in rl.values())
    from peftlab.validate import load_config

    cfg = load_config(
        {
            "tasks": {"t": {"type": "lm", "data": {"generator": "sentiment"}}},
            "models": {"m": {"path": "org/m"}},
            "sweep": [{"task": "t", "model": "m"}],
        }
    )
    assert cfg["training"]["rl"] == {k: v["default"] for k, v in rl.items()}


def key_nodes(node: dict, path: tuple = ()):
    """(key path, schema node) of every key under `node`: its properties, a map's values (<name>), a list's items
    ([])."""
    for key, sub in node.get("properties", {}).items():
        yield (*path, key), sub
        yield from key_nodes(sub, (*path, key))
    if isinstance(node.get("additionalProperties"), dict):
        yield from key_nodes(node["additionalProperties"], (*path, "<name>"))
    if isinstance(node.get("items"), dict):
        yield from key_nodes(node["items"], (*path, "[]"))


def test_each_key_is_written_once_its_default_beside_its_description():
    """No separate block of defaults: a key's default is given in one place in the schema file, the node that
    describes the key (a top-level section made of a definition lists no keys of its own)."""
    sections = [((name,), node) for name, node in SCHEMA["definitions"].items()]
    sections += [((name,), node) for name, node in SCHEMA["properties"].items()]
    given = collections.Counter()
    for path, node in [*sections, *(kv for top in sections for kv in key_nodes(top[1], top[0]))]:
        if "default" in node:
            given[path] += 1
            assert "description" in node, f"{'.'.join(path)}: a default without its key's description"
    assert given and max(given.values()) == 1, [p for p, n in given.items() if n > 1]
    assert (
        SCHEMA["definitions"]["lr_search"]["properties"]["validation_share"]["default"] == 0.1
    )  # not in code (peftlab.search)
    # what a per-run override refers to: the same definitions, without a default anywhere
    overrides = schema()["overrides"]
    assert overrides.keys() == SCHEMA["definitions"].keys() and not any(
        "default" in n for _, n in key_nodes({"properties": overrides})
    )


def test_spec_fields_are_the_schemas_keys():
    """Each config section's spec dataclass has the section's keys as its fields, in the schema's order (the
    order of to_dict), with the schema's defaults; besides them only the fields that are not config keys."""
    sections = {"tasks": spec.TaskSpec, "models": spec.ModelSpec, "peft": spec.PeftSpec, "training": spec.TrainingSpec}
    sections |= {
        "wandb": spec.WandbSpec,
        "tracker": spec.TrackerSpec,
        "outputs": spec.OutputsSpec,
        "lr_search": spec.LrSearchSpec,
    }
    own = {
        "tasks": {"name"},
        "models": {"name"},
        "wandb": {"dir"},
        "lr_search": {"cell"},
    }  # fields that are not config keys
    not_in_spec = {"models": {"resources"}, "lr_search": {"range"}}  # config keys a run spec does not hold
    for section, cls in sections.items():
        keys = [k for k in keys_of(section) if k not in not_in_spec.get(section, set())]
        fields = {f.name: f for f in dataclasses.fields(cls)}
        assert set(fields) - set(keys) == own.get(section, set()) and set(keys) <= set(fields), section
        in_order = [
            k for k in fields if k in keys and (section, k) != ("models", "build")
        ]  # build: by hand, None for a path model
        assert in_order == [k for k in keys if k in in_order], section
        for k, f in fields.items():
            if f.default_factory is not dataclasses.MISSING and k in keys:
                assert f.default_factory() == schema_default(section, k), (section, k)
    required = [f.name for f in dataclasses.fields(spec.PeftSpec) if f.default_factory is dataclasses.MISSING]
    assert required == [
        "type",
        "r",
        "lora_alpha",
        "lora_dropout",
        "target_modules",
        "options",
    ]  # loraplus_lr_ratio came later


# --- the import graph ---------------------------------------------------------------------


def entry_points() -> set[str]:
    """The `python -m peftlab.<x>` targets: every module that runs as a command (its `__main__` guard)."""
    return {
        module_name(p)
        for p in PACKAGE.rglob("*.py")
        if any(
            isinstance(n, ast.If) and isinstance(n.test, ast.Compare) and getattr(n.test.left, "id", None) == "__name__"
            for n in ast.parse(p.read_text()).body
        )
    }


def commands_run() -> set[str]:
    """The peftlab modules the workflow, the docs and the README run with `python -m`."""
    texts = [p.read_text() for p in (*ROOT.glob("workflow/rules/*.smk"), *ROOT.glob("docs/*.md"), ROOT / "README.md")]
    return {m for t in texts for m in re.findall(r"python -m (peftlab\.\w+)", t)}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports() -> dict[str, set[str]]:
    """{module: the peftlab modules it imports}, at the top or inside a function alike."""
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in modules and m != name}
    return graph


def test_entry_points_are_found_from_the_commands_and_every_command_is_one():
    found = entry_points()
    assert commands_run() <= found  # a documented or wired command that is not an entry point would be missed below
    expected = {
        "train",
        "evaluate",
        "merge",
        "infer",
        "build",
        "tables",
        "status",
        "cost",
        "lr_search",
        "data",
        "config",
    }
    assert {f"peftlab.{m}" for m in expected} <= found


def test_no_module_imports_an_entry_point():
    """Stages over a library layer: an entry point (a command) imports library modules only, never another
    entry point, and no library module imports one; imports inside functions count (`imports`)."""
    stages = entry_points()
    offenders = {m: sorted(deps & stages) for m, deps in imports().items() if deps & stages}
    assert offenders == {}


def test_the_import_graph_has_no_cycle():
    graph = imports()
    state: dict[str, str] = {}

    def visit(m, trail):
        state[m] = "open"
        for d in sorted(graph[m]):
            if state.get(d) == "open":
                pytest.fail("import cycle: " + " -> ".join([*trail[trail.index(d) :], d]))
            if d not in state:
                visit(d, [*trail, d])
        state[m] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])


def test_data_and_models_do_not_import_each_other():
    """Tokenising loads a tokenizer (peftlab.data -> models); models never reads task data, and the tiny models sit
    above both."""
    graph = imports()
    assert "peftlab.dataset" not in graph["peftlab.models"]
    assert "peftlab.tiny" not in graph["peftlab.dataset"] | graph["peftlab.models"]


def layer_lines() -> list[set[str]]:
    """docs/how-it-is-built.md's module list, line by line: the modules each line names (a folder: every module in
    it)."""
    text = (ROOT / "docs/how-it-is-built.md").read_text()
    block = text.split("src/peftlab/", 1)[1].split("```", 1)[0].splitlines()[1:]
    modules = set(imports())
    lines = []
    for line in block:
        named = set()
        for name in (n.strip() for n in line.strip().split("   ")[0].split(",")):
            if name.endswith("/"):
                named |= {m for m in modules if m.startswith(f"peftlab.{name[:-1]}")}
            elif name.endswith(".py"):
                named.add(f"peftlab.{name[:-3]}")
        lines.append(named)
    return lines


def test_the_docs_layer_list_names_every_module_and_each_line_imports_only_from_below():
    graph, lines = imports(), layer_lines()
    listed = set().union(*lines)
    assert listed == set(graph) - {"peftlab"}, "a module missing from (or extra in) docs/how-it-is-built.md's list"
    for i, line in enumerate(lines):
        below = set().union(*lines[i + 1 :])
        for m in line:
            upward = graph[m] - below - line - {"peftlab"}
            assert not upward, f"{m} (line {i + 1} of the list) imports {sorted(upward)}, which the list puts above it"
    stages = entry_points()
    assert all(line <= stages for line in lines[:3]) and stages <= set().union(*lines[:3])  # the commands head the list
