"""Small helpers shared by every task: heads, paths, command-line overrides, history, checkpoints."""
import csv
import dataclasses
import json
import os
import sys
import types
import typing
from pathlib import Path

import jax
import jax.numpy as jnp
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


# ----------------------------------------------------------------------------- history

def append_history(path, row):
    """Append one epoch's row (a dict) to a CSV file, writing the header first when the file is new."""
    path = Path(path)
    new = not path.exists() or path.stat().st_size == 0
    with open(path, 'a', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(row))
        if new:
            writer.writeheader()
        writer.writerow(row)
        f.flush()
        os.fsync(f.fileno())


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
    tmp = Path(path).with_suffix('.csv.tmp')
    with open(tmp, 'w', newline='') as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(tmp, path)


# ----------------------------------------------------------------------------- checkpoints

def _checkpoint_manager(directory, keep=2):
    import orbax.checkpoint as ocp  # imported here: only runs that checkpoint pay for it
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True, enable_async_checkpointing=False)
    return ocp.CheckpointManager(Path(directory).resolve(), options=options)


def save_checkpoint(directory, step, tree, meta):
    """Write the pytree of arrays `tree` and the JSON-able dict `meta` as checkpoint `step`.
    Orbax writes into a temporary folder and renames it when complete, so a crash never leaves a
    half-written checkpoint that looks whole; the two newest checkpoints are kept. An existing
    checkpoint `step` (a damaged one that a resume fell back from) is replaced: orbax would keep it."""
    import orbax.checkpoint as ocp
    with _checkpoint_manager(directory) as manager:
        if step in manager.all_steps():
            manager.delete(step)
        manager.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(tree),
                                                   meta=ocp.args.JsonSave(meta)))
        manager.wait_until_finished()


def checkpoint_steps(directory):
    """Steps of the complete checkpoints in `directory`, newest first."""
    if not Path(directory).is_dir():
        return []
    with _checkpoint_manager(directory) as manager:
        return sorted(manager.all_steps(), reverse=True)


def restore_meta(directory, step):
    import orbax.checkpoint as ocp
    with _checkpoint_manager(directory) as manager:
        return manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']


def restore_checkpoint(directory, step, like):
    """Restore checkpoint `step` into the structure, shapes and dtypes of the pytree `like`."""
    import orbax.checkpoint as ocp
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, like)
    with _checkpoint_manager(directory) as manager:
        restored = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract),
                                                                 meta=ocp.args.JsonRestore()))
    return restored['state'], restored['meta']
