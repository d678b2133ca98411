"""events.py: TensorBoard event files written by hand, read back with the tensorboard package's own readers."""
import os
import socket
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

import events
from conftest import ROOT


def read_events(path):
    """Every Event of one file as written, through tensorboard's record loader (it checks the TFRecord
    lengths and CRCs) and its protocol buffer classes."""
    from tensorboard.backend.event_processing import event_file_loader
    from tensorboard.compat.proto import event_pb2
    return [event_pb2.Event.FromString(record) for record in event_file_loader.RawEventFileLoader(str(path)).Load()]


def accumulated_scalars(logdir, tag):
    from tensorboard.backend.event_processing import event_accumulator
    accumulator = event_accumulator.EventAccumulator(str(logdir))
    accumulator.Reload()
    return [(s.step, s.value, s.wall_time) for s in accumulator.Scalars(tag)]


def test_crc32c_known_vectors():
    assert events.crc32c(b'123456789') == 0xE3069283  # the check value of CRC-32C (Castagnoli)
    assert events.crc32c(b'') == 0
    assert events.crc32c(bytes(32)) == 0x8A9136AA  # RFC 3720 (iSCSI), B.4: 32 bytes of zeros
    assert events.crc32c(b'\xff' * 32) == 0x62A8AB43  # ... and of 0xff


def test_masked_crc_and_frame_match_tensorboards_own():
    from tensorboard.compat.tensorflow_stub import pywrap_tensorflow as stub  # an independent implementation
    for data in (b'', b'a', bytes(range(256)), b'hello world' * 7):
        assert events.masked_crc32c(data) == stub.masked_crc32c(data)
    crc = 0xE3069283  # the mask by hand: rotate right by 15, add the constant
    assert events.masked_crc32c(b'123456789') == (((crc >> 15) | ((crc << 17) & 0xFFFFFFFF)) + 0xA282EAD8) % 2 ** 32
    frame = events.tfrecord(b'abc')
    assert frame[:8] == struct.pack('<Q', 3) and frame[12:15] == b'abc' and len(frame) == 19


def test_scalars_read_back_by_tensorboard(tmp_path):
    writer = events.EventWriter(tmp_path)
    values = [(0, 2.5, 1000.25), (1, -0.125, 1001.5), (7, np.float32(3.0), 1002.0), (2 ** 40, 1e-3, 1003.0)]
    for step, value, wall_time in values:
        writer.scalar('train/loss', value, step, wall_time=wall_time)
    writer.scalar('valid/accuracy', np.float64(0.75), np.int64(7), wall_time=1004.0)
    writer.close()

    files = list(tmp_path.iterdir())
    assert len(files) == 1
    name = files[0].name  # events.out.tfevents.<time>.<hostname>.<pid>.<n>
    stamp, host_pid_n = name.removeprefix('events.out.tfevents.').split('.', 1)
    host, pid, number = host_pid_n.rsplit('.', 2)
    assert name.startswith('events.out.tfevents.') and len(stamp) == 10 and stamp.isdigit()
    assert (host, pid) == (socket.gethostname(), str(os.getpid())) and number.isdigit()

    read = read_events(files[0])
    assert read[0].file_version == 'brain.Event:2'
    assert len(read) == 1 + len(values) + 1
    got = [(e.step, e.summary.value[0].tag, e.summary.value[0].simple_value, e.wall_time) for e in read[1:]]
    expected = [(s, 'train/loss', pytest.approx(float(v), rel=1e-7), t) for s, v, t in values]
    assert got == expected + [(7, 'valid/accuracy', 0.75, 1004.0)]

    assert accumulated_scalars(tmp_path, 'valid/accuracy') == [(7, 0.75, 1004.0)]
    assert [s[0] for s in accumulated_scalars(tmp_path, 'train/loss')] == [0, 1, 7, 2 ** 40]


def test_odd_values_and_default_wall_time(tmp_path):
    before = time.time()
    with events.EventWriter(tmp_path) as writer:
        writer.scalar('x', float('nan'), 0)
        writer.scalar('x', 1e300, 1)  # beyond float32: +inf, as a float32 cast gives
        writer.scalar('x', -1e300, 2)
        writer.scalar('x', 5, -3)  # an int value, a negative step
        writer.scalar('ünïcode/tag', 1.0, 4)
    after = time.time()
    read = read_events(next(tmp_path.iterdir()))[1:]
    simple = [e.summary.value[0].simple_value for e in read]
    assert np.isnan(simple[0]) and simple[1:4] == [np.inf, -np.inf, 5.0]
    assert [e.step for e in read] == [0, 1, 2, -3, 4]
    assert read[4].summary.value[0].tag == 'ünïcode/tag'
    assert all(before <= e.wall_time <= after for e in read)


def test_buffered_until_flush(tmp_path):
    writer = events.EventWriter(tmp_path)
    path = writer.path
    assert len(read_events(path)) == 1  # the version record is written at once
    writer.scalar('loss', 1.0, 1)
    assert len(read_events(path)) == 1  # buffered: no write per scalar
    writer.flush()
    assert len(read_events(path)) == 2
    writer.close()
    writer.close()  # twice is harmless
    with pytest.raises(ValueError, match='closed'):
        writer.scalar('loss', 2.0, 2)


def test_several_writers_in_one_folder_add_files(tmp_path):
    for run, steps in enumerate(([1, 2], [3, 4])):  # a run, then its resumption
        with events.EventWriter(tmp_path) as writer:
            for step in steps:
                writer.scalar('loss', 10.0 * run + step, step, wall_time=100.0 + step)
    assert len(list(tmp_path.iterdir())) == 2
    assert [(s, v) for s, v, _ in accumulated_scalars(tmp_path, 'loss')] == [(1, 1.0), (2, 2.0), (3, 13.0), (4, 14.0)]


def test_write_errors_warn_once_and_never_raise(tmp_path, capsys):
    blocked = tmp_path / 'file'
    blocked.write_text('not a folder')
    writer = events.EventWriter(blocked / 'run')  # the folder cannot be made
    for step in range(3):
        writer.scalar('loss', 1.0, step)
    writer.flush()
    writer.close()
    err = capsys.readouterr().err
    assert err.count('warning: cannot write TensorBoard events') == 1 and err.count('\n') == 1

    writer = events.EventWriter(tmp_path / 'ok')
    writer._file.close()
    writer._file = _FailingFile()  # a disk that fills up during the run
    writer.scalar('loss', 1.0, 0)
    writer.flush()
    writer.scalar('loss', 2.0, 1)
    writer.flush()
    writer.close()
    err = capsys.readouterr().err
    assert err.count('warning: cannot write TensorBoard events') == 1 and 'No space left' in err


class _FailingFile:
    def write(self, data):
        raise OSError(28, 'No space left on device')

    def flush(self):
        pass

    def close(self):
        pass


def test_import_loads_neither_tensorflow_nor_tensorboard():
    code = ('import sys, events\n'
            'w = events.EventWriter(sys.argv[1]); w.scalar("a", 1.0, 1); w.close()\n'
            'bad = [m for m in sys.modules if m.split(".")[0] in ("tensorflow", "tensorboard", "numpy", "jax")]\n'
            'print(bad)')
    with tempfile.TemporaryDirectory() as logdir:
        out = subprocess.run([sys.executable, '-c', code, logdir], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == '[]'
