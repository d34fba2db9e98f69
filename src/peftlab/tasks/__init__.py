"""Task type registry: a config's `tasks.<name>.type` -> everything that type needs (peftlab.tasks.base.TaskType).

The stages ask the registry and never branch on a type's name. Adding a task type:
one module in this package (a `TaskType` subclass, its `summary` included) and one line in
`TASK_TYPES` below. The config schema takes the allowed types and their summaries from here
(peftlab.validate.config_schema); tests/test_extending.py adds a type that way. Give it a row in
tests/test_task_types.py too, which runs every registered type end to end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from peftlab.tasks.base import TaskType
from peftlab.tasks.classification import Classification
from peftlab.tasks.lm import Lm
from peftlab.tasks.rlvr import Rlvr
from peftlab.tasks.seq2seq import Seq2Seq
from peftlab.tasks.sft import Sft

if TYPE_CHECKING:
    from peftlab.spec import TaskSpec

TASK_TYPES: dict[str, TaskType] = {
    t.name: t
    for t in [
        Classification(),
        Sft(),
        Lm(),
        Seq2Seq(),
        Rlvr(),
    ]
}


def of(task: TaskSpec) -> TaskType:
    """The type of a task."""
    try:
        return TASK_TYPES[task.type]
    except KeyError:
        raise KeyError(f"task {task.name!r}: unknown type {task.type!r}; allowed: {', '.join(TASK_TYPES)}") from None


def main_metric(task: TaskSpec) -> str:
    """The metric a task is compared by: its config's `metric`, or its type's default."""
    return task.metric or of(task).default_metric(task)


def all_metrics() -> list[str]:
    """Every metric name some task type reports, for the tables' columns."""
    from peftlab.spec import TaskSpec

    names = []
    for t in TASK_TYPES.values():
        for num_labels in (2, 1):  # a classification type reports regression metrics with one label
            names += t.metric_names(TaskSpec(name="-", type=t.name, data={}, num_labels=num_labels))
    return list(dict.fromkeys(names))
