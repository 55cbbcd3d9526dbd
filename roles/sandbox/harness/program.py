"""The untrusted-code roles of the harness: ``program`` (run it, sign whether it ended
normally) and ``candidate`` (run it, then answer the judge's requests).

Everything in these processes is the program's to tamper with once it has started;
what must keep working (writing the signed verdict) uses names bound before it
starts (`bound_names`). Standard library only.
"""

import builtins
import os
import sys

from roles.sandbox.harness.wire import decode, describe, encode, receive, send

try:
    from _hashlib import hmac_digest as _hmac_digest  # C code: nothing the program can patch
except ImportError:  # a Python built without OpenSSL
    from hmac import digest as _hmac_digest


def bound_names():
    """What the untrusted-code roles use once the program has started, bound before it
    starts: the program can replace builtins, module attributes (os.write, sys.settrace)
    and this module's globals, but not the locals of a running frame."""
    return {
        "run": exec, "compile": compile, "exit": os._exit, "write": os.write, "seek": os.lseek,
        "truncate": os.ftruncate, "settrace": sys.settrace, "setprofile": sys.setprofile,
        "BaseException": BaseException, "SystemExit": SystemExit, "describe": describe,
        "type": type, "int": int, "len": len, "sign": _hmac_digest, "hex": bytes.hex,
    }


def execute_program(program: str, module_name: str, bound: dict):
    """Run the program as a module; (its namespace, the error text or None)."""
    sys.argv = ["program.py"]
    with open("program.py", "w", encoding="utf-8") as source:  # lets tracebacks quote the program
        source.write(program)
    namespace = {"__name__": module_name, "__file__": "program.py", "__builtins__": builtins}
    try:
        bound["run"](bound["compile"](program, "program.py", "exec"), namespace)
    except bound["SystemExit"] as stop:
        # sys.exit(0) is how many stdin/stdout programs finish.
        code = stop.code
        if not (code is None or (bound["type"](code) is bound["int"] and code == 0)):
            return namespace, bound["describe"](stop)
    except bound["BaseException"] as error:
        return namespace, bound["describe"](error)
    return namespace, None


def write_verdict(lines: list, key: bytes, verdict_fd: int, bound: dict) -> None:
    """``<tag> <message>``: the message is the lines joined; the tag its HMAC-SHA256 under ``key``."""
    message = "\n".join(lines).encode("utf-8", "replace")
    data = bound["hex"](bound["sign"](key, message, "sha256")).encode() + b" " + message
    # Overwrite whatever may have been written to this descriptor.
    bound["seek"](verdict_fd, 0, 0)
    bound["truncate"](verdict_fd, 0)
    while data:
        data = data[bound["write"](verdict_fd, data):]


def run_program(nonce: str, program: str, module_name: str, verdict_fd: int) -> None:
    """The ``program`` role: run the program (its stdin and stdout are the run's), then
    write a verdict saying whether it ended normally: ``0`` and ``program ok`` or
    ``program error <text>``, one line each."""
    bound = bound_names()
    stdout = sys.stdout
    _, program_error = execute_program(program, module_name, bound)
    try:
        stdout.flush()
    except bound["BaseException"]:
        pass  # the program closed or broke its stdout: that shows up as its output
    lines = ["0", "program ok" if program_error is None else "program error " + program_error]
    write_verdict(lines, nonce.encode(), verdict_fd, bound)
    bound["exit"](0)


def serve_candidate(program: str, module_name: str, requests_fd: int, replies_fd: int) -> None:
    """The ``candidate`` role: run the program, say so, then answer requests until the
    judge closes its end. Nothing here is trusted: the judge believes only plain data."""
    namespace, program_error = execute_program(program, module_name, bound_names())
    refs: list = []
    names = {name: value for name, value in namespace.items() if not name.startswith("__")}
    try:
        send(replies_fd, {"ready": True, "program_error": program_error, "names": encode(names, refs)})
        while True:
            request = receive(requests_fd)
            send(replies_fd, {**_answer(request, refs), "id": request.get("id")})
    except BaseException:  # the judge went away (or the program broke this loop): the run is over
        os._exit(0)


def _answer(request: dict, refs: list) -> dict:
    def value_of(data):
        return decode(data, lambda index: refs[index])

    try:
        target = refs[request["target"]]
        operation = request["op"]
        if operation == "call":
            args = [value_of(item) for item in request["args"]]
            kwargs = {key: value_of(item) for key, item in request["kwargs"].items()}
            result = target(*args, **kwargs)
            # arguments travel back too: a test may check what a function did to them in place
            return {"value": encode(result, refs), "args": [encode(arg, refs) for arg in args]}
        if operation == "getattr":
            return {"value": encode(getattr(target, request["name"]), refs)}
        if operation == "items":  # iterate, for a test's list(...) of a generator or iterator
            return {"value": encode(list(target), refs)}
        return {"error": f"ValueError: unknown request {operation!r}"}
    except BaseException as error:  # the program's code raised: the judge sees the text only
        return {"error": describe(error)}

