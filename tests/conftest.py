"""Test setup: JAX sees 4 simulated CPU devices, so every pmap path runs on more than one device."""
import os
import sys
from pathlib import Path

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402  (after XLA_FLAGS)
import pytest  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'


@pytest.fixture(scope='session')
def devices():
    found = jax.local_devices()
    assert len(found) == 4, 'tests expect 4 simulated CPU devices (XLA_FLAGS was set too late)'
    return found
