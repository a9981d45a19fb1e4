"""`retain_freed_memory`: glibc's thresholds raised once per process, opt-out by environment.

The effect is measured, not assumed: a fresh interpreter fits K-FAC on a conv + BatchNorm
net (whose back-propagated directions each allocate and free 3 MiB gradients) and counts the
minor page faults of two warm fits, with and without the setting.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from laplace_cli.core import allocator

PROBE = """
import json, resource, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from laplace_cli import Laplace
from laplace_cli.core.allocator import retain_freed_memory

torch.manual_seed(0)
on = retain_freed_memory()
model = nn.Sequential(
    nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
    nn.Flatten(), nn.Linear(16 * 14 * 14, 10),
).eval()
data = DataLoader(TensorDataset(torch.randn(128, 1, 28, 28), torch.randint(0, 10, (128,))),
                  batch_size=64)

def fit():
    Laplace(model, "classification", hessian_structure="kron").fit(data)

fit()  # first touch: faults in any case
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
fit()
fit()
faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
print(json.dumps({"on": on, "faults": faults}))
"""


def _probe(env_value: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "LAPLACE_CLI_MALLOC"}
    if env_value is not None:
        env["LAPLACE_CLI_MALLOC"] = env_value
    out = subprocess.run(
        [sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _glibc() -> bool:
    import ctypes

    try:
        ctypes.CDLL("libc.so.6").gnu_get_libc_version  # noqa: B018
    except (OSError, AttributeError):
        return False
    return sys.platform.startswith("linux")


@pytest.mark.skipif(not _glibc(), reason="glibc only (a no-op elsewhere)")
def test_freed_tensors_are_reused_without_page_faults() -> None:
    default, system = _probe(None), _probe("system")
    assert default["on"] is True and system["on"] is False
    # measured: ~121k faults with glibc's defaults; 7 (one thread) to ~19k (two) kept
    assert system["faults"] > 3 * default["faults"] + 10_000, (default, system)


def test_opt_out_and_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setenv("LAPLACE_CLI_MALLOC", "System ")
    assert allocator.retain_freed_memory() is False
    monkeypatch.delenv("LAPLACE_CLI_MALLOC")
    assert allocator.retain_freed_memory() is False  # decided once per process
    monkeypatch.setattr(allocator, "_state", {})
    monkeypatch.setattr(allocator.sys, "platform", "darwin")
    assert allocator.retain_freed_memory() is False
