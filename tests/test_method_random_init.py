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
