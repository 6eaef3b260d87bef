"""FitNets (Romero et al., ICLR 2015): the student's middle stage, through a trainable
conv regressor, regresses the teacher's middle stage ("hint").

L_method = MSE(adapter(student[hint_stage]), teacher[hint_stage]) (`distill_losses.hint_loss`,
adapter = `HintAdapter`, RepDistiller's `ConvReg`: conv -> BN -> ReLU); gamma = 100, the
distillation benchmark's weight. hint_stage = stage2 is the benchmark's hint layer 2
(feat[2]) in every architecture family (see `networks`). Trained jointly with CE + KD
(the benchmark's single-stage variant, not the paper's two-stage hint pre-training).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from bowflow.distill import DistillParams, Distiller
from bowflow.distill_losses import HintAdapter, hint_loss
from bowflow.methods.base import register_method


@dataclass
class FitNetParams(DistillParams):
    method: str = "fitnet"
    gamma: float = field(default=100.0, metadata={"help": "hint weight (the benchmark's 100)"})
    hint_stage: str = field(default="stage2", metadata={
        "help": "stage of both networks whose maps are matched (stage2: the benchmark's hint layer 2)"})


@register_method("fitnet")
class FitNet(Distiller):
    label = "FitNet"
    Params = FitNetParams

    @classmethod
    def check_pair(cls, params, student, teacher):
        for who, network in (("student", student), ("teacher", teacher)):
            if params.hint_stage not in network.stage_names:
                raise ValueError(f"hint_stage: the {who} has no stage '{params.hint_stage}' "
                                 f"(its stages: {network.stage_names})")

    def build_extras(self, student_channels, teacher_channels, context):
        self.student_stage = self.backbone.stage_index(self.params.hint_stage)
        self.teacher_stage = self.teacher.backbone.stage_index(self.params.hint_stage)
        # student map side / teacher map side, from the down-sampling factors
        ratio = (self.teacher.backbone.reductions[self.teacher_stage]
                 / self.backbone.reductions[self.student_stage])
        self.adapter = HintAdapter(student_channels[self.student_stage],
                                   teacher_channels[self.teacher_stage], ratio)

    def method_loss(self, student, teacher, labels, index):
        target = teacher.maps[self.teacher_stage]                           # [B, C_t, h, w]
        return hint_loss(self.adapter(student.maps[self.student_stage], size=target.shape[-2:]), target)
