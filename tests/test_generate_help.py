"""--help of the generators and the EMBER sweep: every option with its type, its default and its meaning."""
import os
import subprocess
import sys

import pytest

from conftest import ROOT

HELP = {  # script: [(option, its type or choices, its default as --help must show it)]
    'listops/generate.py': [('--output_dir', 'DIR', 'required'), ('--train', 'INT', 'default: 96000'),
                            ('--valid', 'INT', 'default: 2000'), ('--test', 'INT', 'default: 2000'),
                            ('--seed', 'INT', 'default: 0'), ('--workers', 'INT', 'default: 1 for small sets')],
    'pathfinder/generate.py': [('--output_dir', 'DIR', 'required'), ('--resolution', '{32,128}', 'default: 32'),
                               ('--difficulty', '{easy,intermediate,hard}', 'default: hard'),
                               ('--count', 'INT', 'required'), ('--seed', 'INT', 'default: 0'),
                               ('--workers', 'INT', 'default: 1 below 2000 images')],
    'ember/generate.py': [('--output_dir', 'DIR', 'required'), ('--count', 'INT', 'required'),
                          ('--length', 'INT', 'default: 131072'), ('--min_length', 'INT', 'default: none'),
                          ('--seed', 'INT', 'default: 0'), ('--test_fraction', 'FLOAT', 'default: 0.2'),
                          ('--gzip_fraction', 'FLOAT', 'default: 0.25'), ('--workers', 'INT', 'default: one per CPU')],
    'ember/sweep.py': [('--min_power', 'INT', 'default: 8'), ('--max_power', 'INT', 'default: 17'),
                       ('--output_dir', 'DIR', 'default: ' + str(ROOT / 'weights' / 'ember_sweep'))],
}


@pytest.mark.parametrize('script', sorted(HELP))
def test_help_lists_every_option_with_type_default_and_meaning(script):
    result = subprocess.run([sys.executable, str(ROOT / script), '--help'], capture_output=True, text=True,
                            timeout=120, env={**os.environ, 'COLUMNS': '100'})
    assert result.returncode == 0 and not result.stderr, result.stderr
    lines = result.stdout.split('options:', 1)[1].splitlines()
    for option, kind, default in HELP[script]:
        at = [i for i, line in enumerate(lines) if line.strip().startswith(f'{option} {kind}')]
        assert len(at) == 1, f'{script}: no "{option} {kind}" in\n{result.stdout}'
        entry = [lines[at[0]]] + [line for line in lines[at[0] + 1:at[0] + 4] if line.startswith(' ' * 10)]
        text = ' '.join(' '.join(entry).split())            # the entry, rewrapped
        meaning = text.split(f'{option} {kind}', 1)[1].split('(')[0].strip()
        assert len(meaning) > 8, f'{option} has no meaning: {text}'
        assert f'({default}' in text, f'{option}: "{default}" missing in: {text}'
    options = [line.split()[0] for line in lines if line.startswith('  --')]
    assert sorted(options) == sorted(option for option, _, _ in HELP[script])  # none left undocumented


def test_sweep_help_says_other_settings_go_to_each_run():
    result = subprocess.run([sys.executable, str(ROOT / 'ember' / 'sweep.py'), '--help'], capture_output=True, text=True,
                            timeout=120)
    assert 'Every other --name=value is passed on to each run of ember/hrrformer_mgpu.py' in ' '.join(result.stdout.split())
