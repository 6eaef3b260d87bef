"""The CIFAR distillation benchmark's architectures (CRD / RepDistiller, the IFACD table)."""

import hashlib

import pytest
import torch
import torch.nn as nn

from bowflow.networks import OWN_SIZES, Backbone, build_backbone, count_parameters


class Classifier(nn.Module):
    """A backbone with a linear classifier on its pooled last stage, as the benchmark's
    published sizes count it: `forward(x)` gives logits, `features_and_logits(x)` what a
    distillation loss reads, in one pass."""

    def __init__(self, backbone: Backbone, num_classes: int):
        super().__init__()
        self.backbone = backbone
        self.fc = nn.Linear(backbone.out_channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, H, W] -> logits [B, num_classes]."""
        return self.fc(self.backbone(x))

    def features_and_logits(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        """x [B, 3, H, W] -> (stage maps [B, C_i, H / r_i, W / r_i] and pooled feature [B, C]
        as `Backbone.distill_features` gives them; logits [B, num_classes])."""
        maps, pooled = self.backbone.distill_features(x)
        return maps, pooled, self.fc(pooled)


# Parameters with a 100-class classifier as published (CRD, CIFAR-100), in millions.
PUBLISHED = {
    "resnet20": 0.278,
    "resnet32": 0.473,
    "resnet56": 0.861,
    "resnet110": 1.73,
    "resnet8x4": 1.23,
    "resnet32x4": 7.43,
    "wrn_40_2": 2.25,
    "wrn_16_2": 0.70,
    "wrn_40_1": 0.57,
    "vgg8": 3.96,
    "vgg13": 9.46,
}

# Stage channels and the side of each stage map for a 32x32 input.
STAGES = {
    **{f"resnet{d}": ([16, 32, 64], [32, 16, 8]) for d in (20, 32, 56, 110)},
    "resnet8x4": ([64, 128, 256], [32, 16, 8]),
    "resnet32x4": ([64, 128, 256], [32, 16, 8]),
    "wrn_40_2": ([32, 64, 128], [32, 16, 8]),
    "wrn_16_2": ([32, 64, 128], [32, 16, 8]),
    "wrn_40_1": ([16, 32, 64], [32, 16, 8]),
    "vgg8": ([128, 256, 512, 512], [16, 8, 4, 4]),
    "vgg13": ([128, 256, 512, 512], [16, 8, 4, 4]),
}


def test_every_benchmark_arch_is_registered():
    """Every fixed-size architecture but the ViTs (tests/test_vit.py) is a benchmark one."""
    from bowflow.vit import VIT_SIZES

    assert set(OWN_SIZES) - set(VIT_SIZES) == set(PUBLISHED) == set(STAGES)


@pytest.mark.parametrize("arch", sorted(PUBLISHED))
def test_parameter_count_matches_the_published_size(arch):
    params = count_parameters(Classifier(build_backbone(arch, 0, 0), 100))
    assert abs(params / 1e6 - PUBLISHED[arch]) <= 0.01 * PUBLISHED[arch], f"{arch}: {params:,}"


@pytest.mark.parametrize("arch", sorted(STAGES))
def test_forward_shapes(arch):
    channels, sides = STAGES[arch]
    model = Classifier(build_backbone(arch, 0, 0), 100).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        maps, pooled, logits = model.features_and_logits(x)
        assert [tuple(m.shape) for m in maps] == [(2, c, s, s) for c, s in zip(channels, sides)]
        assert model.backbone.channels == channels
        assert [32 // r for r in model.backbone.reductions] == sides
        assert pooled.shape == (2, channels[-1]) and logits.shape == (2, 100)
        assert torch.allclose(pooled, model.backbone(x), atol=1e-6)  # pooled last stage map
        assert torch.allclose(logits, model(x), atol=1e-6)


# What RepDistiller's `forward(x, is_feat=True)` returns on a 32x32 input, per family
# (models/resnet.py, wrn.py, vgg.py): feat[0] the stem / VGG block 0 output, feat[1:-1]
# the block outputs its AT, NST and VID losses read, feat[-1] the pooled vector; the hint
# is feat[2]. (channels, side) of feat[0] and of each of feat[1:-1].
BENCHMARK_FEAT = {
    "resnet20": ((16, 32), [(16, 32), (32, 16), (64, 8)]),
    "resnet8x4": ((32, 32), [(64, 32), (128, 16), (256, 8)]),
    "wrn_40_2": ((16, 32), [(32, 32), (64, 16), (128, 8)]),
    "wrn_16_2": ((16, 32), [(32, 32), (64, 16), (128, 8)]),
    "vgg8": ((64, 32), [(128, 16), (256, 8), (512, 4), (512, 4)]),
    "vgg13": ((64, 32), [(128, 16), (256, 8), (512, 4), (512, 4)]),
}


@pytest.mark.parametrize("arch", sorted(BENCHMARK_FEAT))
def test_distill_features_are_the_benchmarks_feature_list(arch):
    stem_shape, feat_shapes = BENCHMARK_FEAT[arch]
    net = build_backbone(arch, 0, 0).eval()
    with torch.no_grad():
        for bn in (m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.5, 0.5)  # so BN-ReLU visibly changes a map
        x = torch.randn(2, 3, 32, 32)
        maps, pooled = net.distill_features(x)
        # the benchmark's forward, restated on our modules: stem (feat[0], excluded), then
        # each stage's raw output, then the pooled vector after any final BN-ReLU
        h = net.stem(x)
        assert tuple(h.shape[1:]) == (stem_shape[0], stem_shape[1], stem_shape[1])
        expected = []
        for stage in net.stages:
            h = stage(h)
            expected.append(h)
    assert [(m.shape[1], m.shape[2]) for m in maps] == feat_shapes
    for ours, reference in zip(maps, expected):
        assert torch.equal(ours, reference)
    assert torch.allclose(pooled, net.head_norm(expected[-1]).mean(dim=(2, 3)), atol=1e-6)
    assert torch.allclose(pooled, net(x), atol=1e-6)  # = the classifier's input
    # FitNet's hint_stage 'stage2' is the benchmark's hint layer 2
    assert maps[net.stage_index("stage2")].shape[1:3] == torch.Size(feat_shapes[1])
    if arch.startswith("wrn"):  # pre-activation: the last map is the raw block output
        assert (maps[-1] < 0).any() and not torch.allclose(maps[-1], net.feature_maps(x)[-1])


def test_own_width_and_depth_build_the_same_net():
    for arch, (width, depth) in OWN_SIZES.items():
        zero, own = build_backbone(arch, 0, 0), build_backbone(arch, width, depth)
        assert count_parameters(zero) == count_parameters(own), arch


@pytest.mark.parametrize(
    "arch, width, depth, message",
    [
        ("resnet56", 4, 0, "width must be 0 (the architecture's own) or 16 for arch 'resnet56'"),
        ("resnet56", 0, 20, "depth must be 0 (the architecture's own) or 56 for arch 'resnet56'"),
        ("wrn_40_2", 4, 40, "width must be 0 (the architecture's own) or 2 for arch 'wrn_40_2'"),
        ("vgg8", 64, 13, "depth must be 0 (the architecture's own) or 8 for arch 'vgg8'"),
    ],
)
def test_other_width_or_depth_is_a_clear_error(arch, width, depth, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        build_backbone(arch, width, depth)


# The existing architectures, fingerprinted before the CIFAR ones were added: parameter
# count, number of state-dict entries and a digest of their names and shapes.
OLD = [
    ("convnet", 4, 0, 4684, 36, "d0cdaafa9753"),
    ("convnet", 32, 0, 287456, 36, "2afdcb32eb5c"),
    ("resnet", 8, 18, 175752, 120, "7b84e41ba582"),
    ("resnet", 16, 34, 1333328, 216, "a74e386aa913"),
    ("wrn", 1, 10, 77200, 44, "85eafca66897"),
    ("wrn", 4, 28, 5846480, 153, "385b40478462"),
]


@pytest.mark.parametrize("arch, width, depth, params, entries, digest", OLD)
def test_old_architectures_are_unchanged(arch, width, depth, params, entries, digest):
    net = build_backbone(arch, width, depth)
    state = net.state_dict()
    names = repr([(k, tuple(v.shape)) for k, v in state.items()])
    assert (count_parameters(net), len(state)) == (params, entries)
    assert hashlib.sha1(names.encode()).hexdigest()[:12] == digest
    assert net.reductions == [2**i for i in range(len(net.channels))]
