"""Evaluation protocols on frozen features: linear probe, k-NN and few-shot episodes.

Every function here takes feature tensors that were already extracted from a frozen model
(once per model, elsewhere) and returns accuracies in percent (0-100) as Python floats.
Nothing here touches a model or a data loader, and every random choice comes from a
`torch.Generator` seeded by the caller's `seed`, so the numbers are reproducible.

Shapes used throughout:
    N  training (or few-shot pool) images     D  feature dimension
    M  test images                            C  number of classes

Few-shot fairness: the episodes (which classes, which support and query images) are drawn
from the labels and the seed only, never from the features. Two models evaluated on the same
images with the same seed therefore answer exactly the same episodes, so their difference
is not blurred by episode sampling noise.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "linear_probe",
    "knn_accuracy",
    "check_few_shot",
    "sample_episodes",
    "few_shot",
    "few_shot_reference_loop",
    "full_precision",
]


# ----------------------------------------------------------------------------------------
# Shared helpers


@contextlib.contextmanager
def full_precision() -> Iterator[None]:
    """Autocast off (CPU and CUDA) for the enclosed feature extraction and protocols.

    The evaluate stage extracts features and scores them in float32 whatever the training
    compute mode (docs/precision.md). The protocols below cast their inputs to float32,
    but a cast cannot restore what a bf16 forward pass already rounded (8 bits of
    mantissa: cosine similarities near 1 and k-NN neighbour ranks move), and under an
    autocast region their own matrix products (k-NN similarities, the linear probe, the
    few-shot prototypes) would run in bf16 too. This makes both independent of any
    autocast region the caller may be in.
    """
    with torch.autocast("cpu", enabled=False):
        if torch.cuda.is_available():
            with torch.autocast("cuda", enabled=False):
                yield
        else:
            yield


def _check_pair(x: Tensor, y: Tensor, name: str, num_classes: int | None = None) -> None:
    """Raise ValueError unless x is [N, D] and y is an int64 vector [N] of labels < num_classes."""
    if x.dim() != 2:
        raise ValueError(f"{name}_x must be [N, D], got shape {tuple(x.shape)}")
    if y.dim() != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"{name}_y must be [N] with N={x.shape[0]} to match {name}_x, got shape {tuple(y.shape)}")
    if y.dtype != torch.int64:
        raise ValueError(f"{name}_y must be int64 class labels, got {y.dtype}")
    if x.shape[0] == 0:
        raise ValueError(f"{name}_x is empty")
    if num_classes is not None and (int(y.min()) < 0 or int(y.max()) >= num_classes):
        raise ValueError(f"{name}_y labels must lie in [0, {num_classes}), got range [{int(y.min())}, {int(y.max())}]")


@contextlib.contextmanager
def _one_intra_op_thread() -> Iterator[None]:
    """Run the block (or, as a decorator, the function) on 1 intra-op thread, then restore.

    The probe's ~10^4 sequential steps and the few-shot episodes work on tensors of a few
    hundred rows, too small for threads to pay for their synchronisation, and when the
    cores are shared with other jobs every parallel op waits for a descheduled worker.
    Measured on a busy 2-core machine, 2 threads vs 1: linear probe N=25,000, D=256
    90 s vs 8 s; 4,000 episodes batched 1.1 s vs 0.35 s, per-episode loop 9.2 s vs 1.3 s.
    (k-NN is left alone: its [1024, D] x [D, N] similarity blocks do gain from threads.)
    """
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


# ----------------------------------------------------------------------------------------
# Linear probe


def linear_probe(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    epochs: int = 100,
    lr: float = 0.05,
    weight_decay: float = 1e-4,
    batch_size: int = 256,
    seed: int = 0,
) -> dict[str, float]:
    """Multinomial logistic regression on standardised frozen features.

    train_x [N, D] float, train_y [N] int64, test_x [M, D], test_y [M] int64.
    Returns {"accuracy": test top-1 %, "train_accuracy": train top-1 %}.

    Steps:
      1. Standardise every feature with the TRAIN mean and variance,
         x' = (x - mean) / sqrt(var + 1e-5): a BatchNorm without affine parameters, frozen
         at the training statistics (eps 1e-5 as in nn.BatchNorm1d; it also keeps dead,
         constant features at 0 instead of dividing by 0).
      2. One nn.Linear(D, C), zero-initialised. The loss is convex, so the start point does
         not change the optimum, and zeros spend no random numbers.
      3. Cross-entropy, mini-batch SGD with Nesterov momentum 0.9, learning rate following
         a per-step cosine from `lr` down to 0 over all `epochs`.

    Defaults. Checked against sklearn's LogisticRegression (lbfgs, C=1) on the same
    standardised features, synthetic anisotropic ReLU clusters with (N, D, C) from
    (300, 32, 5) to (25,000, 256, 10) and (10,000, 1024, 50), easy (lbfgs 85-99 %) and
    hard (15-73 %): test accuracy 0 to +3 points from lbfgs on all ten.
      lr=0.05            per batch of 256. lr=0.5 was up to 7 points below lbfgs (N=300,
                         D=1024; noisy final iterates); lr=0.005 stops short of the optimum
                         (train accuracy 79-94 % where 0.05 reaches 89-100 %), a hidden
                         early stopping whose strength changes with N.
      weight_decay=1e-4  light L2 (the per-sample form of sklearn's C = 1 / (1e-4 N)): stops
                         separable few-hundred-image problems from growing unbounded weights;
                         accuracies were the same as with 0 on every case above.
      batch_size=256     98 steps/epoch at N=25,000: few enough that the per-step Python
                         overhead (~0.2-0.5 ms) keeps the whole probe to seconds.
      epochs=100         with the cosine ending at lr 0 the result is a settled solution,
                         and N=300 still gets 200 steps.
    Cost: N=25,000, D=256 is 9,800 steps. The data are reshuffled once per epoch into a
    reused buffer so each step reads a contiguous slice, and the steps run on one intra-op
    thread (see _one_intra_op_thread).
    """
    _check_pair(train_x, train_y, "train", num_classes)
    _check_pair(test_x, test_y, "test", num_classes)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has D={train_x.shape[1]} but test_x has D={test_x.shape[1]}")
    if epochs < 1 or batch_size < 1:
        raise ValueError(f"epochs and batch_size must be >= 1, got {epochs} and {batch_size}")

    train_x = train_x.detach().float()
    test_x = test_x.detach().float()
    mean = train_x.mean(dim=0)  # [D]
    inv_std = torch.rsqrt(train_x.var(dim=0, unbiased=False) + 1e-5)  # [D]
    train_x = (train_x - mean) * inv_std  # [N, D]
    test_x = (test_x - mean) * inv_std  # [M, D]

    n, d = train_x.shape
    head = torch.nn.Linear(d, num_classes).to(train_x.device)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.zeros_(head.bias)
    opt = torch.optim.SGD(head.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=weight_decay)

    gen = torch.Generator().manual_seed(seed)  # CPU generator: shuffles are device-independent
    total_steps = epochs * math.ceil(n / batch_size)
    step = 0
    epoch_x, epoch_y = torch.empty_like(train_x), torch.empty_like(train_y)  # [N, D], [N]
    with torch.enable_grad(), _one_intra_op_thread():  # tiny steps: see _one_intra_op_thread
        for _ in range(epochs):
            perm = torch.randperm(n, generator=gen).to(train_x.device)
            torch.index_select(train_x, 0, perm, out=epoch_x)
            torch.index_select(train_y, 0, perm, out=epoch_y)
            for start in range(0, n, batch_size):
                xb = epoch_x[start : start + batch_size]  # [B, D]
                yb = epoch_y[start : start + batch_size]  # [B]
                cosine = 0.5 * (1.0 + math.cos(math.pi * step / total_steps))  # 1 -> 0
                opt.param_groups[0]["lr"] = lr * cosine
                loss = F.cross_entropy(head(xb), yb)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                step += 1

    with torch.no_grad():
        train_acc = (head(train_x).argmax(dim=1) == train_y).double().mean().item()
        test_acc = (head(test_x).argmax(dim=1) == test_y).double().mean().item()
    return {"accuracy": 100.0 * test_acc, "train_accuracy": 100.0 * train_acc}


# ----------------------------------------------------------------------------------------
# Weighted k-nearest neighbours


def knn_accuracy(
    train_x: Tensor,
    train_y: Tensor,
    test_x: Tensor,
    test_y: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.07,
    chunk_size: int = 1024,
) -> float:
    """Top-1 % of a temperature-weighted k-NN vote on cosine similarity.

    train_x [N, D], train_y [N] int64, test_x [M, D], test_y [M] int64.
    Each test row votes with its k most cosine-similar training rows, neighbour j weighing
    exp(sim_j / temperature) (k=20, temperature=0.07: the usual instance-discrimination
    protocol). k > N is clipped to N. Test rows are processed `chunk_size` at a time, so the
    similarity block is at most chunk_size x N floats (1024 x 25,000 x 4 B = 100 MB).
    """
    _check_pair(train_x, train_y, "train", num_classes)
    _check_pair(test_x, test_y, "test", num_classes)
    if train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"train_x has D={train_x.shape[1]} but test_x has D={test_x.shape[1]}")
    if k < 1 or temperature <= 0:
        raise ValueError(f"need k >= 1 and temperature > 0, got k={k}, temperature={temperature}")

    k = min(k, train_x.shape[0])
    train_n = F.normalize(train_x.detach().float(), dim=1)  # [N, D]
    test_n = F.normalize(test_x.detach().float(), dim=1)  # [M, D]
    correct = 0
    for start in range(0, test_n.shape[0], chunk_size):
        sim = test_n[start : start + chunk_size] @ train_n.T  # [B, N]
        top_sim, top_idx = sim.topk(k, dim=1)  # [B, k], sorted descending
        # Subtracting each row's best similarity rescales that row's weights by a constant,
        # which leaves the vote unchanged and keeps exp() finite for any temperature.
        weights = torch.exp((top_sim - top_sim[:, :1]) / temperature)  # [B, k]
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, train_y[top_idx], weights)  # [B, C]
        correct += int((votes.argmax(dim=1) == test_y[start : start + chunk_size]).sum())
    return 100.0 * correct / test_n.shape[0]


# ----------------------------------------------------------------------------------------
# Few-shot episodes


def check_few_shot(counts_per_class: dict[str, int], n_way: int, shots: list[int], n_query: int) -> None:
    """Raise ValueError if the few-shot settings cannot be met by these class sizes.

    counts_per_class maps each novel class name to its number of images. Every class may be
    drawn in an episode, so every class needs max(shots) + n_query images (support and
    query never overlap). Cheap: call it before extracting any features.
    """
    if n_way < 2:
        raise ValueError(f"few-shot: n_way must be >= 2 (1-way is trivially 100%), got {n_way}")
    if len(shots) == 0:
        raise ValueError("few-shot: shots must list at least one shot count, e.g. [1, 5]")
    if any(s < 1 for s in shots):
        raise ValueError(f"few-shot: every shot count must be >= 1, got {list(shots)}")
    if n_query < 1:
        raise ValueError(f"few-shot: n_query must be >= 1, got {n_query}")
    if len(counts_per_class) < n_way:
        raise ValueError(
            f"few-shot: n_way={n_way} but only {len(counts_per_class)} novel classes ({sorted(counts_per_class)})"
        )
    max_shot = max(shots)
    need = max_shot + n_query
    short = sorted((c, name) for name, c in counts_per_class.items() if c < need)
    if short:
        count, name = short[0]
        more = f" (and {len(short) - 1} more classes are short)" if len(short) > 1 else ""
        raise ValueError(
            f"few-shot: {max_shot} shots + {n_query} queries need {need} images per novel "
            f"class, but class '{name}' has {count}{more}"
        )


# Upper bound on the random sort keys the sampler holds at once (float64: 32 MB).
_SAMPLER_MAX_KEYS = 1 << 22


def _draw_episode_images(y: Tensor, n_way: int, per_class: int, n_episodes: int, seed: int) -> Tensor:
    """Random classes and images for E episodes, from the labels and the seed only.

    y [N] int64 labels. Returns int64 indices into y, [E, n_way, per_class]: row w of
    episode e holds per_class distinct images of that episode's class w (the n_way classes
    of an episode are distinct, drawn uniformly among the classes present in y).

    Every image of a class gets a uniform float64 key and the per_class smallest keys are
    kept, in increasing order. So the first k columns are the same for any per_class >= k,
    and one draw at n_query + max(shots) serves every shot count (see `sample_episodes` for
    how columns are split). (float64 keys: a tie, the only thing that could break this, has
    probability ~count^2 / 2^53 per class, about 1e-10 for 1,000 images.)
    """
    classes, y_class = torch.unique(y.cpu(), return_inverse=True)  # y_class [N] in 0..C-1
    num_cls = classes.numel()
    counts = torch.bincount(y_class, minlength=num_cls)  # [C]
    if n_way > num_cls or int(counts.min()) < per_class:
        raise ValueError(
            f"few-shot: cannot draw {n_way}-way episodes with {per_class} images per class "
            f"from {num_cls} classes of at least {int(counts.min())} images"
        )
    by_class = torch.argsort(y_class, stable=True)  # [N] indices grouped by class
    offsets = torch.cumsum(counts, 0) - counts  # [C] start of each group

    gen = torch.Generator().manual_seed(seed)
    # Classes of each episode: the n_way smallest of C uniform keys.
    cls_keys = torch.rand(n_episodes, num_cls, generator=gen, dtype=torch.float64)
    ep_cls = cls_keys.topk(n_way, dim=1, largest=False, sorted=True).indices  # [E, W]

    # Images: one key per member of each chosen class, padded to the largest class with
    # key 2.0 (> any uniform, so padding is never picked). Chunked over episodes so at
    # most _SAMPLER_MAX_KEYS keys exist; the chunk size depends on y and n_way only.
    max_count = int(counts.max())
    slot = torch.arange(max_count)  # [maxC]
    chunk = max(1, _SAMPLER_MAX_KEYS // (n_way * max_count))
    picked = []
    for start in range(0, n_episodes, chunk):
        cls = ep_cls[start : start + chunk]  # [e, W]
        keys = torch.rand(*cls.shape, max_count, generator=gen, dtype=torch.float64)
        keys.masked_fill_(slot >= counts[cls].unsqueeze(-1), 2.0)  # [e, W, maxC]
        pos = keys.topk(per_class, dim=-1, largest=False, sorted=True).indices  # [e, W, P]
        picked.append(by_class[offsets[cls].unsqueeze(-1) + pos])  # position in class -> index
    return torch.cat(picked).to(y.device)  # [E, W, P]


def sample_episodes(
    y: Tensor, n_way: int, n_shot: int, n_query: int, n_episodes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """The episodes `few_shot` evaluates for shot count n_shot (for inspection and tests).

    y [N] int64 labels. Returns support [E, n_way, n_shot] and query [E, n_way, n_query],
    int64 indices into y; row w of an episode is its class w, so the episode-local label of
    query[e, w, :] is w. Support and query images never overlap.

    Depends only on (y, n_way, n_shot, n_query, n_episodes, seed), never on features, so
    every model evaluated with the same seed sees the same episodes. Within one seed the
    shot counts are paired: the queries are the first n_query drawn images of each class and
    the support the next n_shot, so every shot count answers the same queries with nested
    supports (the 1-shot support is the first image of the 5-shot one). Differences between
    shot counts are then free of query-sampling noise, and `few_shot` gathers each query
    batch once for all shot counts.
    """
    images = _draw_episode_images(y, n_way, n_query + n_shot, n_episodes, seed)
    return images[..., n_query:], images[..., :n_query]


def _summarise(correct: Tensor, n_queries: int) -> dict:
    """correct [E] int number of right queries per episode -> {"mean", "ci95", "episodes"}.

    mean = average episode accuracy (%); ci95 = 1.96 * std / sqrt(E) (%), with the population
    std (ddof=0, as the usual few-shot protocol computes it with np.std; also defined for E=1).
    """
    acc = correct.double().cpu() / n_queries  # [E] in [0, 1]
    e = acc.numel()
    std = acc.std(correction=0).item()
    return {
        "mean": 100.0 * acc.mean().item(),
        "ci95": 100.0 * 1.96 * std / math.sqrt(e),
        "episodes": e,
    }


def _prepare_few_shot(
    x: Tensor, y: Tensor, n_way: int, shots: list[int], n_query: int, n_episodes: int, seed: int
) -> tuple[Tensor, Tensor]:
    """Validate, then return (normalised float32 features [N, D], episode images [E, W, P]).

    P = n_query + max(shots); query = images[..., :n_query] for every shot count n, and
    support = images[..., n_query : n_query + n] (as in `sample_episodes`).
    """
    _check_pair(x, y, "few_shot")
    if n_episodes < 1:
        raise ValueError(f"few-shot: n_episodes must be >= 1, got {n_episodes}")
    labels, counts = torch.unique(y.cpu(), return_counts=True)
    check_few_shot({str(int(c)): int(n) for c, n in zip(labels, counts)}, n_way, shots, n_query)
    images = _draw_episode_images(y, n_way, n_query + max(shots), n_episodes, seed)
    # float32: the batched path is bound by reading the query rows, and float64 made it
    # 2-3x slower. Both paths share every float op (same normalised features, same
    # embedding_bag prototypes, same gathered queries) except bmm vs mm for the final
    # W-way dot products, which may round differently by an ulp; that can only flip a
    # prediction on a cosine tie within ~1e-7. On 300,000 Gaussian-feature queries,
    # float32 and float64 predictions did not differ once.
    return F.normalize(x.detach().float(), dim=1), images


def _prototypes(xn: Tensor, support: Tensor) -> Tensor:
    """xn [N, D] normalised features, support [..., W, n] indices -> prototypes [..., W, D].

    Prototype = mean of the class's normalised support features, then L2-normalised so that
    its dot product with a normalised query is their cosine. `embedding_bag(mode="mean")`
    averages each row of indices without materialising the [..., W, n, D] gather (3x faster
    at 50 shots), and gives bit-identical bags whether called on one episode or on a batch.
    """
    n_shot = support.shape[-1]
    bags = F.embedding_bag(support.reshape(-1, n_shot), xn, mode="mean")  # [(...)*W, D]
    return F.normalize(bags, dim=-1).reshape(*support.shape[:-1], xn.shape[1])


@_one_intra_op_thread()
def few_shot(
    x: Tensor,
    y: Tensor,
    n_way: int,
    shots: list[int],
    n_query: int = 15,
    n_episodes: int = 1000,
    seed: int = 0,
    episodes_per_batch: int = 256,
) -> dict[int, dict]:
    """Prototype (cosine nearest-class-mean) few-shot accuracy, many episodes per matmul.

    x [N, D] frozen features of the novel-class pool, y [N] int64 labels.
    Returns {n: {"mean": %, "ci95": %, "episodes": E}} for each n in shots.

    In each episode the prototype of a class is the mean of its L2-normalised support
    features; a query is assigned to the prototype of highest cosine similarity. (The
    protocol's cosine classifier multiplies similarities by a scale of 10 before the
    softmax; a positive scale never changes the argmax, so it is omitted.)

    Episodes come from the labels and the seed only (`sample_episodes`), so two models
    evaluated with the same seed answer the same episodes. A batch of B = episodes_per_batch
    episodes is one gather of its queries (shared by all shot counts), then per shot count
    one embedding_bag (prototypes) and one bmm. The largest temporary is the query block,
    B * n_way * n_query * D * 4 bytes (256 * 5 * 15 * 256 * 4 = 20 MB). Runs on one
    intra-op thread (_one_intra_op_thread).
    """
    xn, images = _prepare_few_shot(x, y, n_way, shots, n_query, n_episodes, seed)
    labels = torch.arange(n_way, device=xn.device).repeat_interleave(n_query)  # [W*Q]
    correct: dict[int, list[Tensor]] = {n: [] for n in shots}
    for start in range(0, n_episodes, episodes_per_batch):
        batch = images[start : start + episodes_per_batch]  # [B, W, P]
        queries = xn[batch[..., :n_query].reshape(batch.shape[0], -1)]  # [B, W*Q, D]
        for n in shots:  # same queries for every shot count; only the prototypes change
            protos = _prototypes(xn, batch[..., n_query : n_query + n])  # [B, W, D]
            sim = torch.bmm(queries, protos.transpose(1, 2))  # [B, W*Q, W]
            correct[n].append((sim.argmax(dim=2) == labels).sum(dim=1))  # [B]
    return {n: _summarise(torch.cat(correct[n]), n_way * n_query) for n in shots}


@_one_intra_op_thread()
def few_shot_reference_loop(
    x: Tensor,
    y: Tensor,
    n_way: int,
    shots: list[int],
    n_query: int = 15,
    n_episodes: int = 1000,
    seed: int = 0,
) -> dict[int, dict]:
    """Same protocol and episodes as `few_shot`, one Python iteration per episode.

    Kept as the plain, obviously-correct baseline: the tests check that `few_shot` returns
    exactly the same numbers, and benchmarks/bench_fewshot.py times the two.
    """
    xn, images = _prepare_few_shot(x, y, n_way, shots, n_query, n_episodes, seed)
    labels = torch.arange(n_way, device=xn.device).repeat_interleave(n_query)  # [W*Q]
    results = {}
    for n in shots:
        correct = torch.zeros(n_episodes, dtype=torch.int64)
        for e in range(n_episodes):
            query = images[e, :, :n_query]  # [W, Q]
            support = images[e, :, n_query : n_query + n]  # [W, n]
            protos = _prototypes(xn, support)  # [W, D]
            queries = xn[query.reshape(-1)]  # [W*Q, D]
            pred = (queries @ protos.T).argmax(dim=1)  # [W*Q]
            correct[e] = int((pred == labels).sum())
        results[n] = _summarise(correct, n_way * n_query)
    return results
