#!/usr/bin/env python3
"""Fetch the Long Range Arena release and unpack only what the chosen tasks read.

    python fetch_lra.py [--tasks=listops,retrieval,pathfinder,pathx] [--difficulty=hard]
                        [--url=URL] [--archive=PATH] [--output=DIR]

The release is one tar.gz (lra_release.gz, several GB). It is downloaded once into --archive (a `.part`
file renamed when whole; a broken download resumes with an HTTP Range request, automatically and on the
next run) and kept there. Then one pass through the archive unpacks, under --output (the repository root
by default, where the loaders look), only:

    listops     lra_release/listops-1000/                        (the archive has a duplicate, skipped)
    retrieval   lra_release/lra_release/tsv_data/new_aan_pairs.{train,eval,test}.tsv
    pathfinder  lra_release/lra_release/pathfinder32/<difficulty dir>/
    pathx       lra_release/lra_release/pathfinder128/<difficulty dir>/

Each folder is unpacked into `<folder>.partial` and renamed when the whole archive has been read and
checked (gzip's CRC and length), so a folder that exists is complete: it is skipped on the next run.
Members are unpacked with tarfile's 'data' filter: none can land outside the output folder.
Errors end in one line: exit status 2 for a bad option, 1 for network and data problems, 130 for Ctrl-C.
"""
import argparse
import gzip
import http.client
import os
import shutil
import sys
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the repository root, from anywhere
from pathfinder.generate import DIFFICULTY_DIRS  # noqa: E402  (the one place for LRA's folder names)
from utils import ROOT, OneLineParser  # noqa: E402

PROG = 'fetch_lra.py'
URL = 'https://storage.googleapis.com/long-range-arena/lra_release.gz'
TASKS = ('listops', 'retrieval', 'pathfinder', 'pathx')
AAN_FILES = frozenset(f'new_aan_pairs.{split}.tsv' for split in ('train', 'eval', 'test'))
TRIES = 5  # requests per download before giving up (each resumes where the last one stopped)
RETRY_SECONDS = 5.0  # wait before the next try, times the number of the try
CHUNK = 1 << 20
TIMEOUT = 60  # seconds without a byte before a request counts as broken


class FetchError(Exception):
    """A network or data problem: one line, exit status 1."""


class Broken(Exception):
    """A download that stopped early and may be resumed."""


# ----------------------------------------------------------------------------- what each task reads

def task_folders(tasks, difficulty):
    """[(task, folder as in the archive and under the output, file names kept there or None for all)]"""
    folders = {'listops': ('lra_release/listops-1000', None),
               'retrieval': ('lra_release/lra_release/tsv_data', AAN_FILES),
               'pathfinder': (f'lra_release/lra_release/pathfinder32/{DIFFICULTY_DIRS[difficulty]}', None),
               'pathx': (f'lra_release/lra_release/pathfinder128/{DIFFICULTY_DIRS[difficulty]}', None)}
    return [(task, *folders[task]) for task in tasks]


# ----------------------------------------------------------------------------- progress

def _size(n):
    for unit in ('B', 'KB', 'MB', 'GB'):
        if n < 1000 or unit == 'GB':
            return f'{n:.0f} {unit}' if unit == 'B' else f'{n:.2f} {unit}'
        n /= 1000


def _duration(seconds):
    seconds = round(seconds)
    return f'{seconds // 3600}h{seconds // 60 % 60:02d}m' if seconds >= 3600 else f'{seconds // 60}m{seconds % 60:02d}s'


class Progress:
    """Bytes done, rate and time left: one line redrawn on a terminal, else a plain line every STEP %."""
    STEP = 5

    def __init__(self, label, total, done=0, out=None):
        self.label, self.total, self.start = label, total, done
        self.out = out or sys.stdout
        self.tty = self.out.isatty()
        self.began = self.shown = time.monotonic()
        self.next_percent = (100 * done // total // self.STEP + 1) * self.STEP if total else None
        self.done = done

    def update(self, done):
        self.done = done
        now = time.monotonic()
        if self.tty:
            if now - self.shown >= 0.2:
                self.shown = now
                self.out.write('\r' + self.line(now) + '\033[K')
                self.out.flush()
        elif self.total and 100 * done / self.total >= self.next_percent:
            self.next_percent = (100 * done // self.total // self.STEP + 1) * self.STEP
            print(self.line(now), file=self.out, flush=True)
        elif not self.total and now - self.shown >= 30:  # size unknown: a line every 30 s
            self.shown = now
            print(self.line(now), file=self.out, flush=True)

    def line(self, now):
        rate = (self.done - self.start) / max(now - self.began, 1e-9)
        text = f'{self.label}: {_size(self.done)}'
        if self.total:
            text += f' of {_size(self.total)} ({100 * self.done / self.total:.0f}%)'
        text += f', {_size(rate)}/s'
        if self.total and rate > 0:
            text += f', {_duration((self.total - self.done) / rate)} left'
        return text

    def close(self):
        if self.tty:
            self.out.write('\r' + self.line(time.monotonic()) + '\033[K\n')
            self.out.flush()


# ----------------------------------------------------------------------------- download

def _content_range(header):
    """'bytes START-END/TOTAL' -> (START, TOTAL); 'bytes */TOTAL' -> (None, TOTAL); TOTAL None when '*'."""
    try:
        _, spec = header.split(' ', 1)
        span, total = spec.split('/')
        return (None if span == '*' else int(span.split('-')[0])), (None if total == '*' else int(total))
    except (AttributeError, ValueError):
        return None, None


def _open(url, have):
    """The response to a request for the bytes from `have` on: (response, first byte, total size or None)."""
    headers = {'User-Agent': 'hrrformer-fetch_lra', 'Accept-Encoding': 'identity'}
    if have:
        headers['Range'] = f'bytes={have}-'
    try:
        response = urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=TIMEOUT)
    except urllib.error.HTTPError as error:
        if error.code == 416 and have:  # nothing from `have` on: the .part file is whole, or too long
            return None, None, _content_range(error.headers.get('Content-Range'))[1]
        if error.code >= 500 or error.code == 429:
            raise Broken(f'HTTP {error.code} {error.reason}') from None
        raise FetchError(f'{url} answered HTTP {error.code} {error.reason}: if the release has moved, pass '
                         f'--url=ANOTHER_URL, or download it yourself and pass --archive=PATH') from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as error:
        raise Broken(getattr(error, 'reason', None) or error) from None
    except ValueError as error:  # not a URL
        raise FetchError(f'cannot download {url!r}: {error}') from None
    length = response.headers.get('Content-Length')
    length = int(length) if length and length.isdigit() else None
    if response.status == 206:
        start, total = _content_range(response.headers.get('Content-Range'))
        return response, start, total
    return response, 0, length


def _receive(url, part):
    """One request, appended to `part`; returns the total size (None if the server gave none) when whole."""
    have = part.stat().st_size if part.exists() else 0
    response, start, total = _open(url, have)
    if response is None:
        if total == have:
            return total
        print(f'{part} ({have} bytes) does not match the file on the server ({total} bytes): starting over')
        part.unlink()
        raise Broken('the partial download did not match')
    with response:
        if have and response.status != 206:  # the whole file came back: take it from its first byte
            print('the server does not resume downloads (it ignores HTTP Range requests): starting over')
            have = 0
        elif have and start != have:
            part.unlink()
            raise Broken(f'the server sent the bytes from {start}, not from {have}; starting over')
        if have:
            print(f'resuming the download at {_size(have)}')
        _check_room(part.parent, (total or 0) - have)
        progress = Progress('downloading', total, have)
        try:
            with open(part, 'ab' if have else 'wb') as f:
                while True:
                    try:
                        chunk = response.read(CHUNK)
                    except (OSError, http.client.HTTPException) as error:
                        raise Broken(error) from None
                    if not chunk:
                        break
                    try:
                        f.write(chunk)
                    except OSError as error:
                        raise FetchError(f'cannot write {part}: {error}') from None
                    have += len(chunk)
                    progress.update(have)
        finally:
            progress.close()
    if total is not None and have != total:
        raise Broken(f'the connection ended after {have} of {total} bytes')
    if total is None:
        print('note: the server did not give the size; the archive is checked while it is unpacked')
    return have


def _check_room(folder, needed):
    free = shutil.disk_usage(folder).free
    if needed > free:
        raise FetchError(f'the archive needs {_size(needed)} more in {folder}, which has {_size(free)} free: '
                         f'free some space or pass --archive=PATH on another disk')


def download(url, archive):
    """`url` into `archive` through `archive`.part, resumed after a break (TRIES requests at most)."""
    part = archive.with_name(archive.name + '.part')
    part.parent.mkdir(parents=True, exist_ok=True)
    print(f'downloading {url} into {archive}')
    for attempt in range(1, TRIES + 1):
        try:
            size = _receive(url, part)
            break
        except Broken as error:
            kept = part.stat().st_size if part.exists() else 0
            if attempt == TRIES:
                raise FetchError(f'the download broke {TRIES} times (last: {error}); {_size(kept)} are kept in '
                                 f'{part}: run the same command again to resume') from None
            wait = RETRY_SECONDS * attempt
            print(f'the download broke ({error}); trying again in {wait:.0f} s ({attempt + 1} of {TRIES})')
            time.sleep(wait)
    os.replace(part, archive)
    print(f'downloaded {archive} ({_size(size)})')


# ----------------------------------------------------------------------------- unpack

def _member_name(name):
    while name.startswith('./'):
        name = name[2:]
    return name.rstrip('/')


def unpack(archive, folders, output):
    """One pass through `archive`, unpacking the members of `folders` [(task, folder, names)] into
    `<output>/<folder>.partial`, renamed to `<output>/<folder>` once the whole archive is checked."""
    partial = {folder: output / (folder + '.partial') for _, folder, _ in folders}
    for path in partial.values():
        if path.exists():
            print(f'removing {path}, left by an unpacking that did not finish')
            shutil.rmtree(path)
    counts = dict.fromkeys(partial, 0)
    skipped_links = 0
    done = False
    print(f'unpacking {", ".join(folder + "/" for folder in partial)} from {archive} (one pass through all of it)')
    try:
        with open(archive, 'rb') as raw:
            progress = Progress('unpacking', os.fstat(raw.fileno()).st_size)
            try:
                with gzip.GzipFile(fileobj=raw) as unzipped, tarfile.open(fileobj=unzipped, mode='r|') as tar:
                    while (member := tar.next()) is not None:
                        tar.members.clear()  # stream mode remembers every member: ~1 GB for the release's millions
                        progress.update(raw.tell())
                        folder, relative = _find_folder(_member_name(member.name), folders)
                        if folder is None or member.isdir():
                            continue
                        if not member.isfile():
                            skipped_links += 1
                            continue
                        _extract(tar, member, relative, partial[folder], output)
                        counts[folder] += 1
                    while unzipped.read(CHUNK):  # the rest, so that gzip checks the CRC and length at the end
                        progress.update(raw.tell())
            finally:
                progress.close()
        _check_found(archive, folders, partial, counts)
        for folder, path in partial.items():
            os.replace(path, output / folder)
        done = True
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile) as error:
        raise FetchError(f'{archive} is truncated or damaged ({type(error).__name__}: {error}): '
                         f'delete it and run again') from None
    finally:
        if not done:
            for path in partial.values():
                shutil.rmtree(path, ignore_errors=True)
    if skipped_links:
        print(f'note: skipped {skipped_links} links or special files in those folders (only files are unpacked)')
    for task, folder, _ in folders:
        print(f'{task}: unpacked {counts[folder]} files into {output / folder}')


def _find_folder(name, folders):
    """(folder, path inside it) of the archive member `name`, or (None, None) when no task reads it."""
    for _, folder, names in folders:
        if name.startswith(folder + '/'):
            relative = name[len(folder) + 1:]
            if names is None or relative in names:
                return folder, relative
    return None, None


def _extract(tar, member, relative, destination, output):
    """Unpack `member` as `destination/relative`, through tarfile's 'data' filter (no member may land
    outside `destination`, no absolute path, no device, no odd permission bits)."""
    renamed = member.replace(name=relative, deep=False)
    try:
        tar.extract(renamed, destination, filter='data')
    except tarfile.FilterError as error:
        raise FetchError(f'the archive member {member.name} is unsafe ({error}): refusing to unpack it '
                         f'under {output}') from None
    except OSError as error:
        raise FetchError(f'cannot write into {destination}: {error}') from None


def _check_found(archive, folders, partial, counts):
    for task, folder, names in folders:
        found = {p.name for p in partial[folder].iterdir()} if partial[folder].exists() else set()
        missing = sorted(names - found) if names else ([] if counts[folder] else [folder + '/'])
        if missing:
            raise FetchError(f'{archive} has no {", ".join(missing)} (needed by {task}): is it the LRA release '
                             f'(lra_release.gz)? If not, delete it and run again')


# ----------------------------------------------------------------------------- command line

def parse_tasks(text):
    tasks = [t.strip() for t in text.split(',') if t.strip()]
    unknown = [t for t in tasks if t not in TASKS]
    if unknown or not tasks:
        raise argparse.ArgumentTypeError(f'unknown task {unknown[0] if unknown else text!r}: '
                                         f'choose among {",".join(TASKS)} (comma-separated)')
    return list(dict.fromkeys(tasks))


def parser():
    p = OneLineParser(prog=PROG, description='Download the Long Range Arena release (lra_release.gz, several GB) '
                      'and unpack only the folders the chosen tasks read, where their loaders look for them.')
    p.add_argument('--tasks', type=parse_tasks, default=list(TASKS), metavar='LIST',
                   help=f'comma-separated list of tasks, among {",".join(TASKS)} (default: all four)')
    p.add_argument('--difficulty', choices=tuple(DIFFICULTY_DIRS), default='hard',
                   help='the Pathfinder and Path-X difficulty to unpack, one of '
                        f'{", ".join(f"{k} ({v})" for k, v in DIFFICULTY_DIRS.items())} (default: hard, as LRA)')
    p.add_argument('--url', default=URL, metavar='URL', help=f'where to download the archive from (default: {URL})')
    p.add_argument('--archive', type=Path, default=ROOT / 'data' / 'lra_release.gz', metavar='PATH',
                   help='file (a path) the archive is downloaded into and kept in; an existing one is used without '
                        'downloading (default: data/lra_release.gz in the repository)')
    p.add_argument('--output', type=Path, default=ROOT, metavar='DIR',
                   help='folder (a path) that receives lra_release/... (default: the repository root, '
                        'where the loaders look)')
    return p


def fetch(args):
    if not hasattr(tarfile, 'data_filter'):
        raise FetchError(f'Python {sys.version.split()[0]} lacks tarfile\'s safe extraction filter: '
                         f'use Python 3.11.4 or newer')
    output = args.output.expanduser().resolve()
    archive = args.archive.expanduser().resolve()
    todo = []
    for task, folder, names in task_folders(args.tasks, args.difficulty):
        if (output / folder).exists():
            print(f'{task}: {output / folder} is already there: skipped')
        else:
            todo.append((task, folder, names))
    if not todo:
        return
    if archive.is_file():
        print(f'using the archive {archive}')
    else:
        download(args.url, archive)
    output.mkdir(parents=True, exist_ok=True)
    unpack(archive, todo, output)
    print(f'the archive stays in {archive} for other tasks; delete it to free {_size(archive.stat().st_size)}')


def main(argv=None):
    args = parser().parse_args(argv)
    try:
        fetch(args)
    except (FetchError, OSError) as error:  # OSError: a disk or file problem not foreseen above
        print(f'{PROG}: error: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        part = args.archive.expanduser().resolve()
        part = part.with_name(part.name + '.part')
        kept = (f'{part} is kept: run the same command again to resume the download' if part.exists()
                else 'run the same command again to finish')
        print(f'\n{PROG}: interrupted; {kept}', file=sys.stderr)
        return 130
    return 0


if __name__ == '__main__':
    sys.exit(main())
