"""MoCo v2 and SwAV specifics: the key queue and key encoder; frozen prototypes, codes."""

import torch
from test_method_contract import build, data, run


def test_moco_queue_is_a_ring_of_the_newest_keys_and_the_key_encoder_gets_no_gradient(tmp_path):
    images, labels = data(48)
    method, params = build("moco", images, labels, epochs=1)
    assert all(not p.requires_grad for p in method.key_backbone.parameters())
    before = method.queue.clone()
    loss, stats = method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(0))
    loss.backward()
    assert all(p.grad is None for p in method.key_backbone.parameters())
    assert int(method.queue_pointer) == 32  # two views x 16 keys pushed
    assert not torch.equal(method.queue[:32], before[:32]) and torch.equal(method.queue[32:], before[32:])
    assert torch.allclose(method.queue[:32].norm(dim=1), torch.ones(32), atol=1e-5)
    assert set(stats) >= {"loss", "embedding_std", "positive_cos"}


def test_moco_head_is_the_authors_mlp_head():
    """MoCo v2: Linear(C, C) -> ReLU -> Linear(C, 128), C the backbone's feature size, no BN."""
    images, labels = data(48)
    method, params = build("moco", images, labels, epochs=1)
    c = method.backbone.out_channels
    assert [type(m) for m in method.head] == [torch.nn.Linear, torch.nn.ReLU, torch.nn.Linear]
    assert (method.head[0].in_features, method.head[0].out_features) == (c, c)
    assert method.head[2].out_features == params.proj_dim == 128
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.key_head.modules())


def test_swav_prototypes_stay_frozen_for_the_first_epoch_then_move(tmp_path):
    images, labels = data(48)
    method, params = build("swav", images, labels, epochs=2)
    start = method.prototypes.detach().clone()
    snapshots = {}
    original = method.after_step

    def after_step(step, total):
        original(step, total)
        snapshots[step] = method.prototypes.detach().clone()

    method.after_step = after_step
    history = run(method, params, images, tmp_path / "ck.pt")
    steps_per_epoch = len(images) // params.batch_size
    assert torch.equal(snapshots[steps_per_epoch - 1], start)
    assert not torch.equal(snapshots[2 * steps_per_epoch - 1], start)
    assert all(0 < row["code_perplexity"] <= params.prototypes for row in history)
