"""Command-line behaviour: overrides, one-line errors, and the ListOps script end to end."""
import dataclasses
import os
import re
import shutil
import subprocess
import sys
from typing import Optional

import pytest

from conftest import FIXTURES, ROOT
from utils import UserError, apply_overrides, read_history


@dataclasses.dataclass(frozen=True)
class Settings:
    epochs: int = 20
    lr: float = 1e-3
    eval_only: bool = False
    block: str = 'A'
    train_examples: Optional[int] = None


def test_overrides_convert_to_the_field_type():
    s = apply_overrides(Settings(), ['--epochs=3', '--lr=5e-4', '--eval_only=true', '--block=C',
                                     '--train_examples=100'])
    assert s == Settings(epochs=3, lr=5e-4, eval_only=True, block='C', train_examples=100)
    assert apply_overrides(s, ['--train_examples=none']).train_examples is None
    assert apply_overrides(s, ['--eval_only=False']).eval_only is False


@pytest.mark.parametrize('argv, message', [
    (['--epoch=3'], r'unknown setting --epoch; did you mean --epochs\? \(--help lists every setting\)'),
    (['--zzz=3'], r'unknown setting --zzz \(--help lists every setting\)'),
    (['--epochs=three'], 'bad value for --epochs=three .*epochs takes int'),
    (['--epochs=2.5'], 'bad value for --epochs=2.5'),
    (['--eval_only=maybe'], 'expected true or false'),
    (['epochs=3'], "cannot read argument 'epochs=3': write --name=value"),
])
def test_bad_overrides_are_one_clear_error(argv, message):
    with pytest.raises(UserError, match=message):
        apply_overrides(Settings(), argv)


def script(*args, cwd=ROOT):
    path = ROOT / 'listops' / 'hrrformer_mgpu.py'
    return subprocess.run([sys.executable, str(path), *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300, env={**os.environ, 'PYTHONWARNINGS': 'ignore'})


@pytest.fixture
def data_dir(tmp_path):
    return shutil.copytree(FIXTURES / 'listops-1000', tmp_path / 'listops')


@pytest.mark.parametrize('args, message', [
    (['--heads=x'], 'bad value for --heads=x'),
    (['--nope=1'], 'unknown setting --nope (--help lists every setting)'),
    (['--lerning_rate=1'], 'unknown setting --lerning_rate (--help'),
    (['--n_layers=1'], 'unknown setting --n_layers; did you mean --n_layer?'),
    (['--data_dir=/nonexistent/listops'], 'lacks basic_train.tsv'),
    (['--embed_size=100', '--heads=8'], 'must be divisible by --heads=8'),
])
def test_script_errors_are_one_line_without_traceback(args, message, tmp_path):
    result = script(*args, f'--workdir={tmp_path}/w')
    assert result.returncode == 2
    assert 'Traceback' not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and lines[0].startswith('error: ')


def test_script_reports_malformed_row(data_dir, tmp_path):
    path = data_dir / 'basic_test.tsv'
    lines = path.read_bytes().split(b'\r\n')
    lines[5] = lines[5].replace(b'\t', b'\t\t')
    path.write_bytes(b'\r\n'.join(lines))
    result = script(f'--data_dir={data_dir}', f'--workdir={tmp_path}/w')
    assert result.returncode == 2 and 'Traceback' not in result.stderr
    assert 'basic_test.tsv:6: malformed row: 3 tab-separated fields' in result.stderr


def test_script_trains_from_inside_its_folder_and_resumes(data_dir, tmp_path):
    args = [f'--data_dir={data_dir}', f'--workdir={tmp_path}/w', '--n_layer=1', '--embed_size=16', '--heads=2',
            '--max_seq_len=64', '--epochs=1', '--batch_size=2', '--train_examples=16', '--eval_examples=5']
    first = script(*args, cwd=ROOT / 'listops')
    assert first.returncode == 0, first.stderr[-2000:]
    assert 'epoch 1/1: train loss' in first.stdout
    rows = read_history(tmp_path / 'w' / 'history.csv')
    assert len(rows) == 1 and float(rows[0]['valid_acc']) * 5 / 100 == pytest.approx(
        round(float(rows[0]['valid_acc']) * 5 / 100), abs=1e-3)  # a whole number of the 5 examples
    again = script(*args[:-4], '--epochs=2', *args[-3:])
    assert again.returncode == 0, again.stderr[-2000:]
    assert 'resumed from epoch 1' in again.stdout
    assert [r['epoch'] for r in read_history(tmp_path / 'w' / 'history.csv')] == ['1', '2']


def test_history_keeps_its_rows_when_columns_change(tmp_path):
    from utils import append_history
    path = tmp_path / 'history.csv'
    append_history(path, {'epoch': 1, 'loss': 2.5})
    append_history(path, {'epoch': 2, 'loss': 2.0, 'memory': 7})
    assert read_history(path) == [{'epoch': '1', 'loss': '2.5', 'memory': ''},
                                  {'epoch': '2', 'loss': '2.0', 'memory': '7'}]


TASK_SCRIPTS = ['listops/hrrformer_mgpu.py', 'text/hrrformer_mgpu.py', 'retrieval/hrrformer_mgpu.py',
                'image/hrrformer_mgpu.py', 'pathfinder/hrrformer_mgpu.py', 'ember/hrrformer_mgpu.py']


@pytest.mark.parametrize('path', TASK_SCRIPTS)
def test_help_lists_every_setting_with_its_value_and_meaning(path):
    import importlib
    result = subprocess.run([sys.executable, str(ROOT / path), '--help'], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stderr == ''
    module = importlib.import_module(path[:-3].replace('/', '.'))
    config = module.pathfinder32 if path.startswith('pathfinder') else module.config
    lines = {line.split()[0]: line for line in result.stdout.splitlines() if line.startswith('  --')}
    for field in dataclasses.fields(config):
        value = getattr(config, field.name)
        shown = 'none' if value is None else str(value).lower() if isinstance(value, bool) else str(value)
        assert f'--{field.name}' in lines, field.name
        kind, value = re.match(r'\s*--\w+\s+(\w+(?: or none)?)\s+(\S+)', lines[f'--{field.name}']).groups()
        assert value == shown.split()[0] and kind.split()[0] in ('int', 'float', 'str', 'bool'), field.name
    for group in ('data:', 'model:', 'optimisation:', 'run:', 'several processes (hosts):'):
        assert group in result.stdout.splitlines()
    assert '[fixed by this task]' in lines['--vocab_size'] and '[fixed by this task]' not in lines['--lr']
    assert 'examples per decay period' in lines['--decay_examples'] and 'int or none' in lines['--decay_examples']


@pytest.mark.parametrize('setting, message', [
    ('--lr=0', '--lr must be positive, not 0'),
    ('--lr=-1e-3', '--lr must be positive'),
    ('--lr=1e-6', '--lr=1e-06 and --end_lr=1e-05: the schedule decays from lr to end_lr and never below it'),
    ('--lr=nan', '--lr must be a finite number, not nan'),
    ('--lr_decay=0', '--lr_decay must be in (0, 1]'),
    ('--lr_decay=-0.5', '--lr_decay must be in (0, 1]'),
    ('--lr_decay=1.5', '--lr_decay must be in (0, 1]'),
    ('--end_lr=0', 'end_lr must be positive and at most lr'),
    ('--label_smoothing=1', '--label_smoothing must be in [0, 1)'),
    ('--num_classes=1', '--num_classes must be at least 2'),
    ('--dropout_rate=1', '--dropout_rate must be in [0, 1)'),
    ('--weight_decay=-1', '--weight_decay must not be negative'),
    ('--decay_examples=0', '--decay_examples must be at least 1'),
    ('--seed=-1', '--seed must not be negative'),
    ('--max_minutes=0', '--max_minutes must be positive'),
    ('--mlp_ratio=0', '--mlp_ratio=0 leaves the MLP no hidden units'),
])
def test_numeric_settings_are_validated(setting, message):
    import trainer
    with pytest.raises(UserError, match=re.escape(message)):
        trainer.check_config(apply_overrides(trainer.Config(), [setting]))


def test_seeds_get_their_own_default_workdir():
    import trainer
    assert trainer.workdir_of(trainer.Config(task='listops', n_layer=6)) == ROOT / 'weights' / 'listops_6'
    assert trainer.workdir_of(trainer.Config(task='listops', n_layer=1, seed=3)) == ROOT / 'weights' / 'listops_1_seed3'


def test_progress_in_a_log_file_is_plain_lines(tmp_path):
    from listops.generate import write_dataset
    write_dataset(tmp_path / 'data', train=400, valid=8, test=8, seed=0, verbose=False)
    args = [f'--data_dir={tmp_path}/data', f'--workdir={tmp_path}/w', '--n_layer=1', '--embed_size=16', '--heads=2',
            '--max_seq_len=64', '--epochs=1', '--batch_size=1']
    result = script(*args)  # standard output is a pipe, as in a cluster job
    assert result.returncode == 0, result.stderr[-2000:]
    assert '\r' not in result.stdout
    progress = [line for line in result.stdout.splitlines() if re.match(r'epoch 1/1: +\d+% ', line)]
    assert [line.split('%')[0].split()[-1] for line in progress] == ['20', '40', '60', '80', '100']
    assert progress[-1].startswith('epoch 1/1: 100% 100/100 [') and ' < 00:00] loss ' in progress[-1]
