"""One run per workdir: an exclusive lock held for the whole run.

The lock is an flock on `<workdir>/run.lock`, which the kernel releases on any exit (kill -9 included);
the file names its holder (host, pid, start time, command) so that a second run can say who has it.
A lock file left by a run that no longer exists is taken over with a message. Entry point: `hold`.
"""
import contextlib
import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path

from utils import UserError, disk_full, no_space

NAME = 'run.lock'


def _describe(holder):
    started = time.strftime('%Y-%m-%d %H:%M', time.localtime(holder.get('started', 0)))
    return f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started {started}"


def _read(fd):
    os.lseek(fd, 0, os.SEEK_SET)
    try:
        return json.loads(os.read(fd, 1 << 16).decode() or '{}')
    except (ValueError, UnicodeDecodeError):
        return {}


def _open_locked(path):
    """(fd of `path`, whether it holds its exclusive flock), or raise UserError naming the holder. The file may be
    removed by its previous holder between open and flock: then the lock is on a dead inode, so check that
    the path still names the locked file, and try again if not."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read(fd)
            os.close(fd)
            raise UserError(f'{path.parent} is in use by another run ({_describe(holder)}): wait for it to end, '
                            f'or give this run another --workdir') from None
        except OSError as error:
            if error.errno not in (errno.ENOLCK, errno.EOPNOTSUPP):
                os.close(fd)
                raise
            return fd, False  # a file system without locks: the holder written in the file is all there is
        try:
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd, True
        except FileNotFoundError:
            pass
        os.close(fd)


@contextlib.contextmanager
def hold(workdir):
    """Hold the lock of `workdir` (created if needed) for the body; a workdir that cannot be written
    stops here, before any data is loaded."""
    workdir, path = Path(workdir), Path(workdir) / NAME
    fd = None
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        fd, locked = _open_locked(path)
        previous = _read(fd)
        me = {'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time(), 'command': sys.argv}
        # with the flock ours, whoever the file names has ended; without locking, trust what it says
        if previous.get('pid') and not locked and (previous.get('host') != me['host'] or _alive(previous['pid'])):
            raise UserError(f'{workdir} is in use by another run ({_describe(previous)}): wait for it to end, '
                            f'or give this run another --workdir')
        if previous.get('pid'):
            print(f'note: taking over the lock of a run that ended without releasing it ({_describe(previous)})')
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(me).encode(), 0)
        os.fsync(fd)
    except BaseException as error:
        if fd is not None:
            os.close(fd)
        if isinstance(error, OSError) and disk_full(error):
            raise no_space(workdir, 'its lock file') from None
        if isinstance(error, OSError):
            raise UserError(f'cannot write to the workdir {workdir} ({error.strerror or error}): '
                            f'give a writable folder as --workdir') from None
        raise
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)  # before the flock goes, so that no one waits on a removed file (see _open_locked)
        os.close(fd)


def _alive(pid):
    """Is process `pid` of this host running (a zombie counts as ended)?"""
    try:
        with open(f'/proc/{pid}/stat') as f:
            return f.read().rsplit(')', 1)[1].split()[0] != 'Z'
    except FileNotFoundError:
        return False
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass
        return True
