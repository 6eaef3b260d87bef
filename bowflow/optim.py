"""Optimizers and the learning-rate schedule the trainer applies to a method's groups.

A method describes its parameter groups (`Method.optimizer_groups`); each group is a dict
with `params` and optionally
- `weight_decay`: L2 factor (the trainer's default groups put 0 on biases and norms);
- `lr_scale`: this group's lr = lr_scale x the scheduled lr (default 1);
- `fixed_lr`: True keeps the group at lr_scale x the peak lr for the whole run (SimSiam's
  predictor, whose authors found a decaying predictor lr hurts);
- `lars_exclude`: True skips LARS's trust ratio for this group (biases and norms, as in
  BYOL and Barlow Twins).
`TrainParams.optimizer` names the optimizer: `sgd` (Nesterov when momentum > 0), `lars`
(SGD momentum with layer-wise trust ratio, BYOL / Barlow Twins at large batch) or `adamw`
(DINO with ViTs; betas (0.9, 0.999)).
"""

from __future__ import annotations

import math

import torch

OPTIMIZERS = ("sgd", "lars", "adamw")
SCHEDULES = ("cosine", "step")


def learning_rate(
    step: int,
    total: int,
    warmup: int,
    peak: float,
    schedule: str = "cosine",
    decay_at: tuple[float, ...] = (),
    decay: float = 0.1,
) -> float:
    """Linear warm-up over `warmup` steps, then
    - `cosine`: cosine decay to 0 at `total` steps (the self-supervised recipes);
    - `step`: peak x decay^m, m = how many of the `decay_at` fractions of `total` steps have
      passed (the distillation recipe: x0.1 at epochs 150/180/210 of 240 = 0.625/0.75/0.875).
    """
    if step < warmup:
        return peak * (step + 1) / warmup
    if schedule == "step":
        return peak * decay ** sum(step >= fraction * total for fraction in decay_at)
    progress = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * progress))


def default_groups(module: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Weight decay on conv / linear weights only; biases and norm scales get none."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for p in module.parameters():
        if p.requires_grad:
            (decay if p.ndim >= 2 else no_decay).append(p)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True},
    ]


class LARS(torch.optim.Optimizer):
    """SGD with momentum whose per-tensor step is scaled by the trust ratio
    eta * ||w|| / ||grad + wd * w|| (You et al., 2017); groups with `lars_exclude` are
    plain SGD. eta = 0.001 is the value BYOL and Barlow Twins use."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, eta: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, eta=eta, lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad.add(p, alpha=group["weight_decay"]) if group["weight_decay"] else p.grad
                if not group["lars_exclude"]:
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    trust = torch.where(
                        (w_norm > 0) & (u_norm > 0), group["eta"] * w_norm / u_norm, torch.ones_like(w_norm)
                    )
                    update = update * trust
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = update.clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(update)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


def build_optimizer(name: str, groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """The optimizer `name` over the method's groups (extra group keys are kept)."""
    groups = [{"lr_scale": 1.0, "fixed_lr": False, "lars_exclude": False, **g} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum)
    if name == "adamw":
        return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999))
    raise ValueError(f"optimizer must be one of {list(OPTIMIZERS)}, got '{name}'")


def set_learning_rate(optimizer: torch.optim.Optimizer, scheduled: float, peak: float) -> None:
    """Apply the step's scheduled lr to every group (fixed groups stay at their peak)."""
    for group in optimizer.param_groups:
        group["lr"] = group["lr_scale"] * (peak if group["fixed_lr"] else scheduled)


@torch.no_grad()
def clip_gradients(parameters, max_norm: float, per_parameter: bool = False) -> None:
    """Clip the gradients of `parameters` (those with a .grad) in place.

    - global (default): the L2 norm of all gradients together is scaled down to at most
      `max_norm` (torch.nn.utils.clip_grad_norm_);
    - per_parameter: each parameter tensor's gradient is scaled down separately, by
      min(1, max_norm / (||grad|| + 1e-6)), as DINO's `utils.clip_gradients` (3.0 there).
      A large gradient in one layer (the head at the start, say) then leaves the other
      layers' steps alone, where a global clip would shrink them all.
    No host sync: the factors stay tensors on the gradients' device.
    """
    with_grad = [p for p in parameters if p.grad is not None]
    if not with_grad:
        return
    if not per_parameter:
        torch.nn.utils.clip_grad_norm_(with_grad, max_norm)
        return
    grads = [p.grad for p in with_grad]
    for grad, norm in zip(grads, torch._foreach_norm(grads)):
        grad.mul_((max_norm / (norm + 1e-6)).clamp(max=1.0))
