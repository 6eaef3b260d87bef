"""DINO: the checks specific to it (the shared contract is in test_method_contract.py)."""

import pytest
import torch

from bowflow.heads import cosine_momentum
from bowflow.models import Normalizer
from bowflow.networks import build_backbone
from bowflow.optim import clip_gradients
from bowflow.roles.base import get_method
from bowflow.train import train


def build(image_size=16, n=32, **overrides):
    images = torch.randint(
        0, 256, (n, 3, image_size, image_size), dtype=torch.uint8, generator=torch.Generator().manual_seed(0)
    )
    cls = get_method("dino")
    params = cls.Params(
        **{
            "arch": "convnet",
            "width": 4,
            "epochs": 2,
            "batch_size": 16,
            "collapse_std": 0.0,
            "out_dim": 64,
            "hidden_dim": 32,
            "bottleneck_dim": 16,
            "local_crops": 2,
            **overrides,
        }
    )
    params.validate()
    torch.manual_seed(0)
    context = {"normalizer": Normalizer.fit(images), "image_size": image_size}
    method = cls(params, build_backbone("convnet", 4), cls.inputs(**context))
    method.configure_schedule(n // params.batch_size, params.epochs * n // params.batch_size)
    return method, params, images


def step(method, images, seed=0):
    """One training step as the trainer does it (forward, backward, hooks, SGD step)."""
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.1)
    loss, stats = method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(seed))
    optimizer.zero_grad()
    loss.backward()
    step_index = int(method.steps_done)
    method.before_optimizer_step(step_index)
    optimizer.step()
    method.after_step(step_index, method.total_steps)
    return loss, stats


def test_views_have_the_declared_sizes_and_count():
    for image_size, local in ((16, 7), (32, 14), (8, 4)):  # 3/7 of the side, >= 4 px
        method, params, images = build(image_size=image_size, local_crops=3)
        views = method.views(images[:5], torch.arange(5), torch.Generator().manual_seed(0))
        assert list(views) == ["global0", "global1", "local0", "local1", "local2"]
        assert all(views[k].shape == (5, 3, image_size, image_size) for k in ("global0", "global1"))
        assert all(views[f"local{i}"].shape == (5, 3, local, local) for i in range(3))
    method, _, _ = build(blur_p=1.0, solarize_p=0.2, local_crops=2)  # DINO's per-view recipe
    assert [s.blur_p for s in method.specs] == [1.0, 0.1, 0.5, 0.5]
    assert [s.solarize_p for s in method.specs] == [0.0, 0.2, 0.0, 0.0]
    assert method.specs[0].crop_scale == (0.4, 1.0) and method.specs[2].crop_scale == (0.05, 0.4)
    method, _, images = build(local_crops=0)
    assert list(method.views(images[:5], torch.arange(5), torch.Generator().manual_seed(0))) == ["global0", "global1"]
    loss, _ = method.training_step(images[:8], torch.arange(8), torch.Generator().manual_seed(0))
    assert torch.isfinite(loss)  # 2 global views alone


def test_teacher_gets_no_gradient_and_follows_the_momentum_schedule():
    method, params, images = build(teacher_momentum=0.9, freeze_last_layer_epochs=0)
    assert all(not p.requires_grad for p in method.teacher_backbone.parameters())
    assert all(not p.requires_grad for p in method.teacher_head.parameters())
    old_teacher = [p.clone() for p in method.teacher_backbone.parameters()]
    _, stats = step(method, images)
    m = cosine_momentum(0, method.total_steps, 0.9)
    assert float(stats["teacher_momentum"]) == pytest.approx(m)
    assert all(p.grad is None for p in method.teacher_backbone.parameters())
    for t, old, s in zip(method.teacher_backbone.parameters(), old_teacher, method.backbone.parameters()):
        assert torch.allclose(t, m * old + (1 - m) * s, atol=1e-6)
    assert int(method.steps_done) == 1
    _, stats = step(method, images, seed=1)
    assert float(stats["teacher_momentum"]) == pytest.approx(cosine_momentum(1, method.total_steps, 0.9))
    # The teacher's BN statistics come from its own forward passes, not from the student.
    teacher_bn, student_bn = (
        next(m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d))
        for net in (method.teacher_backbone, method.backbone)
    )
    assert not torch.equal(teacher_bn.running_mean, student_bn.running_mean)


def test_center_is_an_ema_of_the_teachers_batch_mean():
    method, params, images = build(center_momentum=0.8)
    method.center.fill_(0.5)
    views = method.views(images[:16], torch.arange(16), torch.Generator().manual_seed(3))
    global_x = method.normalizer.normalize(torch.cat([views["global0"], views["global1"]]))
    teacher_state = {k: v.clone() for k, v in method.teacher_backbone.state_dict().items()}
    with torch.no_grad():
        expected_mean = method.teacher_head(method.teacher_backbone(global_x)).mean(0, keepdim=True)
    method.teacher_backbone.load_state_dict(teacher_state)  # undo the BN statistics update
    method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(3))
    assert torch.allclose(method.center, 0.8 * 0.5 + 0.2 * expected_mean, atol=1e-5)
    assert "center" in method.state_dict() and "steps_done" in method.state_dict()


def test_teacher_temperature_warms_up_linearly_by_epoch():
    method, params, images = build(teacher_temp_warmup_epochs=4, warmup_teacher_temp=0.04, teacher_temp=0.07)
    seen = []
    for epoch in (0, 2, 4, 9):
        method.steps_done.fill_(epoch * method.steps_per_epoch)
        _, stats = method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(0))
        seen.append(float(stats["teacher_temp"]))
    assert seen == pytest.approx([0.04, 0.06, 0.07, 0.07])  # np.linspace(0.04, 0.07, 4)


def test_last_layer_is_frozen_during_the_first_epoch_only(tmp_path):
    method, params, images = build(freeze_last_layer_epochs=1, epochs=1)
    last, first = method.head.last_direction.clone(), method.head.mlp[0].weight.clone()
    train(method, images, params, seed=0, checkpoint_path=tmp_path / "ck.pt", run_id="t", show_progress=False)
    assert torch.equal(method.head.last_direction, last)
    assert not torch.equal(method.head.mlp[0].weight, first)
    method, _, images = build(freeze_last_layer_epochs=1)
    method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(0))[0].backward()
    method.before_optimizer_step(method.steps_per_epoch)  # epoch 1: no longer frozen
    assert method.head.last_direction.grad is not None


def test_exports_the_teacher_and_logs_the_collapse_signals(tmp_path):
    method, params, images = build()
    history = train(method, images, params, seed=0, checkpoint_path=tmp_path / "ck.pt", run_id="t", show_progress=False)
    assert method.export_backbone() is method.teacher_backbone
    assert any(
        not torch.equal(t, s) for t, s in zip(method.teacher_backbone.parameters(), method.backbone.parameters())
    )
    for key in (
        "loss",
        "embedding_std",
        "teacher_entropy",
        "teacher_batch_entropy",
        "center_norm",
        "teacher_temp",
        "teacher_momentum",
    ):
        assert key in history[-1], key
    log_d = torch.log(torch.tensor(64.0)).item()
    assert 0 <= history[-1]["teacher_entropy"] <= history[-1]["teacher_batch_entropy"] <= log_d + 1e-4


def test_bf16_autocast_step_is_finite():
    method, params, images = build()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, stats = method.training_step(images[:16], torch.arange(16), torch.Generator().manual_seed(0))
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    assert method.center.dtype == torch.float32 and torch.isfinite(method.center).all()


@pytest.mark.parametrize(
    "field, value",
    [
        ("local_scale_min", 0.5),
        ("teacher_temp", 0.0),
        ("local_size", 0.0),
        ("center_momentum", 1.5),
        ("local_crops", -1),
    ],
)
def test_validate_names_the_bad_field(field, value):
    with pytest.raises(ValueError, match=field):
        get_method("dino").Params(**{field: value}).validate()


def dino_authors_clip_gradients(parameters, clip):
    """facebookresearch/dino utils.clip_gradients restated: each parameter's gradient norm,
    clip_coef = clip / (norm + 1e-6), scaled in place where clip_coef < 1."""
    for p in parameters:
        if p.grad is not None:
            param_norm = p.grad.data.norm(2)
            clip_coef = clip / (param_norm + 1e-6)
            if clip_coef < 1:
                p.grad.data.mul_(clip_coef)


def test_gradients_are_clipped_per_parameter_as_the_authors():
    assert get_method("dino").Params().clip_grad_per_parameter is True
    assert get_method("dino").Params().clip_grad == 3.0
    generator = torch.Generator().manual_seed(0)
    scales = [0.01, 1.0, 10.0, 100.0]  # some tensors under 3.0, some over
    ours = [torch.nn.Parameter(torch.zeros(5, 4)) for _ in scales] + [torch.nn.Parameter(torch.zeros(3))]
    theirs = [torch.nn.Parameter(torch.zeros(5, 4)) for _ in scales] + [torch.nn.Parameter(torch.zeros(3))]
    for a, b, s in zip(ours, theirs, scales):
        a.grad = torch.randn(5, 4, generator=generator) * s
        b.grad = a.grad.clone()
    clip_gradients(ours, 3.0, per_parameter=True)
    dino_authors_clip_gradients(theirs, 3.0)
    for a, b in zip(ours[:-1], theirs[:-1]):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)
    assert ours[-1].grad is None  # no gradient: left alone
    norms = [a.grad.norm().item() for a in ours[:-1]]
    assert norms[0] < 3.0 and norms[1] < 3.0 and norms[2] == pytest.approx(3.0, rel=1e-5)
    # the global clip would also have shrunk the small gradients
    glob = [torch.nn.Parameter(torch.zeros(5, 4)) for _ in scales]
    for g, s in zip(glob, scales):
        g.grad = torch.randn(5, 4, generator=torch.Generator().manual_seed(1)) * s
    small = glob[1].grad.clone()
    clip_gradients(glob, 3.0)
    assert glob[1].grad.norm() < small.norm() * 0.1


def test_on_a_vit_local_crops_are_whole_patches_and_the_head_reads_the_cls():
    """DINO's own setting: a ViT, its GELU head without BN, the CLS token as the feature;
    local crops of 3/7 of 32 px (14 px) round down to 12 px = 3 x 3 patches of 4."""
    from bowflow.roles.base import ImageInputs
    from bowflow.vit import VisionTransformer

    DINO = get_method("dino")
    images = torch.randint(0, 256, (8, 3, 32, 32), dtype=torch.uint8)
    params = DINO.Params(method="dino", head_bn=False, local_crops=2, out_dim=64, hidden_dim=32, bottleneck_dim=16)
    params.validate()
    vit = VisionTransformer(dim=16, depth=2, heads=2, patch=4, grid=8)
    method = DINO(params, vit, ImageInputs(normalizer=Normalizer.fit(images), image_size=32))
    views = method.views(images, torch.arange(8), torch.Generator().manual_seed(0))
    assert views["local0"].shape[-1] == 12 and views["global0"].shape[-1] == 32
    assert not any(isinstance(m, torch.nn.BatchNorm1d) for m in method.head.modules())
    loss, _ = method.step(views, torch.arange(8))
    loss.backward()
    assert torch.isfinite(loss) and vit.cls_token.grad is not None


def test_the_trainer_clips_through_the_method_dino_per_tensor_others_globally():
    """train.py calls `method.clip_gradients`: DINO's hook clips each tensor to its own norm,
    the default hook (here RotNet's) the global norm; neither names the other's option."""

    def model(method, **extra):
        cls = get_method(method)
        params = cls.Params(method=method, arch="convnet", width=8, depth=0, clip_grad=3.0, **extra)
        images = torch.zeros(4, 3, 16, 16, dtype=torch.uint8)
        inputs = cls.inputs(normalizer=Normalizer.fit(images), image_size=16)
        return cls(params, build_backbone("convnet", 8, 0), inputs)

    generator = torch.Generator().manual_seed(0)
    for method in ("dino", "rotnet"):
        net = model(method)
        trained = [p for p in net.parameters() if p.requires_grad]
        for p in trained:  # every tensor's gradient norm well above 3.0
            p.grad = torch.randn(p.shape, generator=generator) * 10 + 1
        net.clip_gradients(trained)
        norms = torch.stack([p.grad.norm() for p in trained])
        if method == "dino":
            assert torch.allclose(norms, torch.full_like(norms, 3.0), rtol=1e-4)
        else:
            assert norms.norm().item() == pytest.approx(3.0, rel=1e-4) and (norms < 2.9).all()


def test_shared_training_code_names_no_method_option():
    """Options of one method are its own fields and hooks: the trainer, the run driver and
    the stages never reach into a params object by attribute name."""
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    shared = [root / "bowflow/train.py", root / "bowflow/runs.py", *sorted((root / "stages").glob("*.py"))]
    found = [
        f"{p.relative_to(root)}:{i}"
        for p in shared
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if "getattr(params" in line
    ]
    assert found == [], f"shared code reads method options by name: {found}"
