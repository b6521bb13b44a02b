"""Shared pytest setup for unit and functional tests (kept generic)."""

import os

from hypothesis import HealthCheck
from hypothesis import settings

# Shared CI machines are slow and noisy: no per-example deadline anywhere.
settings.register_profile('default', deadline=None)
settings.register_profile(
    'ci', deadline=None, max_examples=500, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow])
settings.load_profile(os.environ.get('HYPOTHESIS_PROFILE', 'default'))
