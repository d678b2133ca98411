"""Small helpers shared by every task: heads, paths, command-line overrides, history, checkpoints."""
import argparse
import contextlib
import csv
import dataclasses
import difflib
import errno
import hashlib
import inspect
import io
import json
import logging
import os
import re
import sys
import textwrap
import tokenize
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
    converted to the field's declared type. Anything else raises UserError; a misspelt name gets the
    nearest valid one suggested."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    hints = typing.get_type_hints(type(config))
    changes = {}
    for arg in argv:
        if not arg.startswith('--') or '=' not in arg:
            raise UserError(f'cannot read argument {arg!r}: write --name=value (--help lists every setting)')
        name, text = arg[2:].split('=', 1)
        name = name.replace('-', '_')
        if name not in fields:
            close = difflib.get_close_matches(name, fields, n=1, cutoff=0.6)
            hint = f'; did you mean --{close[0]}?' if close else ''
            raise UserError(f'unknown setting --{name}{hint} (--help lists every setting)')
        try:
            changes[name] = _convert(name, text, hints[name])
        except ValueError as error:
            raise UserError(f'bad value for --{name}={text} ({error}); {name} takes {_type_name(hints[name])}') from None
    return dataclasses.replace(config, **changes)


def _type_name(kind):
    if typing.get_origin(kind) in (typing.Union, types.UnionType):
        return ' or '.join('none' if a is type(None) else _type_name(a) for a in typing.get_args(kind))
    return getattr(kind, '__name__', str(kind).replace('typing.', ''))


def field_notes(cls):
    """{field: (group, comment)} read from the source of the dataclass `cls` and its bases: the comment
    beside each field (and the comment lines under it), grouped by the section comment above it
    ('# data', '# model', ...). Fields of a subclass without sections are the task's own."""
    notes = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            lines = textwrap.dedent(inspect.getsource(klass)).splitlines()
        except (OSError, TypeError):
            continue
        comments = {}
        for token in tokenize.generate_tokens(io.StringIO('\n'.join(lines)).readline):
            if token.type == tokenize.COMMENT:
                comments[token.start[0]] = (token.start[1], token.string.lstrip('#').strip())
        body = next(i for i, line in enumerate(lines) if line.startswith('class ')) + 1
        indent = min((len(line) - len(line.lstrip()) for line in lines[body:] if line.strip()), default=4)
        group, last = 'this task', None
        for number, line in enumerate(lines, start=1):
            match = re.match(rf'^ {{{indent}}}(\w+)\s*:', line)
            if match and match.group(1) in klass.__dataclass_fields__:
                last = match.group(1)
                notes[last] = (group, comments.get(number, (0, ''))[1])
            elif number in comments and not line[:comments[number][0]].strip():  # a comment alone on its line
                column, text = comments[number]
                if column == indent:   # a section heading
                    group, last = text.split(':')[0].strip(), None
                elif last is not None:  # the comment of the field above goes on
                    notes[last] = (notes[last][0], f'{notes[last][1]} {text}'.strip())
    return notes


def config_help(config, prog, about='', fixed=()):
    """The --help text of a task script: every setting with its type, its value in this script's
    configuration and its meaning, grouped as in the Config; the `fixed` ones are set by the task."""
    notes, hints = field_notes(type(config)), typing.get_type_hints(type(config))
    groups = {}
    for field in dataclasses.fields(config):
        group, comment = notes.get(field.name, ('this task', ''))
        value = getattr(config, field.name)
        shown = 'none' if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        comment += ' [fixed by this task]' if field.name in fixed else ''
        groups.setdefault(group, []).append((f'--{field.name}', _type_name(hints[field.name]), shown, comment))
    width = [max(len(row[i]) for rows in groups.values() for row in rows) for i in range(3)]
    out = [f'usage: python {prog} [--name=value ...]', '']
    out += [about.strip(), ''] if about.strip() else []
    out += ['Every setting below can be given as --name=value; the value shown is this script\'s.']
    for group, rows in groups.items():
        out += ['', f'{group}:']
        out += [f'  {n:<{width[0]}}  {t:<{width[1]}}  {v:<{width[2]}}  {c}'.rstrip() for n, t, v, c in rows]
    return '\n'.join(out) + '\n'


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

def disk_full(error):
    """Did `error` (an OSError, or orbax's wrapping of one) come from a full disk or quota?"""
    return getattr(error, 'errno', None) in (errno.ENOSPC, errno.EDQUOT) or \
        any(text in str(error) for text in ('No space left on device', 'Disk quota exceeded', "os_error_code='28'"))


def no_space(folder, what, needed=None):
    """The one line for a full disk."""
    size = f' (about {needed / 2 ** 20:,.0f} MB needed)' if needed else ''
    return UserError(f'no space left on the device of {folder} for {what}{size}: free some space there or give '
                     f'another --workdir; the run resumes from its last complete checkpoint')


def append_history(path, row):
    """Append one epoch's row (a dict) to a CSV file, writing the header first when the file is new
    (and rewriting the file when an older version of the code wrote other columns)."""
    path = Path(path)
    rows = read_history(path)
    if rows and list(rows[0]) != list(row):
        write_history(path, rows, fieldnames=list(row))
    try:
        with open(path, 'a', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=list(row))
            if not rows:
                writer.writeheader()
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
    except OSError as error:
        if disk_full(error):
            raise no_space(path.parent, 'the history') from None
        raise


def write_history(path, rows, fieldnames):
    """Replace a history file by `rows`, atomically (missing columns left empty); a failed write leaves
    the old file and no temporary one."""
    path = Path(path)
    tmp = path.with_suffix('.csv.tmp')
    try:
        with open(tmp, 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames, restval='', extrasaction='ignore')
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        if disk_full(error):
            raise no_space(path.parent, 'the history') from None
        raise


def read_history(path):
    """All rows of a history CSV as dicts of strings ([] when there is none). A row whose epoch is not a
    whole number (a garbage line) stops with the file and line."""
    path = Path(path)
    if not path.exists():
        return []
    try:
        with open(path, newline='') as f:
            rows = list(csv.DictReader(f))
    except (UnicodeDecodeError, csv.Error) as error:
        raise UserError(f'{path} is not a readable history ({error}): repair or delete it '
                        f'(the checkpoints hold the run itself)') from None
    for number, row in enumerate(rows, start=2):
        if not str(row.get('epoch') or '').isdigit() or None in row:
            raise UserError(f'{path}:{number}: malformed history row {",".join(map(str, row.values()))[:60]!r}: '
                            f'repair or delete that line (the checkpoints hold the run itself)')
    return rows


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
    tmp = path.with_name(f'{path.name}.{os.getpid()}.tmp.npy')  # per process: several may build one cache at once
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
        tmp = key_file.with_name(f'{key_file.name}.{os.getpid()}.tmp')
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
# Each checkpoint is a folder named by the optimiser step: the state (orbax, written into a temporary
# folder and renamed when complete) and a JSON `meta` with the epoch, the configuration and a checksum of
# the state, verified on restore, so that a damaged checkpoint is never taken for a good one.

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


def tree_checksum(tree):
    """A digest of every leaf's path, dtype, shape and bytes."""
    import jax
    digest = hashlib.blake2b(digest_size=16)
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        array = np.ascontiguousarray(np.asarray(leaf))
        digest.update(f'{jax.tree_util.keystr(path)}|{array.dtype}|{array.shape}|'.encode())
        digest.update(array.data)
    return digest.hexdigest()


@contextlib.contextmanager
def _quiet_orbax():
    """Orbax logs every failed write with a traceback from its own threads; the exception we raise says it."""
    logger = logging.getLogger('absl')
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def save_checkpoint(directory, step, tree, meta, primary=True):
    """Write the pytree of arrays `tree` and the JSON-able dict `meta` (to which the step and the tree's
    checksum are added) as checkpoint `step`; the two newest are kept. An existing checkpoint `step` (a
    damaged one that a resume fell back from) is replaced: orbax would keep it. A full disk is one line,
    checked before writing where it can be, and leaves no temporary folder."""
    import shutil
    import jax
    import orbax.checkpoint as ocp
    directory = Path(directory)
    needed = sum(np.asarray(leaf).nbytes for leaf in jax.tree.leaves(tree))
    what = f'the checkpoint of step {step} (epoch {meta.get("epoch")})'
    manager = _checkpoint_manager(directory)
    if primary and shutil.disk_usage(directory).free < needed:
        raise no_space(directory, what, needed)
    if step in manager.all_steps():
        manager.delete(step)
    meta = {**meta, 'step': int(step), 'checksum': tree_checksum(tree)}
    try:
        with _quiet_orbax():
            manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree), meta=ocp.args.JsonSave(meta)))
            manager.wait_until_finished()
    except Exception as error:  # noqa: BLE001 - orbax wraps the OSError in its own exceptions
        if not disk_full(error):
            raise
        if primary:
            for leftover in directory.glob('*.orbax-checkpoint-tmp*'):
                shutil.rmtree(leftover, ignore_errors=True)
        raise no_space(directory, what, needed) from None


def open_checkpoints(directory):
    """Create the folder's checkpoint manager now (a collective operation with several processes)."""
    _checkpoint_manager(directory)


def checkpoint_steps(directory):
    """Steps of the complete checkpoints in `directory`, newest first."""
    if not Path(directory).is_dir():
        return []
    return sorted(_checkpoint_manager(directory).all_steps(), reverse=True)


def delete_checkpoint(directory, step):
    _checkpoint_manager(directory).delete(step)


def _checked(meta, step):
    if meta.get('step', step) != step:
        raise ValueError(f'its metadata says step {meta.get("step")}, not {step}')
    return meta


def restore_meta(directory, step):
    import orbax.checkpoint as ocp
    meta = _checkpoint_manager(directory).restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    return _checked(meta, step)


def restore_checkpoint(directory, step, like):
    """Restore checkpoint `step` into the structure, shapes and dtypes of the pytree `like`, verified
    against the checksum saved with it (ValueError when they differ)."""
    import jax
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    restored = _checkpoint_manager(directory).restore(
        step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()))
    meta = _checked(restored['meta'], step)
    if 'checksum' in meta and tree_checksum(restored['state']) != meta['checksum']:
        raise ValueError('its state does not match the checksum saved with it')
    return restored['state'], meta


def newest_meta_json(directory):
    """The `meta` of the newest checkpoint in `directory` read as plain JSON (no orbax, no JAX: usable
    before the processes of a run have joined), or None."""
    import json
    steps = sorted((int(p.name) for p in Path(directory).glob('*') if p.name.isdigit()), reverse=True)
    for step in steps:
        try:
            return json.loads((Path(directory) / str(step) / 'meta' / 'metadata').read_text())
        except (OSError, ValueError):
            continue
    return None
