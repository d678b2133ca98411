"""Test setup: JAX sees 4 simulated CPU devices, so every pmap path runs on more than one device, and
compiled programs are cached on disk (inherited by the scripts the tests start), so that the many small
runs of the same shapes compile once."""
import os
import sys
import tempfile
from pathlib import Path

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') + ' --xla_force_host_platform_device_count=4').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', str(Path(tempfile.gettempdir()) / 'hrrformer-tests-jax-cache'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402  (after XLA_FLAGS)
import numpy as np  # noqa: E402
import pytest  # noqa: E402

FIXTURES = ROOT / 'tests' / 'fixtures'


@pytest.fixture(scope='session')
def devices():
    found = jax.local_devices()
    assert len(found) == 4, 'tests expect 4 simulated CPU devices (XLA_FLAGS was set too late)'
    return found


def majority_task(n, length=15, seed=0):
    """A task a tiny model learns in a few epochs: sequences of tokens 1 and 2, labelled 1 when 2 is the
    more frequent (odd length: never a tie). Fresh models score about 50%."""
    rng = np.random.default_rng(seed)
    inputs = rng.integers(1, 3, size=(n, length)).astype(np.int32)
    return {'inputs': inputs, 'targets': (np.sum(inputs == 2, axis=1) > length // 2).astype(np.int32)}


def majority_splits(n_train=192, n_eval=64):
    """load_dataset for majority_task: (train, valid, test), whatever the config."""
    return lambda config: (majority_task(n_train, seed=0), majority_task(n_eval, seed=1), majority_task(n_eval, seed=2))
