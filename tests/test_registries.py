"""One home for each name: the schema's enums agree with the registries they name, and the package's layers import one way.

Every `enum` in the config schema must be listed in ENUMS with the registry it
names, so a new reward, task type or resource key cannot land in one place only.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from peftlab import checkpoints, data, health, launch, merge, methods, metrics, models, rewards, tasks
from peftlab.schema import SCHEMA_PATH, load_yaml

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "peftlab"
SCHEMA = load_yaml(SCHEMA_PATH)

# key path of an enum in the schema -> the names its registry holds
ENUMS = {
    "properties.tasks.additionalProperties.properties.type": lambda: tasks.TASK_TYPES,
    "properties.tasks.additionalProperties.properties.rewards.items": lambda: rewards.REWARDS,
    "properties.tasks.additionalProperties.properties.answer_format": lambda: metrics.ANSWER_FORMATS,
    "properties.models.additionalProperties.properties.dtype": lambda: models.DTYPES,
    "definitions.outputs.properties.merge": lambda: merge.MODES,
    "definitions.training.properties.on_degenerate": lambda: health.ON_DEGENERATE,
    "definitions.outputs.properties.checkpoints.oneOf.0": lambda: checkpoints.KEEP,
    "properties.tasks.additionalProperties.properties.data.properties.format": lambda: (
        [f.lstrip(".") for f in data._FORMATS] + ["tsv", None]
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
    rl = SCHEMA["properties"]["training"]["properties"]["rl"]["properties"]
    assert set(rl) == set(SCHEMA["definitions"]["training"]["properties"]["rl"]["properties"])
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


# --- the import graph ---------------------------------------------------------------------

STAGES = {"peftlab.train", "peftlab.evaluate", "peftlab.merge", "peftlab.infer"}


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


def test_no_module_imports_a_stage():
    offenders = {m: sorted(deps & STAGES) for m, deps in imports().items() if deps & STAGES}
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
    """Tokenising loads a tokenizer (data -> models); models never reads task data, and the tiny-model build sits above both."""
    graph = imports()
    assert "peftlab.data" not in graph["peftlab.models"]
    assert "peftlab.build" not in graph["peftlab.data"] | graph["peftlab.models"]
