"""User-facing errors: one clear message, a non-zero exit, no traceback.

Expected mistakes (bad params, bad data, missing files, no GPU) raise
``SqltuneError``; ``run_main`` turns it into ``error: ...`` on stderr and exit
code 2, as it does with torch's out-of-GPU-memory error (a batch too large for the
card is a setting to change). Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import sys
from typing import Callable


class SqltuneError(Exception):
    """An expected, user-fixable problem. The message names the problem and the fix."""


def print_error(message: str) -> None:
    """``error: message`` on a line of its own on stderr: a progress bar this process is drawing
    (training steps, generation) has no newline yet, and the message must not land at its end."""
    from tqdm import tqdm

    tqdm.write(f"error: {message}", file=sys.stderr)
    sys.stderr.flush()


def run_main(main: Callable[[], int | None], log: str | None = None) -> None:
    """``log``: a stage name; the console output is also written to ``logs/<log>.log``."""
    from contextlib import nullcontext

    from sqltune.logs import stage_log

    with stage_log(log) if log else nullcontext():
        try:
            code = main()
        except SqltuneError as exc:
            print_error(str(exc))
            code = 2
        except KeyboardInterrupt:
            print("interrupted", file=sys.stderr)
            code = 130
        except Exception as exc:
            if not _out_of_gpu_memory(exc):
                raise
            first = (str(exc).strip().splitlines() or ["CUDA out of memory"])[0]
            print_error(f"out of GPU memory ({first[:200]}). Free the GPU of other processes, or lower what one "
                        "step holds: in training train.trainer.per_device_batch_size or max_length, or turn on "
                        "gradient_checkpointing (a full fine-tune also needs several times LoRA's memory); in "
                        "evaluation evaluate.batch_tokens or max_batch_size")
            code = 2
    sys.exit(code or 0)


def _out_of_gpu_memory(exc: BaseException | None, depth: int = 0) -> bool:
    """torch's OutOfMemoryError, also when another exception wraps it (a library re-raising it)."""
    if exc is None or depth > 8:
        return False
    # By name: importing torch here would load it into every command, also those that never use it.
    if type(exc).__name__ == "OutOfMemoryError" and type(exc).__module__.split(".")[0] == "torch":
        return True
    return _out_of_gpu_memory(exc.__cause__ or exc.__context__, depth + 1)
