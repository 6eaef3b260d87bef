"""supervised: cross-entropy on the labels with the CIFAR recipe; the `Supervised` role
itself (bowflow/roles/supervised.py), registered as a method for `teachers:` entries."""
from __future__ import annotations

from bowflow.roles.base import register_method
from bowflow.roles.supervised import Supervised

register_method("supervised")(Supervised)
# tests/test_method_learning.py: the student's test top-1 93.0, untrained 25.0 (measured, seed
# 0). Set here, with the registration, as this method is the role class itself.
Supervised.learning_recipe = {"epochs": 6, "padding": 2}
