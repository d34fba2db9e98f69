"""peftlab: parameter-efficient fine-tuning experiments as a Snakemake pipeline.

Commands, each `python -m peftlab.<name>`, thin entry points over a library layer: the
workflow's stages (data, build, train, evaluate, merge, lr_search, tables), infer (new inputs
through a finished run), status, cost (the cost plan) and config (checks). No command imports another;
what two share lives in the library below them (matrix, dataset, search, runstate, tiny,
models, tasks, methods, ...). docs/how-it-is-built.md lists the layers, and
tests/test_registries.py holds the code to that list.

`import peftlab` makes the custom methods (sva, ssl, ssb, flora, adapter, bitfit)
known to peft, so `PeftModel.from_pretrained` loads their adapters. peft itself is
slow to import (about 10 s), and parsing a config must stay fast, so the
registration runs when peft is imported, not here.

From Python: `from peftlab.api import run, load` runs a matrix through Snakemake's API
and loads a finished run's model and tokenizer.
"""

import importlib.abc
import importlib.machinery
import sys

__version__ = "0.1.0"


class _RegisterWhenPeftLoads(importlib.abc.MetaPathFinder):
    """Import hook: once `peft` has finished importing, register peftlab's custom tuners.

    Probes such as `importlib.util.find_spec("peft")` (transformers makes them) also
    come here; only the spec that is really executed registers and removes the hook.
    """

    def find_spec(self, name, path=None, target=None):
        if name != "peft":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        if spec is None or spec.loader is None:
            return None
        load = spec.loader.exec_module

        def exec_module(module):
            load(module)
            if self in sys.meta_path:
                sys.meta_path.remove(self)
            from peftlab.methods import register_custom_tuners

            register_custom_tuners()

        spec.loader.exec_module = exec_module
        return spec


if "peft" in sys.modules:
    from peftlab.methods import register_custom_tuners

    register_custom_tuners()
elif not any(isinstance(f, _RegisterWhenPeftLoads) for f in sys.meta_path):
    sys.meta_path.insert(0, _RegisterWhenPeftLoads())
