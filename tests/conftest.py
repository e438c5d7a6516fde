"""Hypothesis profiles, chosen by ``HYPOTHESIS_PROFILE`` (default ``dev``).

All print the reproduction blob of a failure (``@reproduce_failure``) and have no
deadline: simulated runs vary in wall time with the machine, not with the code.
"""

from __future__ import annotations

import os

from hypothesis import settings

settings.register_profile("dev", max_examples=50, deadline=None, print_blob=True)
settings.register_profile(
    "ci", max_examples=200, deadline=None, print_blob=True, derandomize=False
)
settings.register_profile("nightly", max_examples=2000, deadline=None, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "dev"))
