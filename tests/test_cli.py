"""Command-line behaviour: overrides, one-line errors, and the ListOps script end to end."""
import dataclasses
import os
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
    (['--epoch=3'], 'unknown setting --epoch; valid names: block, epochs, eval_only, lr, train_examples'),
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
    (['--nope=1'], 'unknown setting --nope; valid names: activation, attention, batch_size,'),
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
