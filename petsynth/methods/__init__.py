"""Methods (networks + process + loss + translate), by name: see :mod:`petsynth.methods.base`."""

from petsynth.methods.base import (Method, MethodError, available_methods, build_method, load_method,
                                   method_class, register)

__all__ = ["Method", "MethodError", "available_methods", "build_method", "load_method", "method_class",
           "register"]
