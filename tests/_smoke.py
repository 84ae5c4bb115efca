"""Benchmark smoke runs, one after another in this one interpreter, each as ``python -m`` runs it.

``python -m tests._smoke OUT '{"bench_plan": ["--smoke"], ...}'`` runs each script with
``runpy`` as ``__main__``, its arguments in ``sys.argv``, and writes what it printed to
``OUT/<script>.out`` and how it ended to ``OUT/<script>.json`` (its exit code, and the end of
what it wrote to stderr, with the traceback if it raised). One interpreter for several scripts: Python, aiohttp and the SDK are
imported once, not once a script (about 0.3 s of CPU each). The processes a script starts
itself are its own business, as under ``python -m``.
"""

from __future__ import annotations

import contextlib
import io
import json
import runpy
import sys
import traceback
from pathlib import Path


def run(name: str, args: list[str]) -> tuple[int, str, str]:
    """Run ``benchmarks.<name>`` as ``__main__``: its exit code, stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    sys.argv = [f"benchmarks/{name}.py", *args]
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            runpy.run_module(f"benchmarks.{name}", run_name="__main__", alter_sys=True)
        except SystemExit as exc:  # sys.exit(main()), as under python -m
            if isinstance(exc.code, int) or exc.code is None:
                code = exc.code or 0
            else:
                code = 1
                print(exc.code, file=err)
        except BaseException:
            code = 1
            traceback.print_exc(file=err)
    return code, out.getvalue(), err.getvalue()


def main() -> None:
    out_dir = Path(sys.argv[1])
    for name, args in json.loads(sys.argv[2]).items():
        code, stdout, stderr = run(name, args)
        (out_dir / f"{name}.out").write_text(stdout)
        (out_dir / f"{name}.json").write_text(json.dumps({"code": code, "stderr": stderr[-3000:]}))


if __name__ == "__main__":
    main()
