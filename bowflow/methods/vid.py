"""Variational information distillation (Ahn et al., CVPR 2019): at every stage the
student predicts a Gaussian over the teacher's map; maximising its likelihood maximises
a lower bound on their mutual information.

One `VIDRegressor` per stage (three 1x1 convs for the mean, a learned per-channel
variance); per stage the larger of the two maps is pooled to the other's size first (as
the benchmark does); L_method = sum over stages of `distill_losses.vid_loss`; gamma = 1,
the benchmark's weight. Both networks must have the same number of stages.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from bowflow.distill import DistillParams, Distiller, check_same_stages
from bowflow.distill_losses import VIDRegressor, match_spatial, vid_loss
from bowflow.methods.base import register_method


@dataclass
class VIDParams(DistillParams):
    method: str = "vid"
    gamma: float = field(default=1.0, metadata={"help": "VID weight (the benchmark's 1)"})


@register_method("vid")
class VID(Distiller):
    label = "VID"
    Params = VIDParams

    @classmethod
    def check_pair(cls, params, student, teacher):
        check_same_stages("vid", student.channels, teacher.channels)

    def build_extras(self, student_channels, teacher_channels, context):
        self.regressors = nn.ModuleList(VIDRegressor(s, t) for s, t in zip(student_channels, teacher_channels))

    def method_loss(self, student, teacher, labels, index):
        total = 0.0
        for regressor, s, t in zip(self.regressors, student.maps, teacher.maps):
            s, t = match_spatial(s, t)
            mean, var = regressor(s)
            total = total + vid_loss(mean, var, t)
        return total
