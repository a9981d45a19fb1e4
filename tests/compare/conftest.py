"""Skip the side-by-side suite when laplace-torch is not installed.

laplace-torch is an optional dev tool (see docs/compare.md for the install commands); it is never
a runtime dependency, so this folder must not fail a plain checkout.
"""

from __future__ import annotations

import importlib.util

collect_ignore_glob: list[str] = []
if importlib.util.find_spec("laplace") is None or importlib.util.find_spec("curvlinops") is None:
    # Ignore every test module here: importing them would fail on `import laplace`.
    collect_ignore_glob = ["test_*.py"]
