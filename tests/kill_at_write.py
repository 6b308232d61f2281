"""Run `python -m e2vpt ARGS...` and SIGKILL it at one exact moment of its file writes.

Usage: python tests/kill_at_write.py FILE_NAME N before|after -- ARGS...

The process really dies by kill -9 (no cleanup, no `finally`), `before` or `after` the N-th time a
file named FILE_NAME is moved into place (every run file lands by `os.replace`), so a test can place
a real crash at the points a timer cannot hit: between the two renames of a checkpoint write, after
the weights but before the summary. Exits normally if the run ends before that moment.
"""

import os
import runpy
import signal
import sys


def main() -> None:
    name, nth, when = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    args = sys.argv[sys.argv.index("--") + 1:]
    real_replace, seen = os.replace, {"n": 0}

    def replace(src, dst, *rest, **kwargs):
        hit = os.path.basename(os.fspath(dst)) == name and (seen.__setitem__("n", seen["n"] + 1) or seen["n"] == nth)
        if hit and when == "before":
            os.kill(os.getpid(), signal.SIGKILL)
        real_replace(src, dst, *rest, **kwargs)
        if hit and when == "after":
            os.kill(os.getpid(), signal.SIGKILL)

    os.replace = replace
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
    sys.argv = ["e2vpt", *args]
    runpy.run_module("e2vpt", run_name="__main__")


if __name__ == "__main__":
    main()
