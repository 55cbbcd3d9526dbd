"""The harness's entry point: read the spec, set up, report, then play the spec's role.

`roles.sandbox.processes` starts `main` in a fresh ``python -I -S`` (the package
docstring, `roles.sandbox.harness`, has the phases and the command). Standard library only.
"""

import json
import os
import sys
import traceback

from roles.sandbox.harness.isolation import set_up
from roles.sandbox.harness.judge import judge_tests
from roles.sandbox.harness.program import run_program, serve_candidate


def main() -> None:
    """``argv[1:3]``: the descriptors of the spec pipe (read to its end) and of the status pipe."""
    spec_fd, status_fd = (int(argument) for argument in sys.argv[1:3])
    with os.fdopen(spec_fd, "rb") as spec_pipe:
        spec = json.loads(spec_pipe.read())
    try:
        report = set_up(spec)
    except Exception:  # any set-up failure is the sandbox's, not the program's: say so
        report = {"error": traceback.format_exc(limit=3)[-2000:]}
    os.write(status_fd, json.dumps(report).encode())
    os.close(status_fd)
    if "error" in report:
        os._exit(70)
    fds = spec["fds"]
    if spec["role"] == "program":
        run_program(spec["nonce"], spec["program"], spec["module_name"], fds["verdict"])
    elif spec["role"] == "candidate":
        serve_candidate(spec["program"], spec["module_name"], fds["requests"], fds["replies"])
    else:
        judge_tests(spec["nonce"], spec["tests"], fds["requests"], fds["replies"], fds["verdict"], spec["time_limit_s"])
