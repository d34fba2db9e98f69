"""The custom methods' math on small random matrices, without a model around them."""

from __future__ import annotations

import subprocess
import sys

import torch
from peft import get_peft_model

from peftlab import methods
from peftlab.methods import flora, milora, ssb, ssl, sva
from peftlab.models import load_model

torch.manual_seed(0)
W, BIAS = torch.randn(12, 10), torch.randn(12)
X = torch.randn(5, 10)


class Layer(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(10, 12)
        with torch.no_grad():
            self.lin.weight.copy_(W)
            self.lin.bias.copy_(BIAS)

    def forward(self, x):
        return self.lin(x)


def _wrapped(config):
    """(the plain layer, the same layer with the method attached)."""
    return Layer(), get_peft_model(Layer(), config).base_model.model.lin


def _effective_weight(layer) -> torch.Tensor:
    """The linear map a layer computes, read off by feeding it the identity (bias removed)."""
    eye = torch.eye(layer.in_features)
    with torch.no_grad():
        return (layer(eye) - layer(torch.zeros(1, layer.in_features))).T


def test_milora_spans_the_bottom_singular_subspace():
    r, scaling = 3, 2.0
    a, b, residual = milora.minor_init(W, r, scaling)
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    bottom_left, bottom_right = u[:, -r:], vh[-r:].T
    # B's columns lie in span(U_bottom), A's rows in span(V_bottom): projecting onto them changes nothing
    assert torch.allclose(bottom_left @ bottom_left.T @ b, b, atol=1e-5)
    assert torch.allclose(a @ bottom_right @ bottom_right.T, a, atol=1e-5)
    # and they are orthogonal to the top subspace
    assert (u[:, :-r].T @ b).abs().max() < 1e-5 and (a @ vh[:-r].T).abs().max() < 1e-5
    # B A is exactly the minor part U_r Σ_r V_rᵀ / scaling, so the model starts where the base was
    assert torch.allclose(scaling * b @ a, u[:, -r:] @ torch.diag(s[-r:]) @ vh[-r:], atol=1e-5)
    assert torch.allclose(residual + scaling * b @ a, W, atol=1e-5)


def test_milora_is_not_pissa():
    """The mirror image: the top singular directions are not in MiLoRA's B."""
    a, b, _ = milora.minor_init(W, 3, 1.0)
    u = torch.linalg.svd(W, full_matrices=False)[0]
    assert (u[:, :1].T @ b).abs().max() < 1e-5


def test_sva_with_zero_shift_is_the_identity_and_shifts_the_top_singular_values():
    base, layer = _wrapped(sva.SvaConfig(r=4, target_modules=["lin"]))
    assert torch.equal(layer(X), base(X))
    with torch.no_grad():
        layer.sva_delta["default"].copy_(torch.tensor([1.0, -0.5, 0.25, 2.0]))
    u, s, vh = torch.linalg.svd(W, full_matrices=False)
    expected = W + u[:, :4] @ torch.diag(torch.tensor([1.0, -0.5, 0.25, 2.0])) @ vh[:4]
    assert torch.allclose(_effective_weight(layer), expected, atol=1e-5)
    assert torch.allclose(
        torch.linalg.svdvals(expected)[:4].sort().values,
        (s[:4] + torch.tensor([1.0, -0.5, 0.25, 2.0])).sort().values,
        atol=1e-4,
    )


def test_ssl_and_ssb_with_ones_are_the_identity_and_scale_rows_and_columns():
    for config in ssl.SslConfig(target_modules=["lin"]), ssb.SsbConfig(target_modules=["lin"]):
        base, layer = _wrapped(config)
        assert torch.equal(layer(X), base(X))
    d1, d2 = torch.rand(12) + 0.5, torch.rand(10) + 0.5
    _, layer = _wrapped(ssl.SslConfig(target_modules=["lin"]))
    with torch.no_grad():
        layer.ssl_left["default"].copy_(d1)
    assert torch.allclose(_effective_weight(layer), torch.diag(d1) @ W, atol=1e-5)
    _, layer = _wrapped(ssb.SsbConfig(target_modules=["lin"]))
    with torch.no_grad():
        layer.ssb_left["default"].copy_(d1)
        layer.ssb_right["default"].copy_(d2)
    assert torch.allclose(_effective_weight(layer), torch.diag(d1) @ W @ torch.diag(d2), atol=1e-5)
    assert torch.allclose(
        layer(X), X @ (torch.diag(d1) @ W @ torch.diag(d2)).T + layer.get_base_layer().bias, atol=1e-5
    )


def test_flora_with_a_zero_core_is_the_identity_and_is_a_times_m_times_b():
    base, layer = _wrapped(flora.FloraConfig(r=3, alpha=6.0, target_modules=["lin"]))
    assert torch.equal(layer(X), base(X))
    m = torch.randn(3, 3)
    with torch.no_grad():
        layer.flora_M["default"].copy_(m)
    a, b = layer.flora_A["default"].detach(), layer.flora_B["default"].detach()
    assert torch.allclose(_effective_weight(layer), W + (6.0 / 3) * a @ m @ b, atol=1e-5)


def test_a_custom_adapter_loads_with_plain_peft_after_import_peftlab(in_tiny, tmp_path):
    """In a fresh process, `import peftlab` is all `PeftModel.from_pretrained` needs for a custom method,
    even when something probes for peft first (transformers does, with importlib.util.find_spec)."""
    spec = in_tiny("sva")
    model = methods.attach(load_model(spec.model, spec.task), spec.peft, methods.Context("CAUSAL_LM", 10, None))
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad:
                p.normal_(0, 1.0)
    methods.save(model, tmp_path / "adapter")
    ids = torch.tensor([[1, 5, 9, 13, 17]])
    torch.save(model(input_ids=ids).logits.detach(), tmp_path / "expected.pt")
    script = f"""
import importlib.util, peftlab, torch
assert importlib.util.find_spec("peft") is not None
from peft import PeftModel
from transformers import AutoModelForCausalLM
model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained({spec.model.path!r}), \
{str(tmp_path / "adapter")!r})
diff = (model(input_ids=torch.tensor({ids.tolist()})).logits - \
torch.load({str(tmp_path / "expected.pt")!r})).abs().max().item()
print(type(model.base_model).__name__, diff)
"""
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    tuner, diff = proc.stdout.split()[-2:]
    assert tuner == "SvaLayerTuner" and float(diff) <= 1e-5
