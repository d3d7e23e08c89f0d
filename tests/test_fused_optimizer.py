"""`run.fused_optimizer` (issue 15, bench --fused-adamw): torch's fused AdamW makes the same update as the default
implementation, which is the reference here, with the same parameter groups."""
from __future__ import annotations

import torch

from maskclip_core.config import OptimConfig
from maskclip_core.optim import build_optimizer


def test_fused_adamw_moves_the_weights_as_the_default_does():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.LayerNorm(32), torch.nn.Linear(32, 4))
    twin.load_state_dict(model.state_dict())
    cfg = OptimConfig()
    plain, fused = build_optimizer(model, cfg), build_optimizer(twin, cfg, fused=True)
    assert fused.defaults["fused"] and not plain.defaults.get("fused")
    assert [len(g["params"]) for g in plain.param_groups] == [len(g["params"]) for g in fused.param_groups]
    x = torch.randn(8, 16)
    for _ in range(3):
        for net, opt in ((model, plain), (twin, fused)):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)

