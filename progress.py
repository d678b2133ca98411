"""Progress of an epoch: one line redrawn in place on a terminal, or a plain line every few percent when
standard output is a log file or a cluster job's output. The time left is estimated from the steps after
the first one, whose compilation would otherwise inflate it. Entry point: `Progress`."""
import sys
import time

REDRAW_SECONDS = 0.5  # terminal: redraw at most this often
LOG_PERCENT = 5       # log file: one line every this many percent of the epoch


def clock(seconds):
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    return f'{hours}:{rest // 60:02d}:{rest % 60:02d}' if hours else f'{rest // 60:02d}:{rest % 60:02d}'


class Progress:
    """`update(done, **values)` after steps; `first_step_done()` once the first step has finished;
    `close()` at the end. `done` counts steps of the epoch, `start` of them were done before (a resume)."""

    def __init__(self, desc, total, start=0, stream=None, enabled=True):
        self.desc, self.total, self.start, self.enabled = desc, max(total, 1), start, enabled
        self.stream = stream or sys.stdout
        self.tty = self.enabled and self.stream.isatty()
        self.began, self.timed_from, self.timed_steps = time.time(), None, 0
        self.done, self.values, self.shown, self.logged = start, {}, 0., start * 100 // self.total // LOG_PERCENT

    def first_step_done(self):
        self.timed_from, self.timed_steps = time.time(), self.start + 1

    def left(self):
        """Seconds left, from the pace of the steps after the first one (None until two steps are done)."""
        if self.timed_from is None or self.done <= self.timed_steps:
            return None
        pace = (time.time() - self.timed_from) / (self.done - self.timed_steps)
        return pace * (self.total - self.done)

    def line(self):
        left = self.left()
        values = ' '.join(f'{key} {value}' for key, value in self.values.items())
        return (f'{self.desc}: {100 * self.done / self.total:3.0f}% {self.done}/{self.total} '
                f'[{clock(time.time() - self.began)} < {"?" if left is None else clock(left)}] {values}').rstrip()

    def update(self, done, **values):
        self.done = done
        self.values.update(values)
        if not self.enabled:
            return
        if self.tty:
            if time.time() - self.shown >= REDRAW_SECONDS or done == self.total:
                self.stream.write('\r' + self.line() + '\033[K')
                self.stream.flush()
                self.shown = time.time()
        elif done * 100 // self.total // LOG_PERCENT > self.logged:
            self.logged = done * 100 // self.total // LOG_PERCENT
            print(self.line(), file=self.stream, flush=True)

    def close(self):
        if self.tty:
            self.stream.write('\r' + self.line() + '\033[K\n')
            self.stream.flush()
