"""Vision transformers for small images, as `Backbone`s whose stages are transformer blocks.

A ViT (Dosovitskiy et al. 2021; the DeiT/timm layout DINO and MAE build on) cuts an image
into p x p patches, embeds each as a D-dim token with a learnt linear map (a stride-p
convolution), prepends a learnt CLS token, adds learnt position embeddings and runs
`depth` pre-norm blocks (LayerNorm -> multi-head self-attention -> residual, LayerNorm ->
MLP with GELU and 4D hidden units -> residual), then a final LayerNorm.

How a token backbone meets the stage-map contract of `bowflow.backbone.Backbone`:
- every block is a stage (`stage1` .. `stage<depth>`); a stage's map is its patch tokens
  laid back on the patch grid, [B, D, H / p, W / p] (the CLS token dropped), so the BoW
  vocabulary, evaluation and distillation hints read any block as they read a conv stage;
  `reductions` are all p, `channels` all D;
- the last map goes through the final LayerNorm (the `head_norm` role), other maps are raw
  block outputs, as a conv backbone's;
- the pooled feature is the CLS token: the final-normed CLS for the last block (what DINO's
  and MAE's linear probes read), the raw CLS of the block for a middle one. `forward`
  returns the final-normed CLS [B, D].

Position embeddings are learnt for a reference grid (`grid` x `grid` patches: 32 px at
patch 4, 16 px at patch 2); any other grid (another image size, DINO's small local crops)
gets them bicubically resized, as DINO's `interpolate_pos_encoding`.

Sizes, registered under these names by bowflow/networks.py (`NAMED_VITS`, `SIZED_VITS`;
width = D, depth = blocks; heads fixed by the name; published sizes are the DeiT/timm ones
at 224 px and patch 16, tested in tests/test_vit.py):
- `vit_tiny`: D 192, 12 blocks, 3 heads, patch 4 (32 px: 8 x 8 tokens), 5.36M parameters
  (ViT-Ti/16 at 224 px: 5.72M with its 1000-class head; the difference is the patch
  embedding, the position table and the head);
- `vit_small`: D 384, 12 blocks, 6 heads, patch 4, 21.34M parameters (ViT-S/16: 22.05M);
- `vit_tiny_p2`: ViT-Ti with patch 2, for 16 px digits (8 x 8 tokens);
- `vit` (patch 4) and `vit_p2` (patch 2): sized by the run's `width` (D) and `depth`
  (blocks), D // 64 heads (DeiT's head width), for small models and tests.

Declared settings (`ViTParams`, a run's `arch_params`, for every ViT above):
- `drop_path`: stochastic depth (Huang et al. 2016), as timm's `drop_path_rate` and DINO's
  `--drop_path_rate` (https://github.com/facebookresearch/dino, main_dino.py): in training,
  each residual branch (attention, MLP) of block i is dropped for a whole sample with
  probability p_i and kept ones are scaled by 1 / (1 - p_i); p_i rises linearly over the
  blocks from 0 (first) to `drop_path` (last), timm's `torch.linspace(0, drop_path_rate,
  depth)`. In eval mode every branch runs unscaled. It adds no parameter and draws no random
  number at construction, so a seeded build is the same at any rate; the masks are drawn
  from torch's global RNG during training, as timm's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch
import torch.nn as nn
import torch.nn.functional as F

from bowflow.backbone import Backbone
from bowflow.checks import param


@dataclass(frozen=True)
class ViTParams:
    """The settings every ViT of this module takes beyond width and depth (a run's
    `arch_params`)."""

    drop_path: float = param(
        0.0,
        "stochastic depth: the last block's probability of dropping a "
        "residual branch per sample in training, rising linearly from 0 at "
        "the first block (DINO trains ViT-S with 0.1). 0 (off): every "
        "existing run's network",
        low=0,
        below=1,
    )


class Attention(nn.Module):
    """Multi-head self-attention: tokens [B, N, D] -> [B, N, D]."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} does not split into {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # [B, heads, N, D / heads]
        return self.proj(out.transpose(1, 2).reshape(b, n, d))


class DropPath(nn.Module):
    """Stochastic depth on a residual branch: in training, a branch output [B, ...] is zeroed
    for each sample with probability `p` and the kept samples are scaled by 1 / (1 - p) (its
    expectation unchanged); in eval mode, the identity. timm's `DropPath`."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
        return x * mask.div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(LN(x)), then + MLP(LN(x)) (hidden 4D, GELU);
    each branch through `DropPath(drop_path)` (an identity at 0)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int = 4, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(dim, mlp_ratio * dim), nn.GELU(), nn.Linear(mlp_ratio * dim, dim))
        self.drop_path = DropPath(drop_path) if drop_path > 0 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(Backbone):
    """Patch embedding + CLS + position embeddings, then one stage per block (see the module
    docstring for maps and pooling)."""

    def __init__(self, dim: int, depth: int, heads: int, patch: int, grid: int, drop_path: float = 0.0):
        # stochastic depth rising linearly over the blocks, 0 to drop_path (timm, DINO)
        rates = torch.linspace(0, drop_path, depth, device="cpu").tolist() if depth else []
        blocks = [Block(dim, heads, drop_path=rate) for rate in rates]
        super().__init__(nn.Conv2d(3, dim, patch, stride=patch), blocks, [dim] * depth, [patch] * depth)
        self.patch, self.grid, self.heads = patch, grid, heads
        self.drop_path_rates = rates
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + grid * grid, dim))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)  # DINO's / timm's initialisation
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    def position_embeddings(self, h: int, w: int) -> torch.Tensor:
        """[1, 1 + h * w, D]: the reference grid's table, bicubically resized to h x w."""
        if (h, w) == (self.grid, self.grid):
            return self.pos_embed
        cls, table = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        table = table.reshape(1, self.grid, self.grid, -1).permute(0, 3, 1, 2)
        table = F.interpolate(table, size=(h, w), mode="bicubic", align_corners=False)
        return torch.cat([cls, table.flatten(2).transpose(1, 2)], dim=1)

    def tokens(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """x [B, 3, H, W] (H, W multiples of the patch) -> (tokens [B, 1 + h * w, D], (h, w))."""
        if x.shape[-1] % self.patch or x.shape[-2] % self.patch:
            raise ValueError(f"image size {tuple(x.shape[-2:])} is not a multiple of the patch size {self.patch}")
        patches = self.stem(x)  # [B, D, h, w]
        h, w = patches.shape[-2:]
        t = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), patches.flatten(2).transpose(1, 2)], 1)
        return t + self.position_embeddings(h, w), (h, w)

    def block_tokens(self, x: torch.Tensor, upto: int | None = None) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> every block's output tokens [B, 1 + h * w, D] up to `upto`; the
        last block's output (if reached) after the final LayerNorm."""
        last = len(self.stages) - 1 if upto is None else upto
        t, _ = self.tokens(x)
        out = []
        for block in self.stages[: last + 1]:
            t = block(t)
            out.append(t)
        return out

    def feature_maps(self, x: torch.Tensor, upto: int | None = None, final_norm: bool = True) -> list[torch.Tensor]:
        """x [B, 3, H, W] -> per block the patch tokens as a map [B, D, H / p, W / p]; the
        last block's through the final LayerNorm unless final_norm=False."""
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        maps = []
        for i, t in enumerate(self.block_tokens(x, upto)):
            if final_norm and i == len(self.stages) - 1:
                t = self.norm(t)
            maps.append(t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w))
        return maps

    def distill_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """x -> (raw block maps [B, D, h, w] per block, final-normed CLS [B, D])."""
        tokens = self.block_tokens(x)
        h, w = x.shape[-2] // self.patch, x.shape[-1] // self.patch
        maps = [t[:, 1:].transpose(1, 2).reshape(t.shape[0], -1, h, w) for t in tokens]
        return maps, self.norm(tokens[-1])[:, 0]

    def pooled(self, x: torch.Tensor, layer: str = "last") -> torch.Tensor:
        """x -> the CLS token [B, D] of `layer` (final-normed for the last block)."""
        index = self.stage_index(layer)
        t = self.block_tokens(x, upto=index)[-1]
        return (self.norm(t) if index == len(self.stages) - 1 else t)[:, 0]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.block_tokens(x)[-1])[:, 0]


def _init_weights(module: nn.Module) -> None:
    """timm's / DINO's ViT initialisation: truncated-normal 0.02 linear weights, zero biases,
    unit LayerNorms; the patch embedding keeps torch's conv default, as in DINO."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


def sized_vit(patch: int, width: int = 192, depth: int = 12, drop_path: float = 0.0) -> VisionTransformer:
    """A ViT sized by params: `width` D (a multiple of 64 above 64, else one head), `depth`
    blocks (0: 12), DeiT's head width of 64 (D // 64 heads, at least 1), patch `patch`,
    position table for 32 px at patch 4 and 16 px at patch 2 (8 x 8 tokens); `drop_path`
    as `ViTParams`."""
    depth = depth or 12
    if width <= 0 or (width > 64 and width % 64):
        raise ValueError(f"width must be > 0 and, above 64, a multiple of 64 (DeiT's 64-wide heads), got {width}")
    return VisionTransformer(width, depth, max(1, width // 64), patch, 8, drop_path=drop_path)


# Sized by params: name -> builder(width, depth, **ViTParams fields).
SIZED_VITS: dict[str, Callable[..., VisionTransformer]] = {
    "vit": partial(sized_vit, 4),
    "vit_p2": partial(sized_vit, 2),
}

# name -> (width D, depth, heads, patch, reference grid)
VIT_SIZES = {"vit_tiny": (192, 12, 3, 4, 8), "vit_small": (384, 12, 6, 4, 8), "vit_tiny_p2": (192, 12, 3, 2, 8)}

# Fixed sizes: name -> (own width D, own depth, builder(**ViTParams fields)).
NAMED_VITS: dict[str, tuple[int, int, Callable[[], VisionTransformer]]] = {
    name: (dim, depth, partial(VisionTransformer, dim, depth, heads, patch, grid))
    for name, (dim, depth, heads, patch, grid) in VIT_SIZES.items()
}
