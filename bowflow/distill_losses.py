"""Knowledge-distillation losses (the second seed's table of baselines), as small pure
functions, plus the small trainable modules two of them need (FitNets' adapter, VID's
regressor). CRD and IFACD, which keep memory banks or several heads, are in
`bowflow.contrastive_distill`.

Conventions (as in `bowflow.losses`):
- Pure functions; the teacher's tensors are detached inside, so a caller cannot forget it
  (except where the docstring says the teacher side goes through a trainable head).
- Computed in float32 with autocast off (`_float32`): Gram matrices, normalised
  attention maps and softmax / T of nearby distributions lose too much in bf16.
- The caller assembles total = alpha * CE + beta * kd_loss + gamma * L_method; the
  gamma of each method is the benchmark's, not chosen here.

Notation: B batch, K classes, C channels, H x W spatial size, D embedding size;
`_s` student, `_t` teacher. Reference: shared/reference/METHODS.md, "Knowledge
distillation"; the definitions follow the papers named in each docstring and the CRD
authors' benchmark (RepDistiller), whose loss scales the seed's gammas assume.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from bowflow.losses import _float32


def match_spatial(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Adaptive-average-pool the larger of two maps [B, C, H, W] to the other's H x W
    (RepDistiller's rule for AT, NST and VID); maps of equal size are returned unchanged."""
    if a.shape[-2:] == b.shape[-2:]:
        return a, b
    if a.shape[-2] * a.shape[-1] > b.shape[-2] * b.shape[-1]:
        return F.adaptive_avg_pool2d(a, b.shape[-2:]), b
    return a, F.adaptive_avg_pool2d(b, a.shape[-2:])


# ---------------------------------------------------------------- KD (Hinton et al. 2015)

@_float32
def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
            temperature: float = 4.0) -> torch.Tensor:
    """Hinton's KD: KL(p_t || p_s) * T^2 with p = softmax(logits / T), mean over the batch.

    student_logits, teacher_logits [B, K] (teacher detached here). The T^2 keeps the
    gradient's size comparable to the cross-entropy term as T changes. T = 4 (the seed's
    benchmark). 0 when the logits agree up to a per-row constant.
    """
    target = F.softmax(teacher_logits.detach() / temperature, dim=1)
    log_student = F.log_softmax(student_logits / temperature, dim=1)
    kl = (torch.xlogy(target, target) - target * log_student).sum(dim=1).mean()
    return kl * temperature ** 2


# ---------------------------------------------------------------- FitNets (Romero et al. 2015)

class HintAdapter(nn.Module):
    """FitNets' regressor, as RepDistiller's `ConvReg`: student map [B, c_s, H, W] ->
    [B, c_t, h, w], conv (with bias) -> BatchNorm -> ReLU. `ratio` = the student map's
    side / the teacher map's (from the networks' `reductions`) picks the conv:
    1: 1x1 conv; 2: 3x3 conv, stride 2, padding 1; 0.5: 4x4 transposed conv, stride 2,
    padding 1. Any other ratio: adaptive average pooling to the teacher's h x w, then the
    1x1 conv (RepDistiller uses a valid conv whose kernel grows with the size gap, or
    fails). The ReLU is the benchmark's: the target maps of its post-activation nets are
    non-negative (a WRN's hint map is a raw block output and may be negative; the
    benchmark keeps the ReLU there too, and so do we).
    forward(x, size=teacher (h, w)) -> adapted map."""

    def __init__(self, c_s: int, c_t: int, ratio: float = 1.0):
        super().__init__()
        if ratio == 2:
            self.conv = nn.Conv2d(c_s, c_t, 3, stride=2, padding=1)
        elif ratio == 0.5:
            self.conv = nn.ConvTranspose2d(c_s, c_t, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(c_s, c_t, 1)
        self.pool_first = ratio not in (0.5, 1, 2)
        self.bn = nn.BatchNorm2d(c_t)

    def forward(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        if self.pool_first and size is not None and tuple(x.shape[-2:]) != tuple(size):
            x = F.adaptive_avg_pool2d(x, size)
        return F.relu(self.bn(self.conv(x)))


@_float32
def hint_loss(student_map_adapted: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """FitNets' hint: mean squared error over all elements between the adapted student map
    and the teacher map (detached here), both [B, C_t, H, W] (pass the student map through
    `HintAdapter(c_s, c_t, ratio)(s, size=teacher_map.shape[-2:])` first)."""
    if student_map_adapted.shape != teacher_map.shape:
        raise ValueError(f"hint shapes differ: {tuple(student_map_adapted.shape)} vs "
                         f"{tuple(teacher_map.shape)}; adapt the student map first")
    return F.mse_loss(student_map_adapted, teacher_map.detach())


# ---------------------------------------------------------------- AT (Zagoruyko & Komodakis 2017)

def attention_map(feature_map: torch.Tensor, p: float = 2) -> torch.Tensor:
    """AT's spatial attention: [B, C, H, W] -> mean over channels of |a|^p, flattened and
    L2-normalised per sample -> [B, H*W]. Invariant to scaling the map."""
    return F.normalize(feature_map.abs().pow(p).mean(dim=1).flatten(1), dim=1)


@_float32
def attention_loss(student_maps: list[torch.Tensor], teacher_maps: list[torch.Tensor],
                   p: float = 2) -> torch.Tensor:
    """Attention transfer, summed over stages.

    student_maps, teacher_maps: lists of S maps [B, C_i, H_i, W_i] (stage i of each
    network; channel counts may differ, the channel mean removes them). Per stage, the
    larger map is first adaptive-average-pooled to the smaller one's size; then the mean
    over B x HW of (attention_map(s) - attention_map(t))^2. The stages' terms are summed,
    as RepDistiller does (it weights the sum by gamma = 1000). p = 2 (the paper).
    """
    if len(student_maps) != len(teacher_maps) or not student_maps:
        raise ValueError(f"AT needs as many student as teacher stages (>= 1), got "
                         f"{len(student_maps)} and {len(teacher_maps)}")
    total = 0.0
    for s, t in zip(student_maps, teacher_maps):
        s, t = match_spatial(s, t.detach())
        total = total + (attention_map(s, p) - attention_map(t, p)).pow(2).mean()
    return total


# ---------------------------------------------------------------- SP (Tung & Mori 2019)

@_float32
def similarity_loss(s_map: torch.Tensor, t_map: torch.Tensor) -> torch.Tensor:
    """Similarity-preserving KD: the two networks should find the same images alike.

    s_map [B, ...], t_map [B, ...] (any shapes with the same batch; teacher detached).
    Each is flattened to [B, N], G = f f^T [B, B], each row L2-normalised; loss =
    ||G_s - G_t||_F^2 / B^2. Invariant to scaling either map.
    """
    def gram(f):
        f = f.flatten(1)
        return F.normalize(f @ f.T, dim=1)

    b = s_map.shape[0]
    return (gram(s_map) - gram(t_map.detach())).pow(2).sum() / b ** 2


# ---------------------------------------------------------------- CC (Peng et al. 2019)

@_float32
def cc_loss(s_emb: torch.Tensor, t_emb: torch.Tensor) -> torch.Tensor:
    """Correlation congruence as the benchmark computes it (RepDistiller's `Correlation`,
    from code the CC authors sent; the seed's gamma = 0.02 is tuned for it).

    s_emb, t_emb [B, D]: the two networks' pooled features through their own trainable,
    UNnormalised linear embeddings (`EmbedHead(..., normalize=False)`); t_emb is NOT
    detached (its head is trained too). With delta_i = |s_i - t_i| [D] for image i of
    the batch, loss = mean over the B - 1 neighbouring pairs (i, i + 1) of
    sum_d delta_i,d * delta_i+1,d. It is not the paper's kernel-matrix congruence: it
    compares each image's two embeddings and couples consecutive images only. 0 when
    the embeddings agree; B >= 2.
    """
    if s_emb.shape[0] < 2:
        raise ValueError(f"cc_loss needs a batch of at least 2, got {s_emb.shape[0]}")
    delta = (s_emb - t_emb).abs()                                         # [B, D]
    return (delta[:-1] * delta[1:]).sum(dim=1).mean()


# ---------------------------------------------------------------- VID (Ahn et al. 2019)

class VIDRegressor(nn.Module):
    """VID's variational q(t | s): mean mu(s) by three 1x1 convs (c_s -> c_mid -> c_mid
    -> c_t, ReLU between, no bias) and a learned per-channel variance
    softplus(w_c) + eps, initialised to `init_var` = 5 (the authors' value).

    forward(s [B, c_s, H, W]) -> (mean [B, c_t, H, W], var [1, c_t, 1, 1]). Bring the
    two maps to one size with `match_spatial` first (the benchmark pools the larger).
    """

    def __init__(self, c_s: int, c_t: int, c_mid: int | None = None, init_var: float = 5.0,
                 eps: float = 1e-5):
        super().__init__()
        c_mid = c_mid or c_t
        self.mean = nn.Sequential(
            nn.Conv2d(c_s, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_mid, 1, bias=False), nn.ReLU(),
            nn.Conv2d(c_mid, c_t, 1, bias=False))
        inverse_softplus = math.log(math.expm1(init_var - eps))
        self.raw_var = nn.Parameter(torch.full((c_t,), inverse_softplus))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        var = F.softplus(self.raw_var) + self.eps
        return self.mean(x), var.view(1, -1, 1, 1)


@_float32
def vid_loss(mean: torch.Tensor, var: torch.Tensor, teacher_map: torch.Tensor) -> torch.Tensor:
    """VID: negative log-likelihood of the teacher map under N(mean, var), per element,
    averaged: mean of 1/2 [(t - mean)^2 / var + log var] (the constant log(2 pi) / 2 is
    dropped, as the authors do). mean [B, C, H, W] and var (broadcastable, e.g.
    [1, C, 1, 1]) from `VIDRegressor`; teacher_map [B, C, H, W], detached here.
    For a fixed error the loss is lowest at var = (t - mean)^2, so the variance learns
    how predictable each teacher channel is from the student.
    """
    t = teacher_map.detach()
    return (0.5 * ((t - mean).pow(2) / var + torch.log(var))).mean()


# ---------------------------------------------------------------- RKD (Park et al. 2019)

def _pairwise_distances(x: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    squared = (x.unsqueeze(0) - x.unsqueeze(1)).pow(2).sum(-1)
    distances = squared.clamp_min(eps).sqrt()          # clamp: sqrt's gradient at 0 is inf
    return distances * (1 - torch.eye(len(x), device=x.device, dtype=x.dtype))


def _angles(x: torch.Tensor) -> torch.Tensor:
    """[B, D] -> [B, B, B]: entry (a, b, c) = cos of the angle at x_a between x_b and
    x_c (0 where b or c is a)."""
    directions = F.normalize(x.unsqueeze(0) - x.unsqueeze(1), dim=2)   # [a, b] = x_b - x_a
    return directions @ directions.transpose(1, 2)


@_float32
def rkd_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, w_distance: float = 25,
             w_angle: float = 50) -> torch.Tensor:
    """Relational KD: w_distance * distance loss + w_angle * angle loss.

    s_emb [B, ...], t_emb [B, ...] (flattened to [B, D_s], [B, D_t]; teacher detached).
    Distance: pairwise Euclidean distances, each network's divided by its mean over the
    B(B-1) off-diagonal pairs, compared by smooth-L1 (mean over B^2). Angle: cosines of
    the angles of every triplet (`_angles`), smooth-L1 (mean over B^3). Both are invariant
    to translating, rotating and scaling either embedding. Weights 25 / 50 (the paper).
    """
    s, t = s_emb.flatten(1), t_emb.detach().flatten(1)
    b = s.shape[0]

    def normalised_distances(x):
        d = _pairwise_distances(x)
        return d / (d.sum() / (b * (b - 1)))

    distance = F.smooth_l1_loss(normalised_distances(s), normalised_distances(t))
    angle = F.smooth_l1_loss(_angles(s), _angles(t))
    return w_distance * distance + w_angle * angle


# ---------------------------------------------------------------- PKT (Passalis & Tefas 2018)

@_float32
def pkt_loss(s_emb: torch.Tensor, t_emb: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Probabilistic knowledge transfer: match the distributions of neighbours.

    s_emb [B, ...], t_emb [B, ...] (flattened, L2-normalised; teacher detached). Row i of
    P = (cos + 1) / 2 divided by its row sum is a distribution over the batch (self
    included); loss = mean over all B^2 entries of p_t log((p_t + eps) / (p_s + eps)),
    i.e. the mean per-row KL(p_t || p_s) divided by B (RepDistiller's scale, which the
    seed's gamma = 30000 assumes).
    """
    def neighbours(x):
        x = F.normalize(x.flatten(1), dim=1)
        p = (x @ x.T + 1) / 2
        return p / p.sum(dim=1, keepdim=True)

    p_s, p_t = neighbours(s_emb), neighbours(t_emb.detach())
    return (p_t * torch.log((p_t + eps) / (p_s + eps))).mean()


# ---------------------------------------------------------------- NST (Huang & Wang 2017)

@_float32
def nst_loss(s_map: torch.Tensor, t_map: torch.Tensor) -> torch.Tensor:
    """Neuron selectivity transfer: squared MMD between the two networks' channels.

    s_map [B, C_s, H, W], t_map [B, C_t, h, w] (teacher detached; the larger map is
    adaptive-average-pooled to the smaller size). Each channel's spatial map, flattened
    and L2-normalised, is one sample; per image, MMD^2 = mean k(t, t') + mean k(s, s')
    - 2 mean k(s, t) with the polynomial kernel k(x, y) = (x.y)^2 (the paper's d = 2,
    c = 0), averaged over the batch. >= 0, and 0 when the channel sets coincide (in any
    order).
    """
    s, t = match_spatial(s_map, t_map.detach())
    s = F.normalize(s.flatten(2), dim=2)                                  # [B, C_s, HW]
    t = F.normalize(t.flatten(2), dim=2)

    def kernel_mean(a, b):
        return (a @ b.transpose(1, 2)).pow(2).mean()

    return kernel_mean(t, t) + kernel_mean(s, s) - 2 * kernel_mean(s, t)
