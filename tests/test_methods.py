"""Methods plug into the shared trainer through the registry."""

import torch

from bowflow.models import Normalizer
from bowflow.networks import ARCHITECTURES, build_backbone
from bowflow.roles.base import available_methods, get_method
from bowflow.train import train


def test_registries():
    assert {"rotnet", "bownet"} <= set(available_methods())
    assert {"convnet", "resnet", "wrn"} <= set(ARCHITECTURES)
    for arch, width, depth in [("convnet", 8, 0), ("resnet", 8, 18), ("wrn", 1, 10)]:
        net = build_backbone(arch, width, depth)
        maps = net.feature_maps(torch.randn(2, 3, 16, 16))
        assert [m.shape[1] for m in maps] == net.channels
        assert net(torch.randn(2, 3, 16, 16)).shape == (2, net.out_channels)


def small_run(method, tmp_path, context=None, **overrides):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8)
    params = get_method(method).Params(
        method=method, arch="convnet", width=4, epochs=2, batch_size=16, lr=0.03, **overrides
    )
    backbone = build_backbone("convnet", 4)
    m = get_method(method)(
        params,
        backbone,
        get_method(method).inputs(**{"normalizer": Normalizer.fit(images), "image_size": 8, **(context or {})}),
    )
    return train(m, images, params, seed=0, checkpoint_path=tmp_path / "ck.pt", run_id="t", show_progress=False), m


def test_rotnet_trains_and_logs(tmp_path):
    history, _ = small_run("rotnet", tmp_path, padding=1)
    assert len(history) == 2 and {"loss", "rotation_accuracy", "images_per_second"} <= set(history[0])


def test_bownet_head_normalises_every_forward_and_logs_captured(tmp_path):
    codes = torch.randint(0, 8, (64, 16))
    history, method = small_run("bownet", tmp_path, {"codes": codes, "num_words": 8, "parent": {}})
    assert {"captured", "target_perplexity", "mean_histogram_ce", "target_entropy"} <= set(history[-1])
    head = method.head
    with torch.no_grad():
        head.weight.mul_(5.0)  # scaling the raw rows must not change the logits
    f = torch.randn(3, head.weight.shape[1])
    before = head(f)
    with torch.no_grad():
        head.weight.mul_(0.1)
    assert torch.allclose(before, head(f), atol=1e-5)
    assert head.scale.requires_grad
