"""Shared plumbing for the custom methods: a peft tuner over linear layers (nn.Linear, and GPT-2's Conv1D).

A custom method subclasses `LinearTunerLayer` and says four things:
- `init_adapter(weight, config)`: its tensors, from the frozen weight as out × in (a Conv1D's
  transposed weight is turned around first, and back when merging), by attribute name (trainable ones are
  listed in `adapter_layer_names`, frozen ones saved with the adapter in `other_param_names`);
- `adapt_input(adapter, x)` and/or `adapt_output(adapter, x, y)`: its forward pass
  around the frozen layer `y = base(adapt_input(x))`;
- `merged_weight(adapter, W, b)`: the plain layer it is equivalent to (omit it if the method cannot merge);
- optionally `delta_factors(adapter)`: (B, A) with ΔW = B A, when its update is low-rank, so
  peftlab.tracking takes the cheap SVD path (it reads merged_weight − W otherwise).

Its config class subclasses `LinearTunerConfig` and names the method (`peft_name`).
`register(config_cls, layer_cls)` adds the method to peft (a new PeftType member,
a tuner class, the config class), so its adapters save in peft's format and load
with `PeftModel.from_pretrained` like any peft method.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Optional, Union

import torch
from peft import PeftConfig
from peft.tuners._buffer_dict import BufferDict
from peft.tuners.tuners_utils import BaseTuner, BaseTunerLayer, check_adapters_to_merge
from peft.utils import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING, PeftType, register_peft_method
from torch import nn
from transformers.pytorch_utils import Conv1D


@dataclass
class LinearTunerConfig(PeftConfig):
    """Fields every custom method shares; subclasses add their own and set `peft_name`."""

    peft_name: ClassVar[str]  # the method's name in peft (PeftType member name.upper())

    target_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "module names or suffixes to adapt"}
    )
    exclude_modules: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "module names to leave alone"}
    )
    modules_to_save: Optional[list[str]] = field(
        default=None, metadata={"help": "extra modules trained in full and saved (a classifier head)"}
    )
    layers_to_transform: Optional[Union[list[int], int]] = field(
        default=None, metadata={"help": "layer indices to adapt"}
    )
    layers_pattern: Optional[Union[list[str], str]] = field(
        default=None, metadata={"help": "layer pattern for layers_to_transform"}
    )
    init_weights: bool = field(default=True, metadata={"help": "True: the adapter starts as the identity"})

    def __post_init__(self):
        super().__post_init__()
        self.peft_type = add_peft_type(self.peft_name)


def add_peft_type(name: str) -> PeftType:
    """Add `name.upper()` to peft's PeftType enum (peft's registry only accepts enum members)."""
    key = name.upper()
    if key in PeftType.__members__:
        return PeftType[key]
    member = str.__new__(PeftType, key)
    member._name_, member._value_ = key, key
    type.__setattr__(PeftType, key, member)
    PeftType._member_map_[key] = member
    PeftType._value2member_map_[key] = member
    PeftType._member_names_.append(key)
    return member


class LinearTunerLayer(nn.Module, BaseTunerLayer):
    adapter_layer_names: tuple[str, ...] = ()  # ParameterDicts of trainable tensors, keyed by adapter name
    other_param_names: tuple[str, ...] = ()  # BufferDicts of frozen tensors that belong to the adapter

    def __init__(self, base_layer: nn.Module, adapter_name: str, config: LinearTunerConfig):
        super().__init__()
        self.base_layer = base_layer
        for name in self.adapter_layer_names:
            setattr(self, name, nn.ParameterDict())
        for name in self.other_param_names:
            setattr(self, name, BufferDict(persistent=True))
        self._disable_adapters = False
        self.merged_adapters = []
        self._unmerged: dict[str, tuple] = {}
        self._active_adapter = adapter_name
        base = self.get_base_layer()
        self.conv1d = isinstance(base, Conv1D)  # GPT-2's layers store W transposed, (in, out): y = x W + b
        self.out_features, self.in_features = self.weight_of(base).shape
        self.update_layer(adapter_name, config)

    def weight_of(self, base: nn.Module) -> torch.Tensor:
        """The base layer's weight as out × in, the layout every method's math is written in."""
        return base.weight.T if self.conv1d else base.weight

    # --- what a method defines
    def init_adapter(self, weight: torch.Tensor, config) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def adapt_input(self, adapter: str, x: torch.Tensor) -> torch.Tensor:
        return x

    def adapt_output(self, adapter: str, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return y

    def merged_weight(self, adapter: str, weight: torch.Tensor, bias: torch.Tensor | None):
        raise NotImplementedError(f"{type(self).__name__} cannot be merged")

    # --- peft plumbing
    def update_layer(self, adapter_name: str, config) -> None:
        weight = self.weight_of(self.get_base_layer())
        dtype = weight.dtype if weight.dtype.is_floating_point else torch.float32
        with torch.no_grad():
            tensors = self.init_adapter(weight.detach().float(), config)
        for name, tensor in tensors.items():
            tensor = tensor.to(device=weight.device, dtype=dtype)
            if name in self.adapter_layer_names:
                getattr(self, name)[adapter_name] = nn.Parameter(tensor)
            else:
                getattr(self, name)[adapter_name] = tensor
        self.set_adapter(self.active_adapters, inference_mode=config.inference_mode)

    def param(self, name: str, adapter: str, like: torch.Tensor) -> torch.Tensor:
        """Adapter tensor `name`, cast to the activations' dtype."""
        return getattr(self, name)[adapter].to(like.dtype)

    def _active(self) -> list[str]:
        first = getattr(self, self.adapter_layer_names[0])
        return [a for a in self.active_adapters if a in first]

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if self.disable_adapters and self.merged:
            self.unmerge()
        if self.disable_adapters or self.merged:
            return self.base_layer(x, *args, **kwargs)
        active = self._active()
        h = x
        for a in active:
            h = self.adapt_input(a, h)
        y = self.base_layer(h, *args, **kwargs)
        for a in active:
            y = self.adapt_output(a, x, y)
        return y

    @torch.no_grad()
    def merge(self, safe_merge: bool = False, adapter_names: Optional[list[str]] = None) -> None:
        base = self.get_base_layer()
        for a in check_adapters_to_merge(self, adapter_names):
            w, b = base.weight.data, None if base.bias is None else base.bias.data
            new_w, new_b = self.merged_weight(a, self.weight_of(base).data.float(), None if b is None else b.float())
            if safe_merge and not (torch.isfinite(new_w).all() and (new_b is None or torch.isfinite(new_b).all())):
                raise ValueError(f"merging adapter {a!r} gives non-finite weights")
            self._unmerged[a] = (w.clone(), None if b is None else b.clone())
            base.weight.data = (new_w.T if self.conv1d else new_w).contiguous().to(w.dtype)
            if new_b is not None:
                if base.bias is None:
                    base.bias = nn.Parameter(new_b.to(w.dtype), requires_grad=False)
                else:
                    base.bias.data = new_b.to(w.dtype)
            self.merged_adapters.append(a)

    @torch.no_grad()
    def unmerge(self) -> None:
        base = self.get_base_layer()
        while self.merged_adapters:
            w, b = self._unmerged.pop(self.merged_adapters.pop())
            base.weight.data = w
            if b is None:
                base.bias = None
            else:
                base.bias.data = b


class LinearTuner(BaseTuner):
    """The peft tuner of a custom method: puts its layer class around every targeted nn.Linear (or GPT-2 Conv1D)."""

    prefix: str
    tuner_layer_cls: type[LinearTunerLayer]
    target_module_mapping = TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING

    def _create_and_replace(self, config, adapter_name, target, target_name, parent, current_key, **kwargs):
        if isinstance(target, self.tuner_layer_cls):
            target.update_layer(adapter_name, config)
            return
        base = target.get_base_layer() if isinstance(target, BaseTunerLayer) else target
        if not isinstance(base, (nn.Linear, Conv1D)):
            raise TypeError(
                f"{self.prefix.rstrip('_')} adapts torch.nn.Linear and GPT-2's Conv1D layers only; "
                f"{current_key} is a {type(base).__name__}"
            )
        new = self.tuner_layer_cls(target, adapter_name, config)
        if adapter_name not in self.active_adapters:
            new.requires_grad_(False)
        self._replace_module(parent, target_name, new, target)


def register(
    config_cls: type[LinearTunerConfig], layer_cls: type[LinearTunerLayer], target_module_mapping=None
) -> PeftType:
    """Make `config_cls.peft_name` a peft method: PeftType.<NAME>, its config class and a tuner around `layer_cls`."""
    name = config_cls.peft_name
    peft_type = add_peft_type(name)
    attrs = {"prefix": f"{name}_", "tuner_layer_cls": layer_cls}
    if target_module_mapping is not None:
        attrs["target_module_mapping"] = target_module_mapping
    register_peft_method(
        name=name, config_cls=config_cls, model_cls=type(f"{layer_cls.__name__}Tuner", (LinearTuner,), attrs)
    )
    return peft_type
