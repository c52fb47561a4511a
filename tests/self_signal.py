"""A command that interrupts itself at a chosen point, for tests of Ctrl-C and kill handling.

A test that polls for a file and then signals the child races it: under load the watcher may be descheduled while
the child finishes, and the test can only skip. Here the child wraps one function of the toolkit and sends itself
the signal right after the first call of it returns, so the interruption lands at the same point on any machine.
"""

from __future__ import annotations

import sys

_CODE = """\
import os, runpy, signal, sys
import {module} as target
original = target.{function}
def call_then_signal(*args, **kwargs):
    out = original(*args, **kwargs)
    if {path_contains!r} in str(args[0] if args else ''):
        os.kill(os.getpid(), signal.{signal_name})
    return out
target.{function} = call_then_signal
sys.argv[0] = {package!r}
runpy.run_module({package!r}, run_name='__main__', alter_sys=True)
"""


def signal_after_first_call(package: str, module: str, function: str, signal_name: str, *,
                            path_contains: str = "") -> list[str]:
    """The command prefix standing for ``python -m package``: that process sends itself ``signal_name`` ("SIGINT",
    "SIGKILL") as soon as a call of ``module.function`` whose first argument contains ``path_contains`` returns
    (the function must be looked up through its module at call time, as ``module.function(...)``)."""
    code = _CODE.format(module=module, function=function, signal_name=signal_name, path_contains=path_contains,
                        package=package)
    return [sys.executable, "-c", code]
