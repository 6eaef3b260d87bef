"""supervised: cross-entropy on the labels with the CIFAR recipe; the `Supervised` role
itself (bowflow/roles/supervised.py), registered as a method for `teachers:` entries."""

from __future__ import annotations

from bowflow.roles.base import register_method
from bowflow.roles.supervised import Supervised

register_method("supervised")(Supervised)
