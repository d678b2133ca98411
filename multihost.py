"""Several processes (hosts) as one run: joining them through jax.distributed, barriers and values shared
through its coordination service (never a device collective, whose gloo context would have to be set up
by every process within a few seconds of each other), and a watchdog that ends a process with one line
when another process of the run has stopped, instead of leaving it waiting forever in a collective.

Entry point: `join`; then `barrier`, `from_process_0`, `finish` and `leave` (all no-ops for one process).
"""
import itertools
import os
import sys
import threading
import time

import jax

PEER_TIMEOUT = float(os.environ.get('HRRFORMER_PEER_TIMEOUT', 60))  # s without a sign of life from a peer
BARRIER_TIMEOUT = 3600  # s: processes may be out of step for long (one builds a data cache, say)
_PREFIX = 'hrrformer'
_ids = itertools.count()  # barriers and shared values are named in the order every process makes them


def _client():
    from jax._src import distributed  # the coordination service's client: what orbax uses as well
    return distributed.global_state.client


def join(coordinator_address=None, num_processes=None, process_id=None):
    """Join the processes of a multi-process run (explicit settings, or what JAX detects under SLURM or
    Open MPI) and start the watchdog. A single process needs nothing."""
    explicit = coordinator_address is not None or num_processes is not None
    scheduled = int(os.environ.get('SLURM_NTASKS', '1')) > 1 or 'OMPI_COMM_WORLD_SIZE' in os.environ
    if not (explicit or scheduled) or jax.distributed.is_initialized():
        return
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')  # CPU devices of several processes
    jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                               process_id=process_id)
    _orbax_barriers_through_coordinator()
    threading.Thread(target=_watch, args=(jax.process_index(), jax.process_count()), daemon=True,
                     name='peer-watchdog').start()


def _orbax_barriers_through_coordinator():
    """Orbax synchronises processes with a device collective by default; under load a process that came
    late to the first one failed with 'Gloo context initialization failed: DEADLINE_EXCEEDED' while its
    peer waited forever. Its own switch makes it use the coordination service's barrier (with a timeout)."""
    from absl import flags
    import orbax.checkpoint  # noqa: F401  (defines the flag)
    flag = flags.FLAGS['experimental_orbax_use_distributed_barrier']
    flag.value, flag.present = True, 1


def barrier(name):
    """Wait until every process of the run gets here."""
    if jax.process_count() > 1:
        _client().wait_at_barrier(f'{_PREFIX}/barrier/{name}/{next(_ids)}', BARRIER_TIMEOUT * 1000)


def from_process_0(name, value=''):
    """Process 0's `value` (a string) in every process."""
    if jax.process_count() == 1:
        return value
    key = f'{_PREFIX}/value/{name}/{next(_ids)}'
    if jax.process_index() == 0:
        _client().key_value_set(key, value)
        return value
    return _client().blocking_key_value_get(key, BARRIER_TIMEOUT * 1000)


def finish():
    """This process ended normally: its silence from now on is no fault."""
    if jax.process_count() > 1:
        _client().key_value_set(f'{_PREFIX}/done/{jax.process_index()}', '1', allow_overwrite=True)


def leave(message, status):
    """End this process of a multi-process run on an error, telling the others at once (without JAX's
    exit-time shutdown, which would wait for them)."""
    try:
        _client().key_value_set(f'{_PREFIX}/stopped/{jax.process_index()}', message, allow_overwrite=True)
    except Exception:  # noqa: BLE001 - the coordinator may be gone already; the watchdogs will notice
        pass
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


def _stop(reason):
    print(f'error: {reason}; this process stops too: start every process again and the run resumes from its '
          f'last checkpoint', file=sys.stderr, flush=True)
    os._exit(1)


def _listed(client, folder):
    return {key.rsplit('/', 1)[-1]: value for key, value in client.key_value_dir_get(f'{_PREFIX}/{folder}/')}


def _watch(me, count):
    """Beat every few seconds; stop when a peer left an error or has not beaten for PEER_TIMEOUT seconds."""
    client, beat, seen = _client(), 0, {}
    while True:
        try:
            beat += 1
            client.key_value_set(f'{_PREFIX}/alive/{me}', str(beat), allow_overwrite=True)
            stopped, alive, done = (_listed(client, folder) for folder in ('stopped', 'alive', 'done'))
        except Exception as error:  # noqa: BLE001 - the coordination service (process 0) is gone
            _stop(f'lost contact with process 0, the coordinator ({type(error).__name__})')
        for peer, message in stopped.items():
            if peer != str(me):
                _stop(f'process {peer} of {count} stopped: {message}')
        now = time.time()
        for peer in map(str, range(count)):
            if peer == str(me) or peer in done:
                continue
            if peer not in seen or seen[peer][0] != alive.get(peer):
                seen[peer] = (alive.get(peer), now)
            elif now - seen[peer][1] > PEER_TIMEOUT:
                _stop(f'process {peer} of {count} has given no sign of life for {PEER_TIMEOUT:.0f} s')
        time.sleep(min(5., PEER_TIMEOUT / 5))
