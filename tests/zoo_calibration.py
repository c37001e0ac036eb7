"""Torch zoo models whose BN running statistics come from data, for the importer tests of the zoo families."""

import pytest

from lightnets import zoo


def calibrated(key, seed: int = 0):
    """``(model, smallest running variance)``: the zoo model of ``key`` (random weights) after one train-mode forward
    with momentum 1 on low-variance images (0.05 x randn): running variances of ~1e-3..1e-6, which amplify float32
    rounding as a trained net's do."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(seed)
    torch.set_num_threads(1)
    model = zoo.ZOO[key].make(1000)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.momentum = 1.0
    model.train()
    with torch.no_grad():
        model(0.05 * torch.randn(16, 3, 64, 64))
    for m in bns:
        m.momentum = 0.1
    return model.eval(), min(float(m.running_var.min()) for m in bns)
