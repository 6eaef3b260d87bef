"""SimSiam: the predictor keeps the peak learning rate while the rest follows the schedule."""
from bowflow.optim import build_optimizer, set_learning_rate
from test_method_contract import build, data


def test_predictor_group_keeps_the_peak_lr():
    images, labels = data(32)
    method, params = build("simsiam", images, labels)
    optimizer = build_optimizer(params.optimizer, method.optimizer_groups(), params.lr, params.momentum)
    set_learning_rate(optimizer, scheduled=params.lr * 0.1, peak=params.lr)
    predictor = {id(p) for p in method.predictor.parameters()}
    for group in optimizer.param_groups:
        in_predictor = {id(p) in predictor for p in group["params"]}
        assert len(in_predictor) <= 1, "a group mixes predictor and other parameters"
        expected = params.lr if in_predictor == {True} else params.lr * 0.1
        assert abs(group["lr"] - expected) < 1e-12
    grouped = sum(len(g["params"]) for g in optimizer.param_groups)
    assert grouped == sum(1 for p in method.parameters() if p.requires_grad)
