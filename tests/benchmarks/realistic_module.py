"""Loads benchmarks/realistic.py (a script, not a package module) for the benchmark tests."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


def load_realistic(name: str = "bench_realistic") -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, BENCH / "realistic.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module
