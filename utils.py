"""Small helpers shared by every task: heads, paths, command-line overrides, history, checkpoints."""
import argparse
import contextlib
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import sys
import types
import typing
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent  # repository root: default data and weights live under it,
# whatever the current directory; paths given on the command line are relative to the current directory


class UserError(Exception):
    """A mistake the user can fix (bad override, missing data, foreign checkpoint): one line, no traceback."""


def exit_on_user_error(main):
    """Run `main()`; a UserError ends the program with its one-line message and exit status 2."""
    try:
        return main()
    except UserError as error:
        print(f'error: {error}', file=sys.stderr)
        raise SystemExit(2) from None


# ----------------------------------------------------------------------------- heads

def split_heads(x, heads):
    """(B, T, H) -> (B, h, T, H/h)"""
    b, t, e = x.shape
    return x.reshape(b, t, heads, e // heads).transpose(0, 2, 1, 3)


def merge_heads(x):
    """(B, h, T, H') -> (B, T, h*H')"""
    b, h, t, e = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, t, h * e)


# ----------------------------------------------------------------------------- overrides

def _convert(name, text, kind):
    """Turn the text of `--name=text` into a value of the field's type `kind`."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):  # Optional[X]: 'none' or an X
        if text.lower() in ('none', 'null', ''):
            return None
        inner = [a for a in typing.get_args(kind) if a is not type(None)]
        return _convert(name, text, inner[0])
    if kind is bool:
        if text.lower() in ('true', '1', 'yes'):
            return True
        if text.lower() in ('false', '0', 'no'):
            return False
        raise ValueError('expected true or false')
    if kind is int:
        return int(text)
    if kind is float:
        return float(text)
    if kind is str:
        return text
    raise ValueError(f'cannot parse a {kind}')


def apply_overrides(config, argv):
    """Return a copy of the dataclass `config` with `--name=value` arguments applied, each value
    converted to the field's declared type. Anything else raises UserError listing the valid names."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    names = ', '.join(sorted(fields))
    hints = typing.get_type_hints(type(config))
    changes = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise UserError(f'cannot read argument {arg!r}: write --name=value; valid names: {names}')
        name, text = arg[2:].split('=', 1)
        name = name.replace('-', '_')
        if name not in fields:
            raise UserError(f'unknown setting --{name}; valid names: {names}')
        try:
            changes[name] = _convert(name, text, hints[name])
        except ValueError as error:
            raise UserError(f'bad value for --{name}={text} ({error}); '
                            f'{name} takes {_type_name(hints[name])}; valid names: {names}') from None
    return dataclasses.replace(config, **changes)


def _type_name(kind):
    return getattr(kind, '__name__', str(kind).replace('typing.', ''))


# ----------------------------------------------------------------------------- generator command lines
# (utils imports neither JAX nor TensorFlow at its top, so the numpy-only generators can use it)

class OneLineParser(argparse.ArgumentParser):
    """An argument parser that reports a bad argument in one line, without the usage block."""

    def error(self, message):
        self.exit(2, f'{self.prog}: error: {message}\n')


def integer_at_least(minimum):
    """An argparse type: a whole number >= minimum."""
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < minimum:
            raise argparse.ArgumentTypeError(f'expected an integer >= {minimum}, got {text!r}')
        return value
    return parse


def run_generator(prog, write, interrupted='interrupted'):
    """Run a generator's write(); its errors end in one line. Returns the exit status."""
    try:
        write()
    except (OSError, ValueError) as error:
        print(f'{prog}: error: {error}', file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f'{prog}: {interrupted}', file=sys.stderr)
        return 130
    return 0


# ----------------------------------------------------------------------------- history

def append_history(path, row):
    """Append one epoch's row (a dict) to a CSV file, writing the header first when the file is new
    (and rewriting the file when an older version of the code wrote other columns)."""
    path = Path(path)
    rows = read_history(path)
    if rows and list(rows[0]) != list(row):
        write_history(path, rows, fieldnames=list(row))
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if not rows:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


def write_history(path, rows, fieldnames):
    """Replace a history file by `rows`, atomically (missing columns left empty)."""
    tmp = Path(path).with_suffix('.csv.tmp')
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=fieldnames, restval='', extrasaction='ignore')
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)


def read_history(path):
    """All rows of a history CSV as dicts of strings ([] when there is none)."""
    path = Path(path)
    if not path.exists():
        return []
    with open(path, newline='') as f:
        return list(csv.DictReader(f))


def truncate_history(path, last_epoch):
    """Drop rows after `last_epoch` (written before a crash that lost their checkpoint), atomically."""
    rows = read_history(path)
    kept = [r for r in rows if int(r['epoch']) <= last_epoch]
    if len(kept) == len(rows):
        return
    if not kept:  # no checkpoint at all: the run starts afresh
        os.remove(path)
        return
    write_history(path, kept, fieldnames=list(rows[0]))


# ----------------------------------------------------------------------------- data caches

CACHE_FORMAT = 2  # every cache key holds it: raise it when the layout of the cached arrays changes


def save_npy(path, array):
    """np.save through a temporary file and a rename: a crash never leaves a half-written cache."""
    path = Path(path)
    tmp = path.with_name(path.name + '.tmp.npy')
    np.save(tmp, array)
    os.replace(tmp, path)


def file_stamps(paths, base):
    """A digest of each file's path (relative to `base`), size and modification time in ns (None when it
    cannot be looked at): replacing a file changes it, even when cp -p, tar x or rsync -t keeps an old mtime."""
    digest, base = hashlib.sha256(), os.fspath(base) + os.sep
    for path in map(os.fspath, paths):
        try:
            stat = os.stat(path)
            stamp = (stat.st_size, stat.st_mtime_ns)
        except OSError:
            stamp = None
        relative = path[len(base):] if path.startswith(base) else os.path.relpath(path, base)  # fast for most
        digest.update(f'{relative!r} {stamp}\n'.encode())
    return digest.hexdigest()


def _load_cache(files, key_file, key):
    """The cached arrays when the key file matches `key` and every .npy is whole; otherwise None."""
    try:
        saved = json.loads(key_file.read_text())
    except (OSError, ValueError):
        return None  # no key (or a cache older than keys): build
    if not isinstance(saved, dict) or saved.get('key') != key:
        return None
    try:
        if any(path.stat().st_size != saved['sizes'][name] for name, path in files.items()):
            raise ValueError('a file has another size than the one written')
        return {name: np.load(path, allow_pickle=False) for name, path in files.items()}
    except (OSError, ValueError, EOFError, KeyError, TypeError) as error:
        print(f'note: the cache {key_file.parent} is damaged ({type(error).__name__}: {error}); building it again')
        return None


def cached_arrays(prefix, names, build, describe, settings, sources=()):
    """A dict of arrays `names` from the caches <prefix>.<name>.npy when <prefix>.key.json says they were
    built with these `settings` (JSON-able: length, split, resolution, a loader's format version ...) from
    these `sources` (files, keyed on their size and mtime); otherwise `build()` makes them (saying
    `describe` first) and they are saved for next time. A damaged cache is built again."""
    prefix = Path(prefix)
    files = {name: prefix.with_name(f'{prefix.name}.{name}.npy') for name in names}
    key_file = prefix.with_name(prefix.name + '.key.json')
    sources = list(sources)
    key = json.loads(json.dumps({'format': CACHE_FORMAT, 'settings': settings, 'count': len(sources),
                                 'sources': file_stamps(sources, prefix.parent)}))
    arrays = _load_cache(files, key_file, key)
    if arrays is not None:
        return arrays
    print(f'{describe} (once; cached as .npy in {prefix.parent}) ...', flush=True)
    arrays = build()
    try:
        prefix.parent.mkdir(parents=True, exist_ok=True)
        key_file.unlink(missing_ok=True)  # arrays without their key are never trusted, even after a crash
        for name, path in files.items():
            save_npy(path, arrays[name])
        tmp = key_file.with_name(key_file.name + '.tmp')
        tmp.write_text(json.dumps({'key': key, 'sizes': {name: path.stat().st_size for name, path in files.items()}}))
        os.replace(tmp, key_file)
    except OSError as error:
        print(f'note: cannot write the cache ({error}); it will be built again next time')
    return arrays


# ----------------------------------------------------------------------------- tensorflow-datasets

def _folders(root, depth=4):
    """root and the folders under it, `depth` levels down (tensorflow-datasets makes its own within 3)."""
    level = [Path(root)] if Path(root).is_dir() else []
    found = set(level)
    for _ in range(depth):
        level = [Path(entry.path) for folder in level for entry in _scan(folder) if entry.is_dir(follow_symlinks=False)]
        found.update(level)
    return found


def _scan(folder):
    try:
        return list(os.scandir(folder))
    except OSError:
        return []


def _remove_new_empty_folders(data_dir, before):
    """Remove the folders that a failed attempt made (data_dir itself included) and left empty."""
    for folder in sorted(_folders(data_dir) - before, key=lambda p: len(p.parts), reverse=True):  # deepest first
        try:
            folder.rmdir()
        except OSError:
            pass  # not empty (a partial download is kept)


def tfds_batches(name, split, data_dir, batch_size=1000):
    """(features, labels) numpy batches of a tensorflow-datasets data set, downloaded and prepared
    into `data_dir` the first time. TensorFlow is imported here only: runs that find their .npy
    cache never load it. Without network and without prepared data: one UserError line, no
    progress bars, and no empty download folders left behind."""
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')  # TensorFlow's C++ start-up chatter ...
    os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')  # ... and its oneDNN notice (TF only decodes data here)
    logging.getLogger('urllib3').setLevel(logging.ERROR)  # one warning per retried download otherwise
    try:
        import tensorflow as tf
        import tensorflow_datasets as tfds
        from absl import logging as absl_logging
    except ImportError as error:
        raise UserError(f'{error.name} is needed to prepare {name} the first time: '
                        f'pip install -r requirements.txt') from None
    try:
        tf.config.set_visible_devices([], 'GPU')  # TensorFlow must not take the accelerators JAX uses
    except RuntimeError:  # TensorFlow was already started in this process (e.g. by tests)
        pass
    absl_logging.set_verbosity(absl_logging.ERROR)
    tfds.disable_progress_bar()  # its bars would surround the one error line (the caller says what it reads)
    try:
        from tensorflow_datasets.core.download import downloader
        # tfds retries a failed download 10 times with exponential back-off (3.5 minutes) before it
        # reports that there is no network; 3 retries still ride out a flaky link
        downloader.MAX_RETRIES = min(getattr(downloader, 'MAX_RETRIES', 3), 3)
    except ImportError:
        pass
    before = _folders(data_dir)
    said = io.StringIO()  # tfds prints "Downloading and preparing ..." on stdout: shown only if that works
    try:
        with contextlib.redirect_stdout(said):
            dataset = tfds.load(name, split=split, data_dir=str(data_dir), as_supervised=True, batch_size=batch_size)
        print(said.getvalue(), end='', flush=True)
        yield from tfds.as_numpy(dataset)
    except Exception as error:  # noqa: BLE001 - download, network and format errors all end here
        _remove_new_empty_folders(data_dir, before)
        reason = ' '.join(str(error).split())
        reason = reason if len(reason) <= 160 else reason[:160] + '...'
        raise UserError(f'cannot get {name} ({split}) through tensorflow-datasets into {data_dir} '
                        f'({type(error).__name__}: {reason}); the first run downloads it once: connect to '
                        f'the internet, or pass --data_dir=DIR holding a prepared copy') from None


# ----------------------------------------------------------------------------- checkpoints

_MANAGERS = {}


def _checkpoint_manager(directory, keep=2):
    """One orbax CheckpointManager per folder for the life of the process: with several processes its
    operations are collective, and opening a new manager for each one left them waiting on each other."""
    import orbax.checkpoint as ocp  # imported here: only runs that checkpoint pay for it
    directory = Path(directory).resolve()
    if directory not in _MANAGERS:
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
        _MANAGERS[directory] = ocp.CheckpointManager(directory, options=options)
    manager = _MANAGERS[directory]
    manager.reload()  # another process (or a crash) may have changed the folder since
    return manager


def save_checkpoint(directory, step, tree, meta):
    """Write the pytree of arrays `tree` and the JSON-able dict `meta` as checkpoint `step`.
    Orbax writes into a temporary folder and renames it when complete, so a crash never leaves a
    half-written checkpoint that looks whole; the two newest checkpoints are kept. An existing
    checkpoint `step` (a damaged one that a resume fell back from) is replaced: orbax would keep it."""
    import orbax.checkpoint as ocp
    manager = _checkpoint_manager(directory)
    if step in manager.all_steps():
        manager.delete(step)
    manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
    manager.wait_until_finished()


def checkpoint_steps(directory):
    """Steps of the complete checkpoints in `directory`, newest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(_checkpoint_manager(directory).all_steps(), reverse=True)


def restore_meta(directory, step):
    import orbax.checkpoint as ocp
    return _checkpoint_manager(directory).restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore_checkpoint(directory, step, like):
    """Restore checkpoint `step` into the structure, shapes and dtypes of the pytree `like`."""
    import jax
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = _checkpoint_manager(directory).restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']
