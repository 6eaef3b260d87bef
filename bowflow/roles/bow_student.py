"""Role: a BoW student of a parent model (BoWNet). Runs are the `student` of an entry of
`generations:`, trained by stages.student on the SSL images with the vocab stage's cached
BoW codes of its parent's feature maps."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from bowflow.roles.base import ImageInputs, Method


@dataclass
class BoWInputs(ImageInputs):
    codes: torch.Tensor  # [N, L] int: visual word of each of L map cells, per image
    num_words: int  # K, the vocabulary's size
    parent: dict[str, Any]  # the parent's model file (state_dict, params, name, ...)


class BoWStudent(Method):
    role = "bow-student"
    section = "generations"
    stage = "student"
    Inputs = BoWInputs
