"""Visual words and BoW targets."""

import torch

from bowflow import bow
from bowflow.models import Normalizer
from bowflow.networks import build_backbone


def test_nearest_words_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    maps, words = torch.randn(3, 8, 4, 4, generator=g), torch.randn(10, 8, generator=g)
    codes = bow.nearest_words(maps, words)
    flat = maps.flatten(2).transpose(1, 2)
    brute = torch.cdist(flat, words[None].expand(3, -1, -1)).argmin(dim=2)
    assert codes.shape == (3, 16) and torch.equal(codes, brute)


def test_targets_histogram_and_binary():
    codes = torch.tensor([[0, 0, 1, 3], [2, 2, 2, 2]])
    hist = bow.bow_targets(codes, 4, "histogram")
    assert torch.allclose(hist, torch.tensor([[0.5, 0.25, 0, 0.25], [0, 0, 1, 0]]))
    binary = bow.bow_targets(codes, 4, "binary")
    assert torch.allclose(binary, torch.tensor([[1 / 3, 1 / 3, 0, 1 / 3], [0, 0, 1, 0]]))
    assert torch.allclose(bow.entropy(hist[1:]), torch.zeros(1))


def test_vocabulary_and_cached_codes_from_a_teacher():
    teacher = build_backbone("convnet", 4).eval()
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    normalizer = Normalizer.fit(images)
    features = bow.sample_local_features(teacher, images, "stage2", 300, 8, torch.device("cpu"), normalizer, seed=0)
    assert features.shape == (300, 8)
    km = bow.kmeans(features, 6, 5, seed=0)
    assert km["words"].shape == (6, 8) and km["inertia"] > 0 and km["word_counts"].sum() == 300
    codes = bow.assign_codes(teacher, images, "stage2", km["words"], 8, torch.device("cpu"), normalizer)
    assert codes.shape == (20, 16) and codes.dtype == torch.int16
    again = bow.kmeans(features, 6, 5, seed=0)
    assert torch.equal(km["words"], again["words"]), "k-means is seeded"


def test_a_vit_parent_gives_a_vocabulary_over_its_patch_tokens():
    """BoWNet from a ViT (DINO-ViT, MAE): a block's patch tokens on the 4 x 4 grid are the
    local features, so words and per-image codes come out as from a conv stage."""
    teacher = build_backbone("vit_p2", 16, 2).eval()
    images = torch.randint(0, 256, (20, 3, 8, 8), dtype=torch.uint8)
    normalizer = Normalizer.fit(images)
    features = bow.sample_local_features(teacher, images, "stage2", 200, 8, torch.device("cpu"), normalizer, seed=0)
    assert features.shape == (200, 16)
    words = bow.kmeans(features, 5, 5, seed=0)["words"]
    codes = bow.assign_codes(teacher, images, "stage2", words, 8, torch.device("cpu"), normalizer)
    assert codes.shape == (20, 16) and int(codes.max()) < 5  # one word per token


def test_too_many_words_is_a_clear_error():
    import pytest

    with pytest.raises(ValueError, match="vocab.size=50 is larger than the 10 sampled features"):
        bow.kmeans(torch.randn(10, 4), 50, 2, seed=0)


def test_bownet_views_carry_the_cutmix_targets_and_its_loss_is_per_sample():
    """BoWNet draws CutMix (which pairs images of the batch) in `views`, on the global batch,
    so the mixed BoW targets travel with the images to each process's rows; its soft CE is a
    mean of per-sample terms, so halves of the batch average to the whole (BN on running
    statistics), and processes need no gather."""
    from bowflow import augment
    from bowflow.roles.base import get_method

    n = 16
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 3, 16, 16), dtype=torch.uint8, generator=g)
    codes = torch.randint(0, 8, (n, 16), generator=g)
    cls = get_method("bownet")
    params = cls.Params(method="bownet", arch="convnet", width=4, batch_size=n)
    torch.manual_seed(0)
    method = cls(
        params,
        build_backbone("convnet", 4),
        cls.inputs(normalizer=Normalizer.fit(images), image_size=16, codes=codes, num_words=8, parent={}),
    )
    index = torch.randperm(n, generator=g)
    views = method.views(images[index], index, torch.Generator().manual_seed(1))
    again = torch.Generator().manual_seed(1)
    x = augment.make_view(images[index], method.view, again)
    x, targets = augment.cutmix(x, bow.bow_targets(codes[index], 8, "histogram"), p=params.cutmix_p, generator=again)
    assert torch.equal(views["images"], x) and torch.equal(views["targets"], targets)
    method.eval()
    with torch.no_grad():
        whole = method.step(views, index)[0]
        halves = [
            method.step({k: v[rows] for k, v in views.items()}, index[rows])[0]
            for rows in (slice(0, n // 2), slice(n // 2, n))
        ]
    assert torch.allclose((halves[0] + halves[1]) / 2, whole, rtol=1e-5, atol=1e-6)
