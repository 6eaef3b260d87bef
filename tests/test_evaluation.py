"""Tests for bowflow.evaluation: linear probe, k-NN and few-shot protocols on synthetic features."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from bowflow.evaluation import (
    _summarise,
    check_few_shot,
    few_shot,
    few_shot_reference_loop,
    knn_accuracy,
    linear_probe,
    sample_episodes,
)


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Run each test on one intra-op thread, then restore the count (tests may change it).

    The probe and few-shot functions pin themselves to one thread; this does the same for
    k-NN and the helpers, whose tensors here are tiny, so that test time does not swing
    with the load of a shared machine.
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def clusters(n_classes: int, per_class: int, dim: int, spread: float, seed: int = 0):
    """x [C*P, D] = 10 * unit class mean + spread * N(0, 1) noise, y [C*P] int64 (shuffled)."""
    gen = torch.Generator().manual_seed(seed)
    means = torch.nn.functional.normalize(torch.randn(n_classes, dim, generator=gen), dim=1) * 10
    y = torch.arange(n_classes).repeat_interleave(per_class)
    y = y[torch.randperm(len(y), generator=gen)]
    x = means[y] + spread * torch.randn(len(y), dim, generator=gen)
    return x, y


def noise(n: int, dim: int, n_classes: int, seed: int = 0):
    """Features that carry no information about the labels."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(n, dim, generator=gen), torch.randint(0, n_classes, (n,), generator=gen)


# ----------------------------------------------------------------------------------------
# Linear probe


def test_linear_probe_separable_clusters_100():
    """Class means 10 apart against unit noise in 32 dims: linearly separable, so a
    working probe classifies every train and test image right."""
    x, y = clusters(5, 120, 32, spread=1.0)
    out = linear_probe(x[:400], y[:400], x[400:], y[400:], num_classes=5, epochs=30)
    assert set(out) == {"accuracy", "train_accuracy"}
    assert isinstance(out["accuracy"], float)
    assert out["accuracy"] == 100.0 and out["train_accuracy"] == 100.0


def test_linear_probe_noise_near_chance():
    x, y = noise(1400, 32, 4)
    out = linear_probe(x[:1000], y[:1000], x[1000:], y[1000:], num_classes=4, epochs=20)
    # Chance is 25 %; 400 test images: binomial sd 2.2 points, +-8 is 3.7 sd (data seeds
    # 0-5 gave 22.5-30.5). The probe fits noise (36 % on its training images): scoring 400
    # of them instead of the held-out ones gives 34.75, outside.
    assert 17.0 < out["accuracy"] < 33.0


def test_linear_probe_matches_sklearn_logistic_regression():
    from sklearn.linear_model import LogisticRegression

    x, y = clusters(6, 400, 64, spread=4.0, seed=1)  # overlapping classes: ~75 %, not 100 %
    x = torch.relu(x) * torch.linspace(0.1, 5.0, 64)  # skewed, anisotropic features
    tr, te = slice(0, 1600), slice(1600, None)
    ours = linear_probe(x[tr], y[tr], x[te], y[te], num_classes=6)["accuracy"]

    mean, std = x[tr].mean(0), x[tr].std(0, unbiased=False)
    ref = LogisticRegression(max_iter=2000).fit(((x[tr] - mean) / std).numpy(), y[tr].numpy())
    ref_acc = 100.0 * (ref.predict(((x[te] - mean) / std).numpy()) == y[te].numpy()).mean()
    assert 50.0 < ref_acc < 98.0, "the problem should be neither trivial nor hopeless"
    assert abs(ours - ref_acc) < 3.0, (ours, ref_acc)


def test_linear_probe_deterministic_and_thread_count_restored():
    x, y = clusters(4, 60, 16, spread=6.0)
    a = linear_probe(x[:160], y[:160], x[160:], y[160:], 4, epochs=10, seed=3)
    torch.set_num_threads(2)  # probe and few-shot run on one thread and must restore this
    b = linear_probe(x[:160], y[:160], x[160:], y[160:], 4, epochs=10, seed=3)
    assert torch.get_num_threads() == 2
    assert a == b
    few_shot(x, y, n_way=3, shots=[1], n_query=5, n_episodes=4)
    assert torch.get_num_threads() == 2


def test_linear_probe_rejects_bad_labels():
    x, y = clusters(3, 10, 8, spread=1.0)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        linear_probe(x, y, x, y, num_classes=2)


# ----------------------------------------------------------------------------------------
# k-NN


def test_knn_separable_clusters_100():
    x, y = clusters(5, 60, 32, spread=1.0)
    assert knn_accuracy(x[:200], y[:200], x[200:], y[200:], num_classes=5) == 100.0


def test_knn_of_the_training_points_themselves_gives_their_labels():
    """Each test point is a training point (with random labels, nothing to learn): its
    nearest neighbour is itself at cosine 1, whose vote exp(1 / 0.07) outweighs each of
    its 19 other neighbours (cosine at most 0.7 here) by e^4.3 or more, together by more
    than 3x, so every label comes back, at k = 1 and at the default k = 20, also with
    each training point given twice."""
    x, y = noise(300, 32, 10, seed=3)
    assert knn_accuracy(x, y, x, y, num_classes=10, k=1) == 100.0
    assert knn_accuracy(x, y, x, y, num_classes=10) == 100.0
    assert knn_accuracy(torch.cat([x, x]), torch.cat([y, y]), x, y, num_classes=10, chunk_size=7) == 100.0
    # the training labels are what is read: shifted by one class, every answer is wrong
    shifted = (y + 1) % 10
    assert knn_accuracy(x, shifted, x, y, num_classes=10) == 0.0


def test_knn_noise_near_chance():
    x, y = noise(2400, 32, 4)
    acc = knn_accuracy(x[:2000], y[:2000], x[2000:], y[2000:], num_classes=4)
    assert 17.0 < acc < 33.0


def test_knn_k_larger_than_train_set_and_chunking():
    x, y = clusters(3, 20, 8, spread=4.0)
    train_x, train_y, test_x, test_y = x[:12], y[:12], x[12:], y[12:]
    big_k = knn_accuracy(train_x, train_y, test_x, test_y, 3, k=1000)
    assert big_k == knn_accuracy(train_x, train_y, test_x, test_y, 3, k=12)
    assert big_k == knn_accuracy(train_x, train_y, test_x, test_y, 3, k=1000, chunk_size=5)


def test_knn_votes_are_similarity_weighted():
    # One neighbour of class 0 at cosine 1.0, two of class 1 at cosine 0.8: an unweighted
    # vote says 1; exp(sim / 0.07) gives class 0 a weight e^(0.2/0.07) ~ 17x each class-1 one.
    train_x = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
    train_y = torch.tensor([0, 1, 1])
    test_x, test_y = torch.tensor([[2.0, 0.0]]), torch.tensor([0])
    assert knn_accuracy(train_x, train_y, test_x, test_y, 2, k=3) == 100.0
    assert knn_accuracy(train_x, train_y, test_x, test_y, 2, k=3, temperature=100.0) == 0.0


# ----------------------------------------------------------------------------------------
# Few-shot: argument checks


def test_check_few_shot_messages():
    counts = {"cat": 40, "dog": 80, "fox": 30, "owl": 100, "elk": 90}
    check_few_shot(counts, n_way=5, shots=[1, 5, 10], n_query=15)  # 10 + 15 = 25 <= 30: fine

    with pytest.raises(ValueError) as err:
        check_few_shot(counts, n_way=5, shots=[1, 50], n_query=15)
    assert str(err.value) == (
        "few-shot: 50 shots + 15 queries need 65 images per novel class, "
        "but class 'fox' has 30 (and 1 more classes are short)"
    )
    with pytest.raises(ValueError) as err:
        check_few_shot({"cat": 40, "dog": 80, "owl": 100}, n_way=5, shots=[1], n_query=15)
    assert str(err.value).startswith("few-shot: n_way=5 but only 3 novel classes")

    with pytest.raises(ValueError, match="at least one shot count"):
        check_few_shot(counts, n_way=5, shots=[], n_query=15)
    with pytest.raises(ValueError, match="every shot count must be >= 1"):
        check_few_shot(counts, n_way=5, shots=[0, 5], n_query=15)
    with pytest.raises(ValueError, match="n_query must be >= 1"):
        check_few_shot(counts, n_way=5, shots=[1], n_query=0)
    with pytest.raises(ValueError, match="n_way must be >= 2"):
        check_few_shot(counts, n_way=1, shots=[1], n_query=15)


def test_few_shot_checks_before_any_work():
    x, y = clusters(5, 30, 8, spread=1.0)
    with pytest.raises(ValueError, match="need 65 images per novel class, but class '0' has 30"):
        few_shot(x, y, n_way=5, shots=[1, 50], n_query=15)
    with pytest.raises(ValueError, match="n_way=6 but only 5 novel classes"):
        few_shot_reference_loop(x, y, n_way=6, shots=[1], n_query=15)


# ----------------------------------------------------------------------------------------
# Few-shot: episodes


def test_sample_episodes_are_valid_nested_and_feature_free():
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 8, (400,), generator=gen) * 3 + 7  # 8 arbitrary class ids, unequal sizes
    support, query = sample_episodes(y, n_way=5, n_shot=5, n_query=6, n_episodes=50, seed=1)
    assert support.shape == (50, 5, 5) and query.shape == (50, 5, 6)
    images = torch.cat([support, query], dim=2)  # [E, W, 11]
    labels = y[images]
    assert (labels == labels[..., :1]).all(), "one class per row"
    for e in range(50):
        assert labels[e, :, 0].unique().numel() == 5, "distinct classes per episode"
        assert images[e].unique().numel() == 5 * 11, "no image used twice in an episode"

    again = sample_episodes(y, 5, 5, 6, 50, seed=1)
    assert torch.equal(again[0], support) and torch.equal(again[1], query)
    other = sample_episodes(y, 5, 5, 6, 50, seed=2)
    assert not torch.equal(other[0], support)
    one_shot, one_shot_query = sample_episodes(y, 5, 1, 6, 50, seed=1)
    assert torch.equal(one_shot, support[..., :1]), "supports are nested across shot counts"
    assert torch.equal(one_shot_query, query), "every shot count answers the same queries"


def episode_accuracies_numpy(x, y, n_way, n, n_query, n_episodes, seed):
    """Independent float64 NumPy prototype classifier over `sample_episodes`' episodes."""
    support, query = sample_episodes(y, n_way, n, n_query, n_episodes, seed)
    xn = x.double().numpy()
    xn = xn / np.linalg.norm(xn, axis=1, keepdims=True)
    accs = []
    for s, q in zip(support.numpy(), query.numpy()):
        protos = xn[s].mean(axis=1)
        protos /= np.linalg.norm(protos, axis=1, keepdims=True)
        pred = (xn[q.reshape(-1)] @ protos.T).argmax(axis=1)
        accs.append((pred == np.repeat(np.arange(n_way), n_query)).mean())
    return np.array(accs)


def test_few_shot_uses_sampled_episodes_and_ci95_formula():
    x, y = clusters(6, 40, 16, spread=4.0, seed=2)  # mid-range accuracy
    out = few_shot(x, y, n_way=5, shots=[1, 5], n_query=7, n_episodes=60, seed=4)
    for n in (1, 5):
        accs = episode_accuracies_numpy(x, y, 5, n, 7, 60, seed=4)
        assert 30.0 < 100 * accs.mean() < 99.0
        assert out[n]["episodes"] == 60
        assert out[n]["mean"] == pytest.approx(100 * accs.mean(), abs=1e-9)
        assert out[n]["ci95"] == pytest.approx(100 * 1.96 * accs.std() / math.sqrt(60), abs=1e-9)


def test_summarise_ci95():
    # Episode accuracies 1, 0, 1, 0: mean 50 %, population std 0.5 -> 1.96 * 0.5 / 2 = 49 %.
    out = _summarise(torch.tensor([15, 0, 15, 0]), n_queries=15)
    assert out == {"mean": 50.0, "ci95": pytest.approx(49.0), "episodes": 4}
    assert _summarise(torch.tensor([3]), n_queries=4) == {"mean": 75.0, "ci95": 0.0, "episodes": 1}


def test_few_shot_separable_clusters_100():
    """Well-separated clusters (means 10 apart, unit noise): even one shot's prototype is
    nearer its class's queries than any other, in every episode: 100 %, an interval of 0."""
    x, y = clusters(8, 40, 32, spread=1.0)
    out = few_shot(x, y, n_way=5, shots=[1, 5], n_query=15, n_episodes=200)
    for n in (1, 5):
        assert out[n] == {"mean": 100.0, "ci95": 0.0, "episodes": 200}
        assert isinstance(out[n]["mean"], float) and isinstance(out[n]["ci95"], float)


def test_few_shot_noise_near_chance():
    x, y = noise(1000, 32, 5)
    out = few_shot(x, y, n_way=5, shots=[1, 5], n_query=15, n_episodes=300)
    # chance is 20 %. 300 episodes x 75 queries: ci95 ~0.5 points (se ~0.26); data seeds
    # 0-5 gave 19.3-20.5 for both shot counts; 1.5 points is ~6 se
    for n in (1, 5):
        assert abs(out[n]["mean"] - 20.0) < 1.5, out


def test_few_shot_deterministic_and_seed_dependent():
    x, y = clusters(6, 40, 16, spread=5.0)
    a = few_shot(x, y, 5, [1, 5], n_query=10, n_episodes=100, seed=7)
    assert a == few_shot(x, y, 5, [1, 5], n_query=10, n_episodes=100, seed=7)
    assert a != few_shot(x, y, 5, [1, 5], n_query=10, n_episodes=100, seed=8)
    # Shot counts are drawn once and nested: asking for 1 shot alone gives the same 1-shot result.
    assert few_shot(x, y, 5, [1], n_query=10, n_episodes=100, seed=7)[1] == a[1]


def test_batched_equals_reference_loop_exactly():
    gen = torch.Generator().manual_seed(5)
    y = torch.randint(0, 9, (600,), generator=gen)  # 9 classes, unequal sizes
    x = 0.3 * torch.randn(9, 48, generator=gen)[y] + torch.randn(600, 48, generator=gen)
    kwargs = dict(n_way=5, shots=[1, 5, 20], n_query=9, n_episodes=150, seed=11)
    reference = few_shot_reference_loop(x, y, **kwargs)
    assert 25.0 < reference[1]["mean"] < 95.0  # predictions are not trivial
    for per_batch in (1, 37, 256):  # 37 does not divide 150
        assert few_shot(x, y, **kwargs, episodes_per_batch=per_batch) == reference


# ----------------------------------------------------------------------------------------
# Benchmark smoke run (no timing assertions)


@pytest.mark.slow
def test_bench_fewshot_smoke():
    from benchmark_cli import benchmark_result

    result = benchmark_result("bench_fewshot", "--smoke")
    assert result["match"] is True and result["smoke"] is True
    # the speed-up is loop / batched (seconds rounded to 4 places, the speed-up to 2)
    loop, batched = result["loop_s"], result["batched_s"]
    low = (loop - 5e-5) / (batched + 5e-5) - 0.005
    high = (loop + 5e-5) / (batched - 5e-5) + 0.005 if batched > 5e-5 else math.inf
    assert low <= result["speedup"] <= high, result
    # Agreement means something only if predictions are not trivial: the benchmark scales
    # its class means so that every shot count's accuracy sits clear of chance (100 /
    # n_way) and of 100 %, and more shots do better.
    accuracy = result["accuracy"]
    assert sorted(accuracy, key=int) == [str(n) for n in result["shots"]]
    chance = 100 / result["n_way"]
    for n, acc in accuracy.items():
        assert chance + 2 * acc["ci95"] < acc["mean"] < 100 - 2 * acc["ci95"], (n, acc)
    means = [accuracy[str(n)]["mean"] for n in sorted(result["shots"])]
    assert means == sorted(means), accuracy
