#!/usr/bin/env python3
"""A generated stand-in for the raw EMBER 2018 binaries: benign files, and malware files with a
planted signature anywhere in them, so a model that reads more of each file can find more of them.

Layout (the one ember/dataset.py reads; real EMBER data is arranged the same way)::

    DIR/train/benign/...    DIR/train/malware/...    DIR/train/signatures.csv
    DIR/test/benign/...     DIR/test/malware/...     DIR/test/signatures.csv

A file is named by the SHA-256 of its uncompressed bytes (as EMBER names them) and lies 0, 1 or 2
folders below its class folder (benign/<name>, benign/ab/<name>, benign/ab/cd/<name>, by digits
of the name). About ``gzip_fraction`` (default 25%) of the files, drawn at random, are
gzip-compressed (mtime 0, so reproducible); names carry no suffix: a reader tells gzip by its
first two bytes (1f 8b). ``signatures.csv`` has one row per file: ``path`` (relative to the
split folder, with /), ``label`` (0 benign, 1 malware), ``length`` (uncompressed bytes),
``offset`` (of the signature; -1 for benign) and ``gzip`` (0 or 1).

Background (the same distribution for both classes). A file is a 2048-byte PE-like header
followed by sections until the file length is reached (at most 32; the last is cut, or
stretched when the 32nd is reached). The header has fixed magic and small integers: "MZ" and
DOS header fields, the DOS stub and its message, a random "Rich" block, "PE\\0\\0", a COFF and an
optional header (machine, timestamp, sizes, entry point, data directories), and a section table
that describes the sections that follow. Each section's kind is drawn with these weights, its
size is 512 x floor(2^U(1, 7)) bytes (1 KiB - 63.5 KiB), and its last 0 - 511 bytes (at most a
quarter) are zero padding:

    code      0.30  skewed x86-opcode-like bytes, function prologues, ret + int3 (CC) padding runs
    resource  0.18  uniform random bytes (compressed/encrypted data), some behind a PNG/zlib/ZIP/BMP magic
    data      0.14  little-endian 32-bit words: zeros, small integers, pointers, floats
    strings   0.12  NUL-terminated printable ASCII (English letter frequencies)
    zeros     0.10  all zero (.bss-like)
    imports   0.06  hint + API/DLL name entries (GetProcAddress, kernel32.dll, ...)
    unicode   0.06  UTF-16LE strings (ASCII bytes interleaved with zeros)
    relocs    0.04  16-bit relocation entries 0x3xxx

Signature (malware only). The 24-byte MOTIF, over the 12-byte ALPHABET, repeated to
SIGNATURE_LENGTH = 480 bytes; after its first (always exact) copy each byte is replaced with
probability MUTATION_RATE = 0.1 by a uniform ALPHABET byte. It overwrites the background at an
offset uniform over 0 ... L - 480, so it always lies wholly inside the file. Each ALPHABET byte
also occurs in the background, but rarely: every background ALPHABET byte is kept with
probability ALPHABET_KEEP = 0.05 (about 90 remain in a 2^17-byte file, at most ~270) and
otherwise changed to a neighbouring value, and a kept one is never next to another. So the
background never holds two adjacent ALPHABET bytes, let alone a piece of the signature, while the
signature is 480 of them in a row: their count (what a bag of bytes, e.g. a 1-layer attention
model with a pooled output, can see) tells the classes apart, though the mere presence of one
does not. The background is drawn first, from the same random
stream for both classes: make_file(default_rng(k), L, False) and make_file(default_rng(k), L,
True) differ only inside the signature.

Lengths. Every file is exactly ``length`` bytes (default 2^17), unless ``min_length`` is given:
then each file's length is uniform over min_length ... length, and its signature's offset
uniform over that file's own length.

Accuracy bound for a reader of the first T bytes. The first min(T, L) bytes of a malware file
whose signature starts at or after T have exactly the benign distribution, so no classifier of
them beats

    0.5 + 0.5 * E_L[ min(T, L - 479) / (L - 479) ]      (S = 480; L - 479 possible offsets),

which for the fixed default length L = 131072 is 0.5 + 0.5 * min(T, 130593) / 130593: 0.5039 at
T = 2^10, 0.5627 at 2^14, 0.7509 at 2^16, 1 at 2^17. It is attained up to 1 / (2 (L - 479))
(4e-6), as two adjacent ALPHABET bytes occur only in signatures; a reader that needs the whole
signature in view reaches 0.5 + 0.5 * max(0, min(T - 479, L - 479)) / (L - 479).
``accuracy_bound(T, length, min_length)`` computes it.

Reproducibility: file i (train files first, then test) is drawn with numpy.random.default_rng(
[seed, i]); within a split, even positions are benign and odd ones malware, so each split's
classes differ by at most one file. The output depends only on the arguments, never on the
number of worker processes ("spawn" processes: the caller may run threads, JAX's among them).
Every file is written to a temporary name and moved into place; each split's signatures.csv is
written last, so a split without one is incomplete. A split folder records the settings that
made it (.generate.json): running again with the same settings completes or rewrites it, other
settings are refused. Usage::

    python ember/generate.py --output_dir DIR --count N [--length L] [--min_length M]
        [--seed S] [--test_fraction F] [--gzip_fraction G] [--workers W]
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import math
import multiprocessing
import os
import struct
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere
from utils import OneLineParser, integer_at_least, run_generator  # noqa: E402  (no JAX import)

DEFAULT_LENGTH = 1 << 17
MIN_LENGTH = 4096  # the header (2048) plus room for sections and a signature
SPLITS = ('train', 'test')
CLASSES = ('benign', 'malware')
CSV_COLUMNS = ('path', 'label', 'length', 'offset', 'gzip')
MARKER = '.generate.json'  # in each split folder: the settings that made it
FORMAT_VERSION = 1  # bump when the same settings would give different files

# --------------------------------------------------------------------------
# The signature

ALPHABET = np.array([0x07, 0x17, 0x1D, 0x1E, 0x9A, 0x9F, 0xA7, 0xB6, 0xD6, 0xDE, 0xEA, 0xF1], np.uint8)
# 24 bytes, uneven use of the alphabet (9A x4, D6 x3, B6 x3, 17/EA/07/DE/9F x2, 1D/A7/F1/1E x1).
MOTIF = bytes.fromhex('9AD6B6179AEA07DE9FD61D9AB6A7F1179AEA07DE9FD6B61E')
SIGNATURE_LENGTH = 480  # 20 copies of the motif
MUTATION_RATE = 0.1  # per byte after the first copy: replaced by a uniform alphabet byte
ALPHABET_KEEP = 0.05  # chance that an alphabet byte drawn for the background stays

_MOTIF = np.frombuffer(MOTIF, np.uint8)
_IS_ALPHABET = np.zeros(256, bool)
_IS_ALPHABET[ALPHABET] = True
_REMAP = np.arange(256, dtype=np.uint8)  # alphabet byte -> the next value up that is not one
for _b in ALPHABET.tolist():
    _c = _b
    while _IS_ALPHABET[_c]:
        _c = (_c + 1) % 256
    _REMAP[_b] = _c

# --------------------------------------------------------------------------
# The background: byte tables and section kinds

TABLE_BITS = 16  # a byte distribution is a table of 2^16 bytes indexed uniformly


def _table(weights: np.ndarray) -> np.ndarray:
    """(256,) weights -> (2^16,) uint8 table in which byte b fills about weights[b] / sum of the slots."""
    size = 1 << TABLE_BITS
    share = weights / weights.sum() * size
    counts = np.floor(share).astype(np.int64)
    short = size - counts.sum()  # largest remainders get the slots left
    counts[np.argsort(counts - share, kind='stable')[:short]] += 1
    return np.repeat(np.arange(256, dtype=np.uint8), counts)


def _code_weights() -> np.ndarray:
    w = np.full(256, 0.1)
    common = {  # frequent x86 bytes: opcodes, ModRM, REX prefixes, small displacements
        0x00: 8, 0x8B: 6, 0x48: 6, 0x89: 4, 0xFF: 4, 0xE8: 3, 0x0F: 3, 0x83: 3, 0x45: 3, 0x24: 3,
        0x4C: 2, 0x85: 2, 0x74: 2, 0x75: 2, 0x8D: 2, 0xC0: 2, 0x33: 1.5, 0x01: 1.5, 0x44: 1.5,
        0x08: 1.5, 0x10: 1.5, 0x20: 1.2, 0x50: 1, 0x5D: 1, 0xC3: 1, 0xEB: 1, 0x04: 1, 0x0D: 1,
        0x02: 1, 0x4D: 1, 0xF8: 1, 0xC7: 1, 0x84: 1, 0xE9: 0.8, 0x28: 0.8, 0x30: 0.8, 0x18: 0.8,
        0x3B: 0.8, 0x6A: 0.8, 0x56: 0.8, 0x57: 0.8, 0x53: 0.8, 0x5E: 0.6, 0x5F: 0.6, 0x5B: 0.6,
        0x40: 0.6, 0x41: 0.6, 0x49: 0.6, 0xB8: 0.5, 0xC6: 0.5, 0x80: 0.5, 0x03: 0.5, 0x7C: 0.4,
        0x7D: 0.4, 0x7E: 0.4, 0x7F: 0.4,
    }
    for byte, weight in common.items():
        w[byte] = weight
    return w


def _text_weights() -> np.ndarray:
    w = np.zeros(256)
    letters = (8.2, 1.5, 2.8, 4.3, 12.7, 2.2, 2.0, 6.1, 7.0, 0.15, 0.77, 4.0, 2.4, 6.7, 7.5, 1.9,
               0.095, 6.0, 6.3, 9.1, 2.8, 0.98, 2.4, 0.15, 2.0, 0.074)  # a ... z
    w[ord('a'):ord('z') + 1] = letters
    w[ord('A'):ord('Z') + 1] = np.asarray(letters) * 0.08
    w[ord('0'):ord('9') + 1] = 0.4
    w[ord(' ')] = 15
    for ch in '._-:\\/%(),=':
        w[ord(ch)] = 0.3
    return w


_CODE_TABLE = _table(_code_weights())
_TEXT_TABLE = _table(_text_weights())

_PROLOGUES = np.array([[0x55, 0x8B, 0xEC, 0x83], [0x48, 0x89, 0x5C, 0x24],
                       [0x40, 0x53, 0x48, 0x83], [0x48, 0x83, 0xEC, 0x28]], np.uint8)
_RESOURCE_MAGICS = (b'\x89PNG\r\n\x1a\n', b'\x78\x9c', b'PK\x03\x04', b'BM')
_IMPORT_NAMES = (
    b'kernel32.dll', b'user32.dll', b'advapi32.dll', b'ntdll.dll', b'msvcrt.dll', b'ws2_32.dll',
    b'shell32.dll', b'GetProcAddress', b'LoadLibraryA', b'LoadLibraryW', b'GetModuleHandleW',
    b'VirtualAlloc', b'VirtualFree', b'VirtualProtect', b'CreateFileW', b'ReadFile', b'WriteFile',
    b'CloseHandle', b'CreateThread', b'ExitProcess', b'GetLastError', b'HeapAlloc', b'HeapFree',
    b'GetCommandLineA', b'RegOpenKeyExW', b'RegQueryValueExW', b'RegCloseKey', b'MessageBoxW',
    b'GetTickCount', b'QueryPerformanceCounter', b'Sleep', b'GetCurrentProcessId',
    b'GetSystemTimeAsFileTime', b'InitializeCriticalSection', b'EnterCriticalSection',
    b'LeaveCriticalSection', b'memcpy', b'memset', b'malloc', b'free', b'strlen',
    b'CreateProcessW', b'WSAStartup', b'connect', b'send', b'recv', b'SetUnhandledExceptionFilter',
)


def _import_entries():
    """Hint (2 bytes) + name + NUL, padded to even length, as a (names, width) byte matrix."""
    entries = [b'\0\0' + name + b'\0' * (1 + (len(name) + 1) % 2) for name in _IMPORT_NAMES]
    width = max(map(len, entries))
    matrix = np.zeros((len(entries), width), np.uint8)
    for row, entry in enumerate(entries):
        matrix[row, :len(entry)] = np.frombuffer(entry, np.uint8)
    return matrix, np.array([len(e) for e in entries], np.int64)


_IMPORT_MATRIX, _IMPORT_LENGTHS = _import_entries()


def _from_table(rng, table, n):
    return table[rng.integers(0, 1 << TABLE_BITS, n, dtype=np.uint32)]


def _runs(starts, lengths, limit):
    """Positions start + 0 ... start + length - 1 of every run, those below limit."""
    total = int(lengths.sum())
    base = np.repeat(starts - np.cumsum(lengths) + lengths, lengths)
    positions = base + np.arange(total)
    return positions[positions < limit]


def _code(rng, n):
    out = _from_table(rng, _CODE_TABLE, n)
    m = max(1, n // 300)  # functions of ~300 bytes: ret, int3 padding, a prologue
    starts = np.sort(rng.integers(0, n, m))
    pads = rng.integers(1, 16, m)
    out[np.maximum(starts - 1, 0)] = 0xC3
    out[_runs(starts, pads, n)] = 0xCC
    where = (starts + pads)[:, None] + np.arange(_PROLOGUES.shape[1])
    values = _PROLOGUES[rng.integers(0, len(_PROLOGUES), m)]
    inside = where < n
    out[where[inside]] = values[inside]
    return out


def _data(rng, n):
    words = (n + 3) // 4
    kind = rng.random(words)
    small = rng.geometric(0.02, words).astype(np.uint32)
    pointer = (0x00400000 + rng.integers(0, 0x100000, words)).astype(np.uint32) & ~np.uint32(3)
    floats = rng.standard_normal(words).astype(np.float32).view(np.uint32)
    value = np.where(kind < 0.45, np.uint32(0),
                     np.where(kind < 0.8, small, np.where(kind < 0.95, pointer, floats)))
    return value.astype('<u4').view(np.uint8)[:n]


def _strings(rng, n):
    out = _from_table(rng, _TEXT_TABLE, n)
    ends = np.cumsum(rng.geometric(1 / 14, n // 4 + 8))  # NUL after ~13 characters
    out[ends[ends < n]] = 0
    return out


def _imports(rng, n):
    choice = rng.integers(0, len(_IMPORT_LENGTHS), n // 8 + 8)  # entries are >= 8 bytes
    lengths = _IMPORT_LENGTHS[choice]
    used = int(np.searchsorted(np.cumsum(lengths), n)) + 1
    choice, lengths = choice[:used], lengths[:used]
    starts = np.cumsum(lengths) - lengths
    rows = np.repeat(choice, lengths)
    columns = np.arange(int(lengths.sum())) - np.repeat(starts, lengths)
    out = _IMPORT_MATRIX[rows, columns][:n].copy()
    hints = rng.integers(0, 1024, used)  # little-endian hint before each name
    inside = starts + 1 < n
    out[starts[inside]] = hints[inside] & 0xFF
    out[starts[inside] + 1] = hints[inside] >> 8
    return out


def _unicode(rng, n):
    out = np.zeros(n, np.uint8)
    out[0::2] = _strings(rng, (n + 1) // 2)
    return out


def _resource(rng, n):
    out = np.frombuffer(rng.bytes(n), np.uint8).copy()
    pick = int(rng.integers(0, len(_RESOURCE_MAGICS) + 2))  # sometimes headerless
    if pick < len(_RESOURCE_MAGICS):
        magic = np.frombuffer(_RESOURCE_MAGICS[pick], np.uint8)[:n]
        out[:magic.size] = magic
    return out


def _relocs(rng, n):
    entries = (n + 1) // 2
    offsets = rng.integers(0, 4096, (entries + 63) // 64 * 64).reshape(-1, 64)
    offsets.sort(axis=1)  # sorted within each 4 KiB page block
    return (0x3000 | offsets.ravel()[:entries]).astype('<u2').view(np.uint8)[:n]


def _zeros(rng, n):
    return np.zeros(n, np.uint8)


KINDS = ('code', 'resource', 'data', 'strings', 'zeros', 'imports', 'unicode', 'relocs')
KIND_WEIGHTS = (0.30, 0.18, 0.14, 0.12, 0.10, 0.06, 0.06, 0.04)
_GENERATORS = (_code, _resource, _data, _strings, _zeros, _imports, _unicode, _relocs)
_SECTION_NAMES = (b'.text', b'.rsrc', b'.data', b'.rdata', b'.bss', b'.idata', b'.rsrc', b'.reloc')
_CHARACTERISTICS = (0x60000020, 0x40000040, 0xC0000040, 0x40000040, 0xC0000080, 0xC0000040,
                    0x40000040, 0x42000040)
HEADER_SIZE = 2048
SECTOR = 512  # file alignment: section sizes are multiples of it
MAX_SECTIONS = 32
_DOS_STUB = (bytes.fromhex('0E1FBA0E00B409CD21B8014CCD21')
             + b'This program cannot be run in DOS mode.\r\r\n$').ljust(64, b'\0')
_OPTIONAL = struct.Struct('<HBB' + 'I' * 9 + 'H' * 6 + 'I' * 4 + 'HH' + 'I' * 6)  # 96 bytes
_SECTION = struct.Struct('<8sIIIIIIHHI')  # 40 bytes


def _header(rng, kinds, starts, sizes, contents) -> np.ndarray:
    """The 2048-byte PE-like header of a file whose sections are given, as uint8."""
    h = bytearray(HEADER_SIZE)
    lfanew = 0x80 + 8 * int(rng.integers(0, 20))
    h[0:2] = b'MZ'
    struct.pack_into('<9H', h, 2, 0x90, 3, 0, 4, 0, 0xFFFF, 0, 0xB8, 0)
    struct.pack_into('<H', h, 0x18, 0x40)
    struct.pack_into('<I', h, 0x3C, lfanew)
    h[0x40:0x80] = _DOS_STUB
    if lfanew > 0x80:  # the "Rich" block of the linker: XOR-masked, so random-looking
        h[0x80:lfanew - 8] = rng.bytes(lfanew - 0x88)
        h[lfanew - 8:lfanew] = b'Rich' + rng.bytes(4)
    wide = bool(rng.random() < 0.5)
    n = len(kinds)
    struct.pack_into('<4sHHIIIHH', h, lfanew, b'PE\0\0', 0x8664 if wide else 0x14C, n,
                     int(rng.integers(0x50000000, 0x66000000)), 0, 0, 0xE0, 0x22 if wide else 0x102)
    pages = (sizes + 0xFFF) // 0x1000 * 0x1000
    addresses = 0x1000 + np.cumsum(pages) - pages
    code = [j for j in range(n) if KINDS[kinds[j]] == 'code']
    size_of_code = int(sizes[code].sum()) if code else 0
    entry = int(addresses[code[0]] + rng.integers(0, max(1, contents[code[0]]))) if code else 0
    base_of_code = int(addresses[code[0]]) if code else 0
    base_of_data = next((int(addresses[j]) for j in range(n) if KINDS[kinds[j]] != 'code'), 0)
    optional = lfanew + 24
    _OPTIONAL.pack_into(h, optional, 0x20B if wide else 0x10B, int(rng.integers(6, 15)), int(rng.integers(0, 40)),
                        size_of_code, int(sizes.sum()) - size_of_code, 0, entry, base_of_code, base_of_data,
                        0x40000000 if wide else 0x00400000, 0x1000, SECTOR, 6, 0, 0, 0, 6, 0, 0,
                        int(addresses[-1] + pages[-1]), HEADER_SIZE, 0, int(rng.integers(2, 4)), 0x8140,
                        0x100000, 0x1000, 0x100000, 0x1000, 0, 16)
    for directory, kind in ((1, 'imports'), (2, 'resource'), (5, 'relocs')):  # import, resource, reloc
        j = next((j for j in range(n) if KINDS[kinds[j]] == kind), None)
        if j is not None:
            struct.pack_into('<II', h, optional + 96 + 8 * directory, int(addresses[j]), int(contents[j]))
    table = optional + 0xE0
    for j in range(n):
        _SECTION.pack_into(h, table + 40 * j, _SECTION_NAMES[kinds[j]], int(contents[j]), int(addresses[j]),
                           int(sizes[j]), int(starts[j]), 0, 0, 0, 0, _CHARACTERISTICS[kinds[j]])
    return np.frombuffer(bytes(h), np.uint8)


def _background(rng, length: int) -> np.ndarray:
    """(length,) uint8: a header and sections, with alphabet bytes made rare and never adjacent."""
    kinds = rng.choice(len(KINDS), MAX_SECTIONS, p=KIND_WEIGHTS)
    sizes = SECTOR * np.floor(2.0 ** rng.uniform(1, 7, MAX_SECTIONS)).astype(np.int64)
    pads = (rng.random(MAX_SECTIONS) * SECTOR).astype(np.int64)
    ends = HEADER_SIZE + np.cumsum(sizes)
    n = min(int(np.searchsorted(ends, length)) + 1, MAX_SECTIONS)  # the first section reaching the end
    kinds, sizes, pads = kinds[:n], sizes[:n].copy(), pads[:n]
    starts = HEADER_SIZE + np.cumsum(sizes) - sizes
    sizes[-1] = length - starts[-1]
    contents = sizes - np.minimum(pads, sizes // 4)
    contents[kinds == KINDS.index('zeros')] = 0
    buf = np.zeros(length, np.uint8)
    buf[:HEADER_SIZE] = _header(rng, kinds, starts, sizes, contents)
    for kind, start, content in zip(kinds.tolist(), starts.tolist(), contents.tolist()):
        if content:
            buf[start:start + content] = _GENERATORS[kind](rng, content)
    hits = np.flatnonzero(_IS_ALPHABET[buf])
    keep = rng.random(hits.size) < ALPHABET_KEEP
    kept = np.flatnonzero(keep)
    adjacent = np.flatnonzero(np.diff(hits[kept]) == 1) + 1  # the later of two adjacent kept ones
    keep[kept[adjacent]] = False
    changed = hits[~keep]
    buf[changed] = _REMAP[buf[changed]]
    return buf


def signature(rng) -> np.ndarray:
    """(SIGNATURE_LENGTH,) uint8: the motif repeated, mutated within the alphabet after its first copy."""
    sig = np.resize(_MOTIF, SIGNATURE_LENGTH)
    tail = sig[_MOTIF.size:]
    hit = np.flatnonzero(rng.random(tail.size) < MUTATION_RATE)
    tail[hit] = ALPHABET[rng.integers(0, ALPHABET.size, hit.size)]
    return sig


def make_file(rng: np.random.Generator, length: int, malware: bool) -> tuple[bytes, int]:
    """One file of ``length`` bytes -> (bytes, signature offset, or -1 for benign).

    The background is drawn first and identically for both classes; a malware file then gets
    the signature at an offset uniform over 0 ... length - SIGNATURE_LENGTH."""
    if isinstance(length, bool) or not isinstance(length, (int, np.integer)) or length < MIN_LENGTH:
        raise ValueError(f'length must be an integer >= {MIN_LENGTH}, got {length!r}')
    buf = _background(rng, int(length))
    if not malware:
        return buf.tobytes(), -1
    offset = int(rng.integers(0, length - SIGNATURE_LENGTH + 1))
    buf[offset:offset + SIGNATURE_LENGTH] = signature(rng)
    return buf.tobytes(), offset


def accuracy_bound(T: int, length: int = DEFAULT_LENGTH, min_length: int | None = None,
                   whole_signature: bool = False) -> float:
    """Best accuracy of any classifier of a file's first T bytes, on balanced classes whose
    lengths are uniform over min_length ... length (default: all ``length``):
    0.5 + 0.5 * E[min(T, L - S + 1) / (L - S + 1)], the chance that the signature starts before T.
    With whole_signature, the chance that it ends by T instead (a reader that needs all of it)."""
    lengths = np.arange(length if min_length is None else min_length, length + 1, dtype=np.float64)
    if lengths.size == 0 or lengths[0] < SIGNATURE_LENGTH:
        raise ValueError(f'need {SIGNATURE_LENGTH} <= min_length <= length, got {min_length}, {length}')
    offsets = lengths - SIGNATURE_LENGTH + 1
    seen = max(T - SIGNATURE_LENGTH + 1 if whole_signature else T, 0)
    return float(0.5 + 0.5 * np.mean(np.minimum(seen, offsets) / offsets))


# --------------------------------------------------------------------------
# Writing the data set


def _relative_path(label: int, name: str) -> str:
    depth = int(name[2], 16) % 3  # 0, 1 or 2 folders below the class folder
    folders = [name[0:2], name[2:4]][:depth]
    return '/'.join([CLASSES[label], *folders, name])


def _write_atomically(path: Path, payload: bytes) -> None:
    temp = path.with_name(f'.{path.name}.{os.getpid()}.tmp')
    try:
        with open(temp, 'wb') as f:
            f.write(payload)
        os.replace(temp, path)
    except BaseException:
        try:
            os.remove(temp)
        except OSError:
            pass
        raise


def _build(task):
    """Draw and write a batch of files; -> their rows (index, split, path, label, length, offset, gzip, bytes)."""
    output_dir, seed, length, min_length, gzip_fraction, items = task
    rows = []
    for index, split, label in items:
        rng = np.random.default_rng([seed, index])
        size = length if min_length == length else int(rng.integers(min_length, length + 1))
        compressed = bool(rng.random() < gzip_fraction)
        data, offset = make_file(rng, size, bool(label))
        relative = _relative_path(label, hashlib.sha256(data).hexdigest())
        payload = gzip.compress(data, compresslevel=6, mtime=0) if compressed else data
        path = Path(output_dir, split, relative)
        path.parent.mkdir(parents=True, exist_ok=True)
        _write_atomically(path, payload)
        rows.append((index, split, relative, label, size, offset, int(compressed), len(payload)))
    return rows


def _check(name, value, low, high=None, kind=int):
    ok_type = (isinstance(value, (int, np.integer)) if kind is int
               else isinstance(value, (int, float, np.integer, np.floating)))
    if isinstance(value, bool) or not ok_type or not value >= low or (high is not None and not value <= high):
        bounds = f'>= {low}' if high is None else f'in [{low}, {high}]'
        raise ValueError(f'{name} must be {"an integer" if kind is int else "a number"} {bounds}, got {value!r}')


def _settings(count, length, min_length, seed, test_fraction, gzip_fraction):
    return {'format': FORMAT_VERSION, 'count': count, 'length': length, 'min_length': min_length,
            'seed': seed, 'test_fraction': test_fraction, 'gzip_fraction': gzip_fraction}


def _prepare(output_dir: Path, settings: dict) -> None:
    """Create the split folders; refuse ones holding anything but an earlier run with these settings."""
    earlier = []
    for split in SPLITS:
        folder = output_dir / split
        if folder.is_dir() and any(folder.iterdir()):
            try:
                same = json.loads((folder / MARKER).read_text()) == settings
            except (OSError, ValueError):
                same = False
            if not same:
                raise ValueError(f'{folder} already holds files that are not from ember/generate.py with these '
                                 f'settings; remove it or choose another output_dir')
            earlier.append(folder)
    for folder in earlier:
        for temp in folder.rglob('.*.tmp'):  # left by an interrupted run
            temp.unlink()
    for split in SPLITS:
        for name in CLASSES:
            (output_dir / split / name).mkdir(parents=True, exist_ok=True)
        _write_atomically(output_dir / split / MARKER, json.dumps(settings, sort_keys=True).encode())


def write_dataset(output_dir: str | os.PathLike, count: int = 10_000, length: int = DEFAULT_LENGTH, seed: int = 0,
                  test_fraction: float = 0.2, workers: int | None = None, verbose: bool = True,
                  min_length: int | None = None, gzip_fraction: float = 0.25) -> Path:
    """Write ``count`` files (train and test together) under output_dir; -> output_dir as a Path.

    round(count * test_fraction) files go to test, the rest to train; in each split the classes
    differ by at most one. ``workers``: processes (None: one per CPU; 0 or 1: this process); the
    output does not depend on it. See the module docstring for the format."""
    min_length = length if min_length is None else min_length
    _check('count', count, 1)
    _check('length', length, MIN_LENGTH)
    _check('min_length', min_length, MIN_LENGTH, length)
    _check('seed', seed, 0)
    _check('test_fraction', test_fraction, 0, 1, float)
    _check('gzip_fraction', gzip_fraction, 0, 1, float)
    if workers is not None:
        _check('workers', workers, 0)
    count, length, min_length, seed = int(count), int(length), int(min_length), int(seed)
    test_fraction, gzip_fraction = float(test_fraction), float(gzip_fraction)
    output_dir = Path(output_dir)
    _prepare(output_dir, _settings(count, length, min_length, seed, test_fraction, gzip_fraction))

    n_test = int(math.floor(count * test_fraction + 0.5))
    sizes = {'train': count - n_test, 'test': n_test}
    items = [(i, 'train', i % 2) for i in range(sizes['train'])]
    items += [(sizes['train'] + j, 'test', j % 2) for j in range(n_test)]
    batch = 32
    tasks = [(str(output_dir), seed, length, min_length, gzip_fraction, items[s:s + batch])
             for s in range(0, count, batch)]
    workers = min(os.cpu_count() or 1, len(tasks)) if workers is None else min(workers, len(tasks))

    begin = time.monotonic()
    if verbose:
        span = f'{length}' if min_length == length else f'{min_length}-{length}'
        print(f'generating {count} files of {span} bytes (train {sizes["train"]}, test {n_test}) into '
              f'{output_dir} with {max(workers, 1)} process(es) ...', flush=True)
    rows, raw, disk, last = [], 0, 0, begin

    def take(done):
        nonlocal raw, disk, last
        rows.extend(done)
        raw += sum(r[4] for r in done)
        disk += sum(r[7] for r in done)
        now = time.monotonic()
        if verbose and (now - last >= 1.0 or len(rows) == count):
            last = now
            eta = (now - begin) / len(rows) * (count - len(rows))
            print(f'  {len(rows)}/{count} files ({len(rows) / count:.0%}), {disk / 1e6:.0f} MB written, '
                  f'{now - begin:.1f} s, about {eta:.0f} s left', flush=True)

    if workers <= 1:
        for task in tasks:
            take(_build(task))
    else:
        with multiprocessing.get_context('spawn').Pool(workers) as pool:
            for done in pool.imap_unordered(_build, tasks):
                take(done)

    rows.sort()
    for split in SPLITS:
        lines = [','.join(CSV_COLUMNS)]
        lines += [f'{r[2]},{r[3]},{r[4]},{r[5]},{r[6]}' for r in rows if r[1] == split]
        _write_atomically(output_dir / split / 'signatures.csv', ('\n'.join(lines) + '\n').encode())

    if verbose:
        seconds = time.monotonic() - begin
        parts = []
        for split in SPLITS:
            labels = [r[3] for r in rows if r[1] == split]
            parts.append(f'{split} {len(labels)} ({len(labels) - sum(labels)} benign, {sum(labels)} malware)')
        zipped = sum(r[6] for r in rows)
        print(f'wrote {count} files to {output_dir}: {", ".join(parts)}; {zipped} gzip ({zipped / count:.0%}); '
              f'{raw / 1e6:.0f} MB raw, {disk / 1e6:.0f} MB on disk; {seconds:.1f} s '
              f'({count / max(seconds, 1e-9):.0f} files/s)', flush=True)
    return output_dir


# --------------------------------------------------------------------------
# Command line


def _fraction(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f'expected a number in [0, 1], got {text!r}')
    return value


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(description='Generate a stand-in for the EMBER raw binaries: DIR/{train,test}/{benign,malware}/ '
                                       'with a planted signature in every malware file, and signatures.csv per split.')
    parser.add_argument('--output_dir', metavar='DIR', required=True, help='folder for train/ and test/ (required)')
    parser.add_argument('--count', metavar='INT', type=integer_at_least(1), required=True,
                        help='files in all, train and test together (required)')
    parser.add_argument('--length', metavar='INT', type=integer_at_least(MIN_LENGTH), default=DEFAULT_LENGTH,
                        help=f'bytes per file, at least {MIN_LENGTH} (default: %(default)s = 2^17)')
    parser.add_argument('--min_length', metavar='INT', type=integer_at_least(MIN_LENGTH), default=None,
                        help='if given, lengths are uniform over [min_length, length] (default: none, all of --length)')
    parser.add_argument('--seed', metavar='INT', type=integer_at_least(0), default=0,
                        help='random seed; the same seed gives the same files (default: %(default)s)')
    parser.add_argument('--test_fraction', metavar='FLOAT', type=_fraction, default=0.2,
                        help='share of files in test/, in [0, 1] (default: %(default)s)')
    parser.add_argument('--gzip_fraction', metavar='FLOAT', type=_fraction, default=0.25,
                        help='share of files gzip-compressed, in [0, 1] (default: %(default)s)')
    parser.add_argument('--workers', metavar='INT', type=integer_at_least(0), default=None,
                        help='processes; 0 or 1: write in this process (default: one per CPU)')
    args = parser.parse_args(argv)
    return run_generator(parser.prog, lambda: write_dataset(
        args.output_dir, count=args.count, length=args.length, seed=args.seed, test_fraction=args.test_fraction,
        workers=args.workers, min_length=args.min_length, gzip_fraction=args.gzip_fraction),
        interrupted='interrupted; run again with the same arguments to finish')


if __name__ == '__main__':
    sys.exit(main())
