"""Registry of teacher-student methods. Importing this package registers them all."""
from bowflow.methods.base import METHODS, Method, TrainParams, get_method, register_method
from bowflow.methods import rotnet, bownet  # noqa: F401  (registration side effect)

__all__ = ["METHODS", "Method", "TrainParams", "get_method", "register_method"]
