"""SimSiam: the predictor keeps the peak learning rate while the rest follows the schedule."""

from test_method_contract import build, data

from bowflow.optim import build_optimizer, set_learning_rate


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


def test_loss_is_per_sample_so_processes_need_no_gather():
    """Under torchrun each process runs `step` on its rows and DDP averages: exact only if
    the loss is a mean of per-sample terms. With BN on running statistics (eval), the mean of
    the two halves' losses is the whole batch's."""
    import torch

    images, labels = data(32)
    method, _ = build("simsiam", images, labels)
    index = torch.arange(16)
    views = method.views(images[index], index, torch.Generator().manual_seed(0))
    method.eval()
    with torch.no_grad():
        whole = method.step(views, index)[0]
        halves = [
            method.step({k: v[rows] for k, v in views.items()}, index[rows])[0] for rows in (slice(0, 8), slice(8, 16))
        ]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, rtol=1e-5, atol=1e-6)
