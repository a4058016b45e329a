"""Proxy anchor owns its proxies: own learning rate, saved and loaded with the model state."""

import torch
from safetensors.torch import load_file, save_file

from metrix.losses import MultiSimilarityLoss, ProxyAnchorLoss
from metrix.losses.proxy_anchor import PROXY_LR_MULTIPLIER
from metrix.mixup import Metrix


def test_proxies_are_parameters_with_their_own_learning_rate():
    pa = ProxyAnchorLoss(10, 16)
    assert [p is pa.proxies for p in pa.parameters()] == [True]
    (group,) = pa.parameter_groups(lr=1e-4)
    assert group["params"] == [pa.proxies] and group["lr"] == 1e-4 * PROXY_LR_MULTIPLIER
    assert MultiSimilarityLoss().parameter_groups(lr=1e-4) == []


def test_proxies_learn_with_that_group():
    torch.manual_seed(0)
    pa = ProxyAnchorLoss(3, 4)
    before = pa.proxies.detach().clone()
    optimizer = torch.optim.AdamW(pa.parameter_groups(lr=1e-3))
    pa(torch.randn(6, 4), torch.tensor([0, 0, 1, 1, 2, 2])).backward()
    optimizer.step()
    assert not torch.equal(before, pa.proxies.detach())


def test_proxies_round_trip_through_safetensors_with_the_model_state(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 4)
    metrix = Metrix(ProxyAnchorLoss(5, 4), mode="embed")
    state = {
        **{f"model.{k}": v for k, v in model.state_dict().items()},
        **{f"metrix.{k}": v for k, v in metrix.state_dict().items() if isinstance(v, torch.Tensor)},
    }
    assert "metrix.loss.proxies" in state
    save_file(state, tmp_path / "model.safetensors")

    torch.manual_seed(1)
    fresh = Metrix(ProxyAnchorLoss(5, 4), mode="embed")
    assert not torch.equal(fresh.loss.proxies, metrix.loss.proxies)
    loaded = load_file(tmp_path / "model.safetensors")
    fresh.load_state_dict(
        {k.removeprefix("metrix."): v for k, v in loaded.items() if k.startswith("metrix.")}, strict=False
    )
    assert torch.equal(fresh.loss.proxies, metrix.loss.proxies)
