"""The speed and memory benchmark (the report and the weight maps: test_report.py)."""
import csv
import subprocess
import sys

from conftest import ROOT

PNG = b'\x89PNG\r\n\x1a\n'


def test_small_benchmark_writes_its_files(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / 'benchmarks' / 'speed_memory.py'), '--small',
                             '--tasks=listops,retrieval', f'--output_dir={tmp_path}'],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    with open(tmp_path / 'speed_memory.csv') as f:
        rows = list(csv.DictReader(f))
    assert [(r['task'], r['model']) for r in rows] == [
        ('listops', 'Hrrformer'), ('listops', 'Transformer'), ('retrieval', 'Hrrformer'),
        ('retrieval', 'Transformer'), ('ember T=2^10', 'Hrrformer'), ('ember T=2^10', 'Transformer')]
    assert all(r['status'] == 'ran' and float(r['examples_per_second']) > 0 for r in rows)
    table = (tmp_path / 'speed_memory.md').read_text()
    assert '| listops | 512 | 2 |' in table and '| ember T=2^10 | 1024 | 1 |' in table
    assert (tmp_path / 'speed_memory.png').read_bytes()[:8] == PNG
