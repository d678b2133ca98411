"""Accuracy and time against sequence length, like the paper's Figure 1: EMBER trained at T = 2^8 ... 2^k.

    python ember/sweep.py [--min_power=8] [--max_power=17] [--output_dir=DIR] [--name=value ...]   (--help)

Every other --name=value is passed to each run of ember/hrrformer_mgpu.py (e.g. --epochs=2,
--data_dir=DATA). Each length trains in its own process and workdir (DIR/T<T>), so a sweep that is
started again resumes, and each length's peak memory is its own. After every length, DIR/sweep.csv
(length, batch, accuracies, seconds per epoch, examples/s, peak memory) and DIR/sweep.png are
rewritten.
"""
import csv
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository root, from anywhere

from utils import ROOT, OneLineParser, integer_at_least, read_history  # noqa: E402

SCRIPT = Path(__file__).resolve().parent / 'hrrformer_mgpu.py'
COLUMNS = ['length', 'status', 'epochs', 'test_acc', 'valid_acc', 'seconds_per_epoch', 'examples_per_second',
           'peak_memory_mb']


def parse(argv):
    """Sweep options, and the --name=value overrides passed on to every run."""
    parser = OneLineParser(
        description='Train EMBER at T = 2^min_power ... 2^max_power, each length in its own process and workdir, '
                    'and tabulate accuracy, time and memory against length.', allow_abbrev=False,
        epilog='Every other --name=value is passed on to each run of ember/hrrformer_mgpu.py (any field of its '
               'configuration, e.g. --epochs=2 --data_dir=DATA --batch_size=4); see its docstring.')
    parser.add_argument('--min_power', metavar='INT', type=integer_at_least(1), default=8,
                        help='shortest length, as a power of 2 (default: %(default)s, T = 256)')
    parser.add_argument('--max_power', metavar='INT', type=integer_at_least(1), default=17,
                        help='longest length, as a power of 2 (default: %(default)s, T = 131072)')
    parser.add_argument('--output_dir', metavar='DIR', default=str(ROOT / 'weights' / 'ember_sweep'),
                        help='folder for sweep.csv, sweep.png and each length\'s workdir T<T> (default: %(default)s)')
    options, passed = parser.parse_known_args(argv)
    for arg in passed:
        if not arg.startswith('--') or '=' not in arg:
            parser.error(f'cannot read {arg!r}: write --name=value (anything but the sweep\'s own options goes to each run)')
    if options.min_power > options.max_power:
        parser.error('need --min_power <= --max_power')
    return options, passed


def summarise(length, workdir, returncode):
    """One CSV row from a run's history."""
    rows = read_history(workdir / 'history.csv')
    row = {'length': length, 'status': 'ok' if returncode == 0 else f'failed ({returncode})', 'epochs': len(rows)}
    if rows:
        last = rows[-1]
        row.update(test_acc=last['test_acc'], valid_acc=last['valid_acc'],
                   seconds_per_epoch=round(sum(float(r['seconds']) for r in rows) / len(rows), 2),
                   examples_per_second=round(sum(float(r['examples_per_second']) for r in rows) / len(rows), 2),
                   peak_memory_mb=max(float(r.get('peak_memory_mb') or 0) for r in rows))
    return row


def plot(rows, path):
    """Test accuracy and seconds per epoch against length (log scale), as PNG."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    done = [r for r in rows if r.get('test_acc') not in (None, '')]
    fig, accuracy = plt.subplots(figsize=(7, 4))
    lengths = [int(r['length']) for r in done]
    accuracy.plot(lengths, [float(r['test_acc']) for r in done], 'o-', color='tab:blue', label='test accuracy')
    accuracy.set_xscale('log', base=2)
    accuracy.set_xlabel('maximum sequence length T (bytes)')
    accuracy.set_ylabel('test accuracy (%)', color='tab:blue')
    seconds = accuracy.twinx()
    seconds.plot(lengths, [float(r['seconds_per_epoch']) for r in done], 's--', color='tab:red', label='time')
    seconds.set_ylabel('seconds per epoch', color='tab:red')
    accuracy.set_title('Hrrformer on EMBER: accuracy and time against sequence length')
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv):
    options, passed = parse(argv)
    output = Path(options.output_dir).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for power in range(options.min_power, options.max_power + 1):
        length = 2 ** power
        workdir = output / f'T{length}'
        print(f'=== T = {length} (2^{power}) -> {workdir}', flush=True)
        command = [sys.executable, str(SCRIPT), f'--max_seq_len={length}', f'--workdir={workdir}', *passed]
        returncode = subprocess.run(command).returncode
        if returncode == 2:  # a mistake in the settings or the data: the other lengths would fail alike
            raise SystemExit(2)
        rows.append(summarise(length, workdir, returncode))
        with open(output / 'sweep.csv', 'w', newline='') as f:
            writer = csv.DictWriter(f, fieldnames=COLUMNS, restval='')
            writer.writeheader()
            writer.writerows(rows)
        plot(rows, output / 'sweep.png')
    print(f'sweep: {output / "sweep.csv"}, {output / "sweep.png"}')


if __name__ == '__main__':
    main(sys.argv[1:])
