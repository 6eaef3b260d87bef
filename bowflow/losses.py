"""The loss of each self-supervised method, as small pure functions.

Conventions (every function here):
- Pure: no module state. State that a method keeps between steps (MoCo's queue, DINO's
  centre, OBoW's running mean distance) is passed in and the updated value is returned;
  the method stores it (e.g. in a buffer) and passes it back next step.
- Stop-gradient is applied inside the function, to whatever is a target (BYOL/SimSiam
  target branch, MoCo keys and queue, SwAV codes, DINO teacher, BoW targets), so a caller
  cannot forget it.
- Losses are averaged over the batch. Two-view losses take one direction of prediction
  where the paper symmetrises by hand (the docstring shows the symmetric call).
- Computed in float32 with autocast off (`_float32`): the training loop runs under bf16
  autocast, and bf16 keeps 8 bits of mantissa, too few for cross-correlations near 1,
  cosine logits divided by a temperature of 0.1, or distances between nearby features.

Notation: B batch, D embedding size, K prototypes / words / queue length, C channels.
Defaults are the authors' settings (docs: shared/reference/METHODS.md).
"""
from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F


def _float32(fn):
    """Run `fn` with autocast off and its floating-point tensor arguments (also inside
    lists/tuples) cast to float32. Casting is differentiable, so gradients still flow."""
    def cast(x):
        if torch.is_tensor(x) and x.is_floating_point():
            return x.float()
        if isinstance(x, (list, tuple)):
            return type(x)(cast(v) for v in x)
        return x

    def first_tensor(values):
        for v in values:
            if torch.is_tensor(v):
                return v
            if isinstance(v, (list, tuple)):
                found = first_tensor(v)
                if found is not None:
                    return found
        return None

    @functools.wraps(fn)
    def run(*args, **kwargs):
        anchor = first_tensor(list(args) + list(kwargs.values()))
        device_type = anchor.device.type if anchor is not None else "cpu"
        with torch.autocast(device_type=device_type, enabled=False):
            return fn(*cast(args), **{k: cast(v) for k, v in kwargs.items()})
    return run


# ---------------------------------------------------------------- BYOL, SimSiam

@_float32
def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL: mean over the batch of 2 - 2 cos(p, sg(z)) = ||p/|p| - z/|z|||^2.

    p [B, D]: online predictor output; z [B, D]: target projection (EMA network), detached
    here. Range [0, 4]: 0 when aligned, 4 when opposite. The paper sums both directions:
    `byol_loss(p1, z2) + byol_loss(p2, z1)`.
    """
    return 2 - 2 * F.cosine_similarity(p, z.detach(), dim=1).mean()


@_float32
def simsiam_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """SimSiam: -mean cos(p, sg(z)). p [B, D] predictor output; z [B, D] projection of the
    other view by the same network, detached here (the stop-gradient is what prevents
    collapse without an EMA teacher). Range [-1, 1]. The paper averages both directions:
    `(simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2`.
    """
    return -F.cosine_similarity(p, z.detach(), dim=1).mean()


# ---------------------------------------------------------------- Barlow Twins

@_float32
def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 5e-3,
                      eps: float = 1e-5) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Barlow Twins: make the cross-correlation of the two views' embeddings the identity.

    z1, z2 [B, D] -> each dimension standardised over the batch (zero mean, unit biased
    variance, `eps` added to the variance as BatchNorm does, so a dead dimension gives 0,
    not NaN) -> C = z1n.T @ z2n / B [D, D], the correlation of dimension i of view 1 with
    dimension j of view 2 -> loss = sum_i (1 - C_ii)^2 + lambda * sum_{i!=j} C_ij^2.
    The first term makes each dimension invariant to the augmentation, the second removes
    redundancy between dimensions.
    lambda_offdiag = 5e-3 (paper, D = 8192): there are D(D-1) off-diagonal terms against
    D diagonal ones, so lambda must be small for both terms to matter.
    Returns (loss, {"on_diag": sum (1 - C_ii)^2, "off_diag": sum_{i!=j} C_ij^2}), the two
    terms unweighted and detached, for logging.
    """
    def standardise(z):
        return (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + eps)

    c = standardise(z1).T @ standardise(z2) / z1.shape[0]                    # [D, D]
    diagonal = torch.diagonal(c)
    on_diag = (1 - diagonal).pow(2).sum()
    off_diag = (c - torch.diag(diagonal)).pow(2).sum()
    return on_diag + lambda_offdiag * off_diag, {"on_diag": on_diag.detach(),
                                                 "off_diag": off_diag.detach()}


# ---------------------------------------------------------------- SimCLR, MoCo v2

@_float32
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """SimCLR's NT-Xent: each of the 2B embeddings must pick its other view among the
    2B - 1 others (1 positive, 2B - 2 in-batch negatives), by softmax over cosine / T.

    z1, z2 [B, D] (row i of both = two views of image i; L2-normalised here). Symmetric:
    both views act as anchors, mean over the 2B anchors. temperature = 0.5: best for
    CIFAR-10 at every batch size in the paper's appendix (its ImageNet runs use 0.1);
    a lower T weights the hardest negatives more.
    """
    b = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)                              # [2B, D]
    logits = (z @ z.T / temperature).fill_diagonal_(float("-inf"))          # no self-pairs
    positive = torch.arange(2 * b, device=z.device).roll(b)                  # i <-> i + B
    return F.cross_entropy(logits, positive)


@_float32
def infonce_with_queue(q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor,
                       temperature: float = 0.2) -> torch.Tensor:
    """MoCo v2's InfoNCE: query i must pick its key k_i against the K queued keys.

    q [B, D] query-encoder output (gradient flows here only); k [B, D] key-encoder (EMA)
    output of the other view; queue [K, D] keys of past batches, L2-normalised. q and k are
    L2-normalised here, k and queue detached. logits [B, 1 + K] = [q.k, q.queue^T] / T,
    cross-entropy with the positive at index 0.
    temperature = 0.2 (MoCo v2; MoCo v1 used 0.07). Authors' queue K = 65536 with key
    encoder momentum 0.999: a slowly moving encoder keeps old keys comparable.
    """
    q, k = F.normalize(q, dim=1), F.normalize(k.detach(), dim=1)
    positives = (q * k).sum(dim=1, keepdim=True)                            # [B, 1]
    negatives = q @ queue.detach().T                                        # [B, K]
    logits = torch.cat([positives, negatives], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(len(q), dtype=torch.long, device=q.device))


@torch.no_grad()
def update_queue(queue: torch.Tensor, keys: torch.Tensor, pointer: int) -> tuple[torch.Tensor, int]:
    """Ring buffer: write keys [B, D] into queue [K, D] at rows pointer, pointer + 1, ...
    (wrapping past row K - 1 to row 0), overwriting the oldest keys.

    Returns (new queue, new pointer = (pointer + B) mod K); the input queue is unchanged
    (one K x D copy per step: 32 MB at the authors' K = 65536, D = 128). Needs B <= K.
    """
    size, b = queue.shape[0], keys.shape[0]
    if b > size:
        raise ValueError(f"cannot push {b} keys into a queue of {size}")
    rows = (pointer + torch.arange(b, device=queue.device)) % size
    return queue.index_copy(0, rows, keys.detach().to(queue.dtype)), (pointer + b) % size


# ---------------------------------------------------------------- SwAV

@torch.no_grad()
@_float32
def sinkhorn(scores: torch.Tensor, epsilon: float = 0.05, iterations: int = 3) -> torch.Tensor:
    """SwAV's codes: soft assignments of B samples to K prototypes with equal partition.

    scores [B, K]: cosine similarities of L2-normalised embeddings and prototypes.
    Q = exp(scores / epsilon), then alternately scale columns (each prototype gets 1/K of
    the mass) and rows (each sample gets 1/B); done on log Q (logsumexp), so no score range
    can overflow or underflow. Returns codes [B, K] (no gradient): rows sum to 1, columns
    sum to about B/K (exactly after many iterations), so the batch cannot all go to one
    prototype (the collapse this prevents).
    epsilon = 0.05 (SwAV): small epsilon gives sharp codes, large ones blur them to uniform;
    iterations = 3 (SwAV): enough for approximately equal partition.
    """
    if iterations < 1:
        raise ValueError(f"sinkhorn needs at least one iteration, got {iterations}")
    b, k = scores.shape
    log_codes = scores / epsilon
    for _ in range(iterations):
        log_codes = log_codes - log_codes.logsumexp(dim=0, keepdim=True) - math.log(k)  # prototypes
        log_codes = log_codes - log_codes.logsumexp(dim=1, keepdim=True) - math.log(b)  # samples
    return torch.exp(log_codes + math.log(b))


@_float32
def swav_loss(scores1: torch.Tensor, scores2: torch.Tensor, codes1: torch.Tensor,
              codes2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SwAV swapped prediction: view 1's scores predict view 2's codes and vice versa.

    scores [B, K] prototype similarities; codes [B, K] from `sinkhorn` of the same view's
    scores (detached here). loss = 1/2 [CE(codes2, softmax(scores1 / T))
    + CE(codes1, softmax(scores2 / T))]. temperature = 0.1 (SwAV).
    """
    def cross_entropy(scores, codes):
        return -(codes.detach() * F.log_softmax(scores / temperature, dim=1)).sum(dim=1).mean()

    return (cross_entropy(scores1, codes2) + cross_entropy(scores2, codes1)) / 2


# ---------------------------------------------------------------- DINO

@_float32
def dino_loss(student_logits: list[torch.Tensor], teacher_logits: list[torch.Tensor],
              center: torch.Tensor, teacher_temp: float, student_temp: float = 0.1) -> torch.Tensor:
    """DINO: cross-entropy between the teacher's centred, sharpened softmax of one view and
    the student's softmax of every other view.

    student_logits: V tensors [B, D], the global views first, then the local crops;
    teacher_logits: G tensors [B, D] (G <= V) of the same global views in the same order
    (the teacher sees global views only). center [1, D] (see `update_center`).
    teacher p_t = softmax((t - center) / teacher_temp), detached; student log p_s =
    log_softmax(s / student_temp). loss = mean over pairs (g, v) with v != g of
    mean_batch sum_D -p_t[g] log p_s[v]: same-view pairs are skipped (trivial to match).
    student_temp = 0.1 (DINO); teacher_temp from `teacher_temperature`. Centring alone
    would push towards uniform outputs and sharpening alone towards one dimension; DINO
    balances the two to avoid both collapses.
    """
    if len(student_logits) < 2 or len(teacher_logits) > len(student_logits):
        raise ValueError("DINO needs at least two student views, the teacher's views first")
    targets = [F.softmax((t - center) / teacher_temp, dim=1).detach() for t in teacher_logits]
    log_probs = [F.log_softmax(s / student_temp, dim=1) for s in student_logits]
    terms = [-(p * log_p).sum(dim=1).mean()
             for g, p in enumerate(targets) for v, log_p in enumerate(log_probs) if v != g]
    return torch.stack(terms).mean()


@torch.no_grad()
def update_center(center: torch.Tensor, teacher_logits: list[torch.Tensor],
                  momentum: float = 0.9) -> torch.Tensor:
    """EMA of the teacher's batch-mean output: center [1, D], teacher_logits G x [B, D]
    -> momentum * center + (1 - momentum) * mean over all G*B rows. momentum = 0.9 (DINO).
    Call after `dino_loss` with the same teacher logits."""
    batch_center = torch.cat(teacher_logits).float().mean(dim=0, keepdim=True)
    return momentum * center + (1 - momentum) * batch_center


def teacher_temperature(epoch: int, warmup_epochs: int, start: float = 0.04,
                        end: float = 0.07) -> float:
    """DINO's teacher temperature at `epoch`: the authors' schedule
    np.linspace(start, end, warmup_epochs) over epochs 0 .. warmup_epochs - 1 (so `end` is
    reached at epoch warmup_epochs - 1), then `end` (the paper: 0.04 -> 0.07 over the first
    30 epochs). A low temperature (sharp teacher) early on keeps training stable."""
    if epoch >= warmup_epochs:
        return end
    if warmup_epochs == 1:
        return start
    return start + (end - start) * epoch / (warmup_epochs - 1)


# ---------------------------------------------------------------- OBoW

@torch.no_grad()
@_float32
def soft_assign(features: torch.Tensor, words: torch.Tensor, inv_delta: float,
                mean_distance: torch.Tensor | float,
                decay: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW soft assignment of local features to visual words.

    features [N, C], words [K, C] -> squared L2 distances d [N, K];
    m' = decay * m + (1 - decay) * mean_n min_k d[n, k]  (running mean of the distance to
    the nearest word, updated with this batch first, as the authors do);
    codes = softmax_k(-(inv_delta / m') * d) [N, K], rows sum to 1.
    Dividing by m' makes the sharpness independent of the feature scale, which drifts
    as the teacher trains. Returns (codes, m' as a 0-d tensor), no gradient.
    Authors: m starts at 0.5, decay 0.99; inv_delta 10 (ResNet-18) or 15 (ResNet-50).
    decay = 1 keeps m fixed (e.g. evaluation). inv_delta -> infinity gives one-hot
    nearest-word codes (BoWNet's hard assignment).
    """
    distances = ((features * features).sum(1, keepdim=True) - 2 * features @ words.T
                 + (words * words).sum(1)).clamp_min(0)                       # [N, K]
    mean_distance = torch.as_tensor(mean_distance, dtype=torch.float32, device=features.device)
    mean_distance = decay * mean_distance + (1 - decay) * distances.min(dim=1).values.mean()
    return F.softmax(-(inv_delta / mean_distance) * distances, dim=1), mean_distance


@torch.no_grad()
@_float32
def obow_bow_targets(maps: torch.Tensor, words: torch.Tensor, inv_delta: float,
                     mean_distance: torch.Tensor | float, drop_border: int = 1,
                     decay: float = 0.99) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW targets of one level: teacher maps [B, C, h, w], words [K, C] -> BoW [B, K].

    Drops `drop_border` locations on each side (border cells see the zero padding;
    authors: 1), soft-assigns every location (`soft_assign`), max-pools the codes over
    locations (does word k appear anywhere, softly), L1-normalises each row.
    Returns (targets [B, K] rows summing to 1, the updated running mean distance).
    """
    if drop_border:
        maps = maps[:, :, drop_border:-drop_border, drop_border:-drop_border]
    b, c = maps.shape[:2]
    codes, mean_distance = soft_assign(maps.flatten(2).transpose(1, 2).reshape(-1, c), words,
                                       inv_delta, mean_distance, decay)
    bow = codes.view(b, -1, words.shape[0]).amax(dim=1)                      # [B, K]
    return bow / bow.sum(dim=1, keepdim=True), mean_distance


@_float32
def kl_to_target(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """KL(y || softmax(logits)) = sum_k y_k (log y_k - log softmax(logits)_k), mean over
    the batch. logits, targets [B, K]; targets detached. Same gradient as the soft
    cross-entropy but 0 at a perfect prediction (the target entropy is subtracted)."""
    targets = targets.detach()
    pointwise = torch.xlogy(targets, targets) - targets * F.log_softmax(logits, dim=1)
    return pointwise.sum(dim=1).mean()


@_float32
def obow_loss(logits: list[list[torch.Tensor]], targets: list[torch.Tensor]
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """OBoW's loss, combined over crop types and BoW levels as the authors' code does.

    logits: T lists, one per crop type (OBoW: the 2 large crops, the 5 patches), each of
    L tensors [n_t * B, K] (one per level), view-major: rows j*B .. (j+1)*B - 1 are crop j
    of every image. targets: L tensors [B, K] (the teacher's BoW of each level, detached).
    Per crop type t and level l: KL(y_l || softmax(logits[t][l])) averaged over all
    n_t * B rows (each crop of an image predicts that image's target); then averaged over
    the levels; then SUMMED over the crop types:
        loss = sum_t mean_l mean_rows KL.
    So the 2 large crops and the 5 patches weigh the same whatever their counts, and a
    2-type run has twice the gradient of a plain mean over all 7 crops' rows.
    Returns (loss, terms [T, L] of the unweighted per-type, per-level KLs, detached).
    """
    terms = torch.stack([torch.stack([kl_to_target(x, y.repeat(x.shape[0] // y.shape[0], 1))
                                      for x, y in zip(per_type, targets)])
                         for per_type in logits])                                 # [T, L]
    return terms.mean(dim=1).sum(), terms.detach()


@torch.no_grad()
def perplexity(p: torch.Tensor) -> torch.Tensor:
    """exp(entropy in nats) of distributions over the last dimension: p [..., K] -> [...].

    The effective number of words used: K for uniform, 1 for one-hot. OBoW monitors it on
    the targets: `perplexity(targets.mean(0))` (words used across the batch) and
    `perplexity(targets).mean()` (per image); a collapsing perplexity signals collapse.
    """
    return torch.exp(-torch.xlogy(p, p).sum(dim=-1))


# ---------------------------------------------------------------- monitoring

@torch.no_grad()
@_float32
def embedding_std(z: torch.Tensor) -> torch.Tensor:
    """Collapse monitor that every method logs: z [B, D] -> scalar.

    Mean over dimensions of the per-dimension std (over the batch) of the L2-normalised
    embeddings, times sqrt(D). Embeddings spread over the sphere have std 1/sqrt(D) per
    dimension, so this is about 1; it goes to 0 when all embeddings collapse to one
    point (and falls when they collapse to a low-dimensional subspace).
    """
    return F.normalize(z, dim=1).std(dim=0).mean() * math.sqrt(z.shape[1])
