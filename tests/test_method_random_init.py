"""The untrained control: weights stay random, only BN statistics are estimated."""

import torch
from test_method_contract import build, data, run


def test_weights_stay_random_and_bn_statistics_are_estimated(tmp_path):
    images, labels = data()
    method, params = build("random_init", images, labels, epochs=1)
    before = {k: v.clone() for k, v in method.backbone.state_dict().items()}
    run(method, params, images, tmp_path / "ck.pt")
    after = method.backbone.state_dict()
    for key, value in before.items():
        if "running" in key or "num_batches" in key:
            continue
        assert torch.equal(value, after[key]), f"{key} changed"
    assert any(not torch.equal(before[k], after[k]) for k in before if "running_mean" in k)


def test_every_parameter_gets_a_gradient_so_ddp_can_wrap_it():
    """DistributedDataParallel needs a parameter that requires grad and, without
    find_unused_parameters, a gradient for every one after backward: the zero loss is
    `features * 0` of the backbone's output, so every weight gets a zero gradient."""
    images, labels = data()
    method, _ = build("random_init", images, labels, epochs=1)
    index = torch.arange(16)
    loss, _ = method.step(method.views(images[index], index, torch.Generator()), index)
    loss.backward()
    for name, p in method.named_parameters():
        assert p.requires_grad and p.grad is not None and not p.grad.any(), name
