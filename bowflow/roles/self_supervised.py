"""Role: self-supervised from images alone (RotNet, BYOL, SimSiam, DINO, ..., and the
untrained control). Runs are entries of `pretrain:`, trained by stages.pretrain on the
SSL images; the method never sees a label."""

from __future__ import annotations

from bowflow.roles.base import ImageInputs, Method


class SelfSupervised(Method):
    role = "self-supervised"
    section = "pretrain"
    stage = "pretrain"
    Inputs = ImageInputs
