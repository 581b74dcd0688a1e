"""``python bench/_peak.py ARGS`` = ``python -m daemon ARGS``, reporting its peak RSS and
the CPU time of its pass at exit.

The kernel's ru_maxrss of a child is useless here: the child is forked from the bench
process, and exec records the parent's resident set as the child's peak. VmHWM in
/proc/self/status is the high-water mark of the daemon's own address space.

The pass's CPU: the daemon logs to stderr (JSON lines); the shim puts a thin wrapper on
``sys.stderr`` that notes the process's CPU time (user + system, every thread) when the
first ``scan_started`` line and the last ``scan_finished`` line are written, so start-up
and imports stay outside the figure.
"""

import atexit
import runpy
import sys
import time

MARKER = "bench-peak-rss-kb"
CPU_MARKER = "bench-pass-cpu-s"


class _Marks:
    """``sys.stderr``, noting the CPU time at the pass's first and last log line."""

    def __init__(self, out):
        self._out = out
        self.started = None
        self.finished = None

    def write(self, text):
        if self.started is None and '"scan_started"' in text:
            self.started = time.process_time()
        elif '"scan_finished"' in text:
            self.finished = time.process_time()
        return self._out.write(text)

    def __getattr__(self, name):
        return getattr(self._out, name)


_MARKS = _Marks(sys.stderr)


def _report() -> None:
    out = _MARKS._out
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                out.write(f"{MARKER} {line.split()[1]}\n")
    if _MARKS.started is not None and _MARKS.finished is not None:
        out.write(f"{CPU_MARKER} {_MARKS.finished - _MARKS.started:.6f}\n")
    out.flush()


if __name__ == "__main__":
    atexit.register(_report)
    sys.stderr = _MARKS
    sys.argv = ["lms-changefeed", *sys.argv[1:]]
    runpy.run_module("daemon", run_name="__main__", alter_sys=True)
