"""User-facing errors: one clear message, a non-zero exit, no traceback.

Expected mistakes (bad params, bad data, missing files, no GPU) raise
``SqltuneError``; ``run_main`` turns it into ``error: ...`` on stderr and exit
code 2. Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class SqltuneError(Exception):
    """An expected, user-fixable problem. The message names the problem and the fix."""


def run_main(main: Callable[[], int | None], log: str | None = None) -> None:
    """``log``: a stage name; the console output is also written to ``logs/<log>.log``."""
    from contextlib import nullcontext

    from sqltune.logs import stage_log

    with stage_log(log) if log else nullcontext():
        try:
            code = main()
        except SqltuneError as exc:
            print(f"error: {exc}", file=sys.stderr)
            code = 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
    sys.exit(code or 0)
