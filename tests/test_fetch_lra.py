"""fetch_lra.py against a local HTTP server (127.0.0.1, a thread) serving a small archive with the LRA layout."""
import gzip
import http.server
import io
import os
import subprocess
import sys
import tarfile
import threading
from pathlib import Path

import pytest

import fetch_lra
from conftest import ROOT

# the archive's files (a few of each kind, LRA's layout and duplicates); the contents are distinct bytes
LISTOPS = [f'lra_release/listops-1000/basic_{s}.tsv' for s in ('train', 'val', 'test')]
AAN = [f'lra_release/lra_release/tsv_data/new_aan_pairs.{s}.tsv' for s in ('train', 'eval', 'test')]
PATH32_HARD = ['lra_release/lra_release/pathfinder32/curv_contour_length_14/metadata/0.npy',
               'lra_release/lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_0.png',
               'lra_release/lra_release/pathfinder32/curv_contour_length_14/imgs/0/sample_1.png']
PATH128_HARD = ['lra_release/lra_release/pathfinder128/curv_contour_length_14/metadata/0.npy',
                'lra_release/lra_release/pathfinder128/curv_contour_length_14/imgs/0/sample_0.png']
PATH128_EASY = ['lra_release/lra_release/pathfinder128/curv_baseline/metadata/0.npy',
                'lra_release/lra_release/pathfinder128/curv_baseline/imgs/0/sample_0.png']
OTHERS = ['lra_release/lra_release/listops-1000/basic_train.tsv',  # the duplicate ListOps
          'lra_release/lra_release/tsv_data/aan_other.tsv',  # a file of tsv_data no task reads
          'lra_release/lra_release/pathfinder32/curv_baseline/metadata/0.npy',
          'lra_release/lra_release/pathfinder32/curv_contour_length_9/imgs/0/sample_0.png',
          'lra_release/lra_release/pathfinder64/curv_contour_length_14/metadata/0.npy',
          'lra_release/lra_release/pathfinder256/curv_contour_length_14/metadata/0.npy',
          'lra_release/lra_release/pathfinder32/curv_contour_length_14_extra/metadata/0.npy',  # a name prefix only
          'lra_release/README']
ALL = LISTOPS + AAN + PATH32_HARD + PATH128_HARD + PATH128_EASY + OTHERS


def content(name):
    """Distinct, poorly compressible bytes per file, so the archive is some kilobytes long."""
    seed = sum(name.encode())
    return bytes((seed * 7 + i * i * 13 + (i >> 3) * 31) % 251 for i in range(1500)) + name.encode()


def make_archive(names=ALL, extra=None):
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode='w') as tar:
        for name in names:
            data = content(name)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        if extra:
            extra(tar)
    return gzip.compress(buffer.getvalue(), mtime=0)


ARCHIVE = make_archive()


def files_under(folder):
    return {p.relative_to(folder).as_posix() for p in Path(folder).rglob('*') if p.is_file()}


class Server(http.server.ThreadingHTTPServer):
    """Serves `payload` at every path. `cut` = bytes sent before the connection is dropped, for the first
    `cuts` requests; `ranges` = whether Range requests are honoured. `requests` logs each Range header."""

    def __init__(self, payload, cut=None, cuts=0, ranges=True, status=None):
        super().__init__(('127.0.0.1', 0), Handler)
        self.payload, self.cut, self.cuts, self.ranges, self.requests = payload, cut, cuts, ranges, []
        self.status = status  # an HTTP error status to answer with

    @property
    def url(self):
        return f'http://127.0.0.1:{self.server_address[1]}/lra_release.gz'


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the name http.server calls)
        server = self.server
        asked = self.headers.get('Range')
        server.requests.append(asked)
        if server.status:
            self.send_error(server.status)
            return
        start = int(asked[len('bytes='):].split('-')[0]) if asked and server.ranges else 0
        if start >= len(server.payload) and asked and server.ranges:
            self.send_response(416)
            self.send_header('Content-Range', f'bytes */{len(server.payload)}')
            self.send_header('Content-Length', '0')
            self.end_headers()
            return
        body = server.payload[start:]
        self.send_response(206 if start else 200)
        if start:
            self.send_header('Content-Range', f'bytes {start}-{len(server.payload) - 1}/{len(server.payload)}')
        self.send_header('Content-Length', str(len(body)))
        self.end_headers()
        if server.cuts > 0:  # promise the whole body, send part of it, drop the connection
            server.cuts -= 1
            body = body[:server.cut]
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def serve():
    servers = []

    def start(payload=ARCHIVE, **kwargs):
        server = Server(payload, **kwargs)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        servers.append(server)
        return server
    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_waiting(monkeypatch):
    monkeypatch.setattr(fetch_lra, 'RETRY_SECONDS', 0.0)


def run(*args):
    return fetch_lra.main([str(a) for a in args])


def test_fetch_unpacks_exactly_the_chosen_folders(serve, tmp_path, capsys):
    server = serve()
    archive, output = tmp_path / 'dl' / 'lra_release.gz', tmp_path / 'out'
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={output}', '--tasks=listops,pathfinder') == 0
    assert archive.read_bytes() == ARCHIVE and not archive.with_name('lra_release.gz.part').exists()
    assert files_under(output) == set(LISTOPS + PATH32_HARD)
    for name in LISTOPS + PATH32_HARD:
        assert (output / name).read_bytes() == content(name)
    out = capsys.readouterr().out
    assert 'downloading' in out and '100%' in out  # stdout is not a terminal: plain progress lines

    # every task now, the archive already here: no request, the two folders there are skipped
    assert run('--url=http://127.0.0.1:9/unused', f'--archive={archive}', f'--output={output}') == 0
    assert len(server.requests) == 1
    assert files_under(output) == set(LISTOPS + PATH32_HARD + AAN + PATH128_HARD)
    out = capsys.readouterr().out
    assert out.count('is already there: skipped') == 2 and 'using the archive' in out

    # another difficulty adds its folder only; all there: nothing is read at all
    assert run(f'--archive={archive}', f'--output={output}', '--tasks=pathx', '--difficulty=easy') == 0
    assert files_under(output) == set(LISTOPS + PATH32_HARD + AAN + PATH128_HARD + PATH128_EASY)
    archive.unlink()
    assert run(f'--archive={archive}', f'--output={output}', '--tasks=listops,retrieval,pathx') == 0


def test_interrupted_download_resumes_with_a_range_request(serve, tmp_path, capsys):
    server = serve(cut=5000, cuts=2)
    archive = tmp_path / 'lra_release.gz'
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={tmp_path / "out"}', '--tasks=retrieval') == 0
    assert server.requests == [None, 'bytes=5000-', 'bytes=10000-']
    assert archive.read_bytes() == ARCHIVE
    assert files_under(tmp_path / 'out') == set(AAN)
    out = capsys.readouterr().out
    assert out.count('the download broke (the connection ended after') == 2 and 'resuming the download at' in out


def test_server_without_range_support_restarts(serve, tmp_path, capsys):
    server = serve(cut=5000, cuts=1, ranges=False)
    archive = tmp_path / 'lra_release.gz'
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={tmp_path / "out"}', '--tasks=listops') == 0
    assert server.requests == [None, 'bytes=5000-']
    assert archive.read_bytes() == ARCHIVE  # the whole file again from its first byte, not appended
    assert 'ignores HTTP Range requests): starting over' in capsys.readouterr().out


def test_broken_downloads_keep_the_part_file_for_the_next_run(serve, tmp_path, capsys):
    archive, output = tmp_path / 'lra_release.gz', tmp_path / 'out'
    server = serve(cut=1000, cuts=fetch_lra.TRIES)
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={output}', '--tasks=listops') == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith('fetch_lra.py: error: the download broke 5 times')
    assert 'run the same command again to resume' in err[0]
    part = tmp_path / 'lra_release.gz.part'
    assert part.read_bytes() == ARCHIVE[:1000 * fetch_lra.TRIES] and not archive.exists() and not output.exists()

    server = serve()
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={output}', '--tasks=listops') == 0
    assert server.requests == [f'bytes={1000 * fetch_lra.TRIES}-']
    assert archive.read_bytes() == ARCHIVE and files_under(output) == set(LISTOPS)

    # a .part file that is already whole: the server answers 416 and the file is taken as it is
    archive.rename(part)
    server = serve()
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={tmp_path / "o2"}', '--tasks=listops') == 0
    assert server.requests == [f'bytes={len(ARCHIVE)}-'] and archive.read_bytes() == ARCHIVE


def test_ctrl_c_keeps_the_part_file_and_says_so(serve, tmp_path, capsys, monkeypatch):
    server = serve()
    monkeypatch.setattr(fetch_lra, 'CHUNK', 4096)

    def interrupt(self, done):
        raise KeyboardInterrupt
    monkeypatch.setattr(fetch_lra.Progress, 'update', interrupt)
    archive = tmp_path / 'lra_release.gz'
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={tmp_path / "out"}') == 130
    part = tmp_path / 'lra_release.gz.part'
    assert part.read_bytes() == ARCHIVE[:4096]
    err = capsys.readouterr().err
    assert f'interrupted; {part} is kept: run the same command again to resume' in err


def corrupt(data):
    middle = len(data) // 2
    return data[:middle] + bytes([data[middle] ^ 0xFF]) + data[middle + 1:]


@pytest.mark.parametrize('damage', [lambda d: d[:len(d) * 2 // 3], lambda d: d[:-5], corrupt,
                                    lambda d: b'<!DOCTYPE html><html>Forbidden</html>'],
                         ids=['truncated', 'last-bytes-missing', 'corrupt', 'not-gzip'])
def test_damaged_archive_is_refused_in_one_line(serve, tmp_path, capsys, damage):
    server = serve(payload=damage(ARCHIVE))  # the server's size agrees: only unpacking can tell
    archive, output = tmp_path / 'lra_release.gz', tmp_path / 'out'
    assert run(f'--url={server.url}', f'--archive={archive}', f'--output={output}') == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith(f'fetch_lra.py: error: {archive} is truncated or damaged')
    assert err[0].endswith('delete it and run again')
    assert files_under(output) == set()  # nothing half unpacked is left to look whole


def test_an_archive_lacking_a_folder_is_refused(tmp_path, capsys):
    archive = tmp_path / 'other.tar.gz'
    archive.write_bytes(make_archive(LISTOPS + AAN[:2]))
    assert run(f'--archive={archive}', f'--output={tmp_path / "out"}', '--tasks=listops,retrieval') == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'has no new_aan_pairs.test.tsv (needed by retrieval)' in err[0]
    assert files_under(tmp_path / 'out') == set()


def test_members_escaping_the_output_folder_are_refused(tmp_path, capsys):
    def escape(tar):
        info = tarfile.TarInfo('lra_release/listops-1000/../../../escaped.txt')
        info.size = 3
        tar.addfile(info, io.BytesIO(b'bad'))
    archive = tmp_path / 'evil.tar.gz'
    archive.write_bytes(make_archive(LISTOPS, extra=escape))
    output = tmp_path / 'deep' / 'out'
    assert run(f'--archive={archive}', f'--output={output}', '--tasks=listops') == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'is unsafe' in err[0] and 'escaped.txt' in err[0]
    assert files_under(tmp_path) == {'evil.tar.gz'}


def test_a_folder_left_half_unpacked_is_redone(tmp_path, capsys):
    archive, output = tmp_path / 'lra_release.gz', tmp_path / 'out'
    archive.write_bytes(ARCHIVE)
    stale = output / 'lra_release' / 'listops-1000.partial' / 'basic_train.tsv'
    stale.parent.mkdir(parents=True)
    stale.write_text('half')
    assert run(f'--archive={archive}', f'--output={output}', '--tasks=listops') == 0
    assert files_under(output) == set(LISTOPS)
    assert 'left by an unpacking that did not finish' in capsys.readouterr().out


def test_http_errors_and_usage_errors_are_one_line(serve, tmp_path, capsys):
    server = serve(status=403)
    assert run(f'--url={server.url}', f'--archive={tmp_path / "a.gz"}', f'--output={tmp_path}') == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'answered HTTP 403' in err[0] and '--archive=PATH' in err[0]
    assert len(server.requests) == 1  # a refusal is not retried

    result = subprocess.run([sys.executable, 'fetch_lra.py', '--tasks=listops,imdb'], cwd=ROOT,
                            capture_output=True, text=True)
    assert result.returncode == 2 and result.stderr.count('\n') == 1 and "unknown task 'imdb'" in result.stderr
    result = subprocess.run([sys.executable, 'fetch_lra.py', '--help'], cwd=ROOT, capture_output=True, text=True)
    for option in ('--tasks', '--difficulty', '--url', '--archive', '--output'):
        assert option in result.stdout
    assert result.stdout.count('default') >= 5 and os.path.basename(fetch_lra.URL) in result.stdout


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_progress_redraws_on_a_terminal_and_prints_lines_otherwise(monkeypatch):
    clock = iter(range(1000))
    monkeypatch.setattr(fetch_lra.time, 'monotonic', lambda: float(next(clock)))  # one second per call
    plain = io.StringIO()
    progress = fetch_lra.Progress('downloading', 1000, out=plain)
    for done in range(0, 1001, 10):
        progress.update(done)
    progress.close()
    lines = plain.getvalue().splitlines()
    assert len(lines) == 20 and '\r' not in plain.getvalue()  # one line every 5 %
    assert lines[0] == 'downloading: 50 B of 1.00 KB (5%), 8 B/s, 1m54s left'  # 50 B in 6 s, 950 B left
    assert lines[-1].startswith('downloading: 1.00 KB of 1.00 KB (100%)')

    screen = Terminal()
    progress = fetch_lra.Progress('unpacking', 2_000_000_000, done=500_000_000, out=screen)
    progress.update(1_000_000_000)
    progress.close()
    shown = screen.getvalue()
    assert shown.count('\r') == 2 and shown.endswith('\n') and shown.count('\n') == 1
    assert '1.00 GB of 2.00 GB (50%)' in shown and 'MB/s' in shown and 'left' in shown
