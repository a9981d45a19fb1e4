"""laplace-torch's module path `laplace.marglik_training`: marginal-likelihood training.

The function lives in `laplace_cli.laplace.marglik_training`; this module keeps laplace-torch's
import path working (`from laplace_cli.marglik_training import marglik_training`,
docs/migrating.md). `laplace_cli.marglik_training(...)` is the function as in laplace-torch;
since Python binds a package attribute to its submodule once the submodule is imported, the
module itself is also callable (it calls the function), so both spellings work in any order.
"""

from __future__ import annotations

import sys
import types
from typing import Any

from laplace_cli.laplace.marglik_training import marglik_training

__all__ = ["marglik_training"]


class _CallableModule(types.ModuleType):
    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return marglik_training(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
