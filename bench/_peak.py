"""``python bench/_peak.py ARGS`` = ``python -m daemon ARGS``, reporting its peak RSS at exit.

The kernel's ru_maxrss of a child is useless here: the child is forked from the bench
process, and exec records the parent's resident set as the child's peak. VmHWM in
/proc/self/status is the high-water mark of the daemon's own address space.
"""

import atexit
import runpy
import sys

MARKER = "bench-peak-rss-kb"


def _report() -> None:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                sys.stderr.write(f"{MARKER} {line.split()[1]}\n")
                sys.stderr.flush()


if __name__ == "__main__":
    atexit.register(_report)
    sys.argv = ["lms-changefeed", *sys.argv[1:]]
    runpy.run_module("daemon", run_name="__main__", alter_sys=True)
