"""TensorBoard event files written by hand: scalars for `tensorboard --logdir weights`, without
importing TensorFlow (seconds and gigabytes) or the tensorboard package.

An event file is a sequence of TFRecord frames:
    uint64 length (little endian), uint32 masked CRC32C of those 8 bytes, the data, uint32 masked CRC32C of the data,
each holding one serialized `tensorboard.Event` protocol buffer: first Event{file_version "brain.Event:2"}, then
one Event{wall_time, step, summary{value{tag, simple_value}}} per scalar. The field numbers (checked against
tensorboard 2.21's event.proto and summary.proto): Event.wall_time = 1 (double), Event.step = 2 (int64),
Event.file_version = 3 (string), Event.summary = 5 (Summary); Summary.value = 1 (repeated Value);
Value.tag = 1 (string), Value.simple_value = 2 (float).

Usage::

    writer = EventWriter(workdir)          # a new events.out.tfevents.<time>.<host>.<pid>.<n> file
    writer.scalar('train/loss', 0.25, step=3)
    writer.flush()                         # e.g. at the end of each epoch; also every FLUSH_SECONDS
    writer.close()

Writing never stops a training run: the first OSError (full disk, folder removed, ...) is reported as one
warning line and later events are dropped. A resumed run adds a new file to the same folder; TensorBoard
reads every file of a folder in name order, and the names start with the time.
"""
import itertools
import math
import os
import socket
import struct
import sys
import time
from pathlib import Path

FILE_VERSION = 'brain.Event:2'
FLUSH_SECONDS = 30.0  # buffered events reach the file at least this often (checked when a scalar is written)
FLUSH_BYTES = 1 << 16  # ... or when this much is waiting
_FILE_NUMBERS = itertools.count()  # two writers of one process in one second still get different names


# ----------------------------------------------------------------------------- CRC32C (Castagnoli)

def _crc32c_table():
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):  # reflected polynomial 0x1EDC6F41 -> 0x82F63B78
            crc = (crc >> 1) ^ 0x82F63B78 if crc & 1 else crc >> 1
        table.append(crc)
    return tuple(table)


_CRC32C_TABLE = _crc32c_table()


def crc32c(data):
    """CRC-32C of `data` (bytes), the checksum TFRecord uses; crc32c(b'123456789') == 0xE3069283."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C_TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data):
    """TFRecord stores the CRC rotated right by 15 bits plus a constant (a CRC of data holding CRCs is weak)."""
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def tfrecord(data):
    """One TFRecord frame holding `data`."""
    length = struct.pack('<Q', len(data))
    return length + struct.pack('<I', masked_crc32c(length)) + data + struct.pack('<I', masked_crc32c(data))


# ----------------------------------------------------------------------------- protocol buffers

def _varint(value):
    value &= 0xFFFFFFFFFFFFFFFF  # a negative int64 is its two's complement (10 bytes)
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(number, wire_type, payload):
    """A field: its key (number << 3 | wire type), then the payload; length-delimited ones get their length."""
    if wire_type == 2:
        payload = _varint(len(payload)) + payload
    return _varint(number << 3 | wire_type) + payload


def _float32(value):
    """`value` as a float32 (what simple_value holds): beyond its range it becomes +-inf, as a cast would."""
    value = float(value)
    if math.isfinite(value) and abs(value) > 3.4028234663852886e38:
        value = math.copysign(math.inf, value)
    return struct.pack('<f', value)


def scalar_event(tag, value, step, wall_time):
    """Event{wall_time, step, summary{value{tag, simple_value}}} serialized."""
    summary_value = _field(1, 2, tag.encode('utf-8')) + _field(2, 5, _float32(value))
    summary = _field(1, 2, summary_value)
    return _field(1, 1, struct.pack('<d', wall_time)) + _field(2, 0, _varint(int(step))) + _field(5, 2, summary)


def version_event(wall_time):
    """Event{wall_time, file_version}: TensorBoard expects it as the first record of a file."""
    return _field(1, 1, struct.pack('<d', wall_time)) + _field(3, 2, FILE_VERSION.encode())


# ----------------------------------------------------------------------------- the writer

class EventWriter:
    """Scalars into a new event file in `logdir` (created if needed). Cheap: records are buffered and reach
    the file on flush(), close(), every FLUSH_SECONDS or FLUSH_BYTES."""

    def __init__(self, logdir):
        self.logdir = Path(logdir)
        self.path = None
        self._file = None
        self._buffer = bytearray()
        self._failed = False
        self._closed = False
        self._last_flush = time.monotonic()
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._file = self._create()
        except OSError as error:
            self._fail(error)
            return
        self._buffer += tfrecord(version_event(time.time()))
        self.flush()  # the file is whole from the start: TensorBoard shows the run at once

    def _create(self):
        """A new file, never one another writer (another process, a second ago) has made."""
        while True:
            name = (f'events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.'
                    f'{os.getpid()}.{next(_FILE_NUMBERS)}')
            try:
                self.path = self.logdir / name
                return open(self.path, 'xb')
            except FileExistsError:
                continue

    def scalar(self, tag, value, step, wall_time=None):
        """Record `value` (a number: float, int, numpy or JAX scalar) under `tag` at `step`."""
        if self._closed:
            raise ValueError(f'EventWriter for {self.logdir} is closed')
        if not isinstance(tag, str):
            raise TypeError(f'a tag is a string, not {type(tag).__name__}')
        record = tfrecord(scalar_event(tag, value, step, time.time() if wall_time is None else float(wall_time)))
        if self._failed:
            return
        self._buffer += record
        if len(self._buffer) >= FLUSH_BYTES or time.monotonic() - self._last_flush >= FLUSH_SECONDS:
            self.flush()

    def flush(self):
        """Write the buffered events to the file."""
        self._last_flush = time.monotonic()
        if self._failed or not self._buffer:
            return
        try:
            self._file.write(self._buffer)
            self._file.flush()
        except OSError as error:
            self._fail(error)
        self._buffer.clear()

    def close(self):
        if self._closed:
            return
        self.flush()
        self._closed = True
        if self._file is not None:
            try:
                self._file.close()
            except OSError as error:
                self._fail(error)

    def _fail(self, error):
        """Report the first write error once; from now on events are dropped."""
        if not self._failed:
            print(f'warning: cannot write TensorBoard events in {self.logdir} ({error}); '
                  f'the run goes on without them', file=sys.stderr, flush=True)
        self._failed = True
        self._buffer.clear()

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()
