"""Commands that tests/test_worker.py runs through the worker, as `python -m imagekv` runs imagekv.cli.main."""

import json
import os
import sys
import time


def report() -> None:
    """Print what this process sees, write to stderr, and exit with the code given as the first argument."""
    print(json.dumps({"cwd": os.getcwd(), "argv": sys.argv[1:], "probe": os.environ.get("WORKER_PROBE"),
                      "pid": os.getpid(), "parent": os.getppid()}))
    print("a line on stderr", file=sys.stderr)
    raise SystemExit(int(sys.argv[1]))


def sleep() -> None:
    """Print this process's id, then wait to be killed."""
    print(os.getpid(), flush=True)
    time.sleep(600)
