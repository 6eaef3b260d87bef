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
    features = bow.sample_local_features(teacher, images, "stage2", 300, 8, torch.device("cpu"),
                                         normalizer, seed=0)
    assert features.shape == (300, 8)
    km = bow.kmeans(features, 6, 5, seed=0)
    assert km["words"].shape == (6, 8) and km["inertia"] > 0 and km["word_counts"].sum() == 300
    codes = bow.assign_codes(teacher, images, "stage2", km["words"], 8, torch.device("cpu"), normalizer)
    assert codes.shape == (20, 16) and codes.dtype == torch.int16
    again = bow.kmeans(features, 6, 5, seed=0)
    assert torch.equal(km["words"], again["words"]), "k-means is seeded"


def test_too_many_words_is_a_clear_error():
    import pytest
    with pytest.raises(ValueError, match="vocab.size=50 is larger than the 10 sampled features"):
        bow.kmeans(torch.randn(10, 4), 50, 2, seed=0)
