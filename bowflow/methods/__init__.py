"""Registry of teacher-student methods: one module per method, loaded when a run names it
(`get_method`), so a stage imports only the method it trains."""
from bowflow.methods.base import (METHODS, Method, TrainParams, available_methods, get_method,
                                  register_method)

__all__ = ["METHODS", "Method", "TrainParams", "available_methods", "get_method", "register_method"]
