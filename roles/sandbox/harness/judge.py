"""The ``judge`` role of the harness: run the trusted tests against the candidate's
program over two pipes, believing nothing but plain values, and sign the verdict.

Standard library only.
"""

import builtins
import os
import sys
import time

from roles.sandbox.harness.program import bound_names, write_verdict
from roles.sandbox.harness.wire import (
    ERROR_TEXT_LIMIT, TIME_LIMIT_TEXT, ChannelBroken, RemoteError, decode, describe, encode, receive, send,
)


class Remote:
    """Something the program defined: a function, a class, an instance, a module. The
    judge can call it, read its attributes and iterate it, each a request to the
    candidate; the answer comes back as plain data or as another `Remote`. It has no
    truth value, no equality and no hash: those would be the program's to decide."""

    __slots__ = ("_channel", "_index")

    def __init__(self, channel, index: int) -> None:
        object.__setattr__(self, "_channel", channel)
        object.__setattr__(self, "_index", index)

    def __call__(self, *args, **kwargs):
        return self._channel.call(self._index, args, kwargs)

    def __getattr__(self, name: str):
        return self._channel.request({"op": "getattr", "target": self._index, "name": name})["value"]

    def __iter__(self):
        return iter(self._channel.request({"op": "items", "target": self._index})["value"])

    def _refuse(self, *args):
        raise TypeError("an object of the program's own type has no truth value, equality or order here: "
                        "tests compare plain values (numbers, strings, lists, dicts, sets, tuples, None)")

    __bool__ = __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = __hash__ = __len__ = __contains__ = _refuse

    def __setattr__(self, name, value):
        raise TypeError("the program's objects cannot be changed from the tests")

    def __repr__(self) -> str:
        return f"<an object of the program #{self._index}>"


class Channel:
    """The judge's end of the pipes to the candidate, with the run's deadline."""

    def __init__(self, requests_fd: int, replies_fd: int, deadline: float) -> None:
        self.requests_fd, self.replies_fd, self.deadline = requests_fd, replies_fd, deadline
        self.broken = None
        self.sent = 0

    def value(self, data):
        return decode(data, lambda index: Remote(self, index))

    def request(self, message: dict) -> dict:
        if self.broken is not None:
            raise ChannelBroken(self.broken)
        try:
            # Each reply names its request: the program may have forked, and more than one
            # process may be reading requests and answering (or answering the wrong one).
            self.sent += 1
            send(self.requests_fd, {**message, "id": self.sent}, self.deadline)
            reply = receive(self.replies_fd, self.deadline)
            if reply.get("id") != self.sent or type(reply.get("id")) is not int:
                raise ChannelBroken("an answer to another question (the program's processes are out of step)")
            if "error" in reply:
                raise RemoteError(str(reply["error"])[:ERROR_TEXT_LIMIT])
            decoded = {"value": self.value(reply.get("value"))}
            if "args" in reply:
                decoded["args"] = self.value(reply["args"])
            return decoded
        except ChannelBroken as error:
            self.broken = str(error)  # nothing after this can be believed to be in order
            raise

    def call(self, index: int, args: tuple, kwargs: dict):
        encoded_args = [self._plain(arg) for arg in args]
        encoded_kwargs = {str(key): self._plain(value) for key, value in kwargs.items()}
        reply = self.request({"op": "call", "target": index, "args": encoded_args, "kwargs": encoded_kwargs})
        after = reply.get("args")
        if type(after) is list and len(after) == len(args):
            for original, changed in zip(args, after):
                _copy_back(original, changed)
        return reply["value"]

    def _plain(self, value):
        if type(value) is Remote:
            return {"ref": value._index}
        refs: list = []
        data = encode(value, refs)
        if refs:
            raise TypeError(f"a test passed the program a {type(refs[0]).__name__}; only plain values can be sent")
        return data


def _copy_back(original, changed) -> None:
    """Make a mutable argument the judge passed look as the program left it."""
    if type(original) is list and type(changed) is list:
        original[:] = changed
    elif type(original) is dict and type(changed) is dict:
        original.clear()
        original.update(changed)
    elif type(original) is set and type(changed) is set:
        original.clear()
        original.update(changed)


def _own_module(name: str, otherwise):
    try:
        return __import__(name)
    except BaseException:  # not importable in this interpreter: the name is the program's own object
        return otherwise


def judge_tests(nonce: str, tests: list, requests_fd: int, replies_fd: int, verdict_fd: int, time_limit_s: float) -> None:
    """The ``judge`` role: wait for the candidate's program to have run, then run each
    test here, with the program's top-level names as `Remote` objects (names a test
    defines itself take precedence), and write the signed verdict: the number of
    tests, ``program ok`` or ``program error <text>``, then ``pass`` or ``fail <text>``
    per test."""
    channel = Channel(requests_fd, replies_fd, time.monotonic() + time_limit_s)
    program_error, outcomes = None, []
    try:
        ready = receive(replies_fd, channel.deadline)
        if ready.get("ready") is not True:
            raise ChannelBroken("the program's process did not say it was ready")
        if ready.get("program_error") is not None:
            program_error = str(ready["program_error"])[:ERROR_TEXT_LIMIT]
        names = channel.value(ready.get("names"))
        if type(names) is not dict:
            raise ChannelBroken("the program's names are not a mapping")
    except ChannelBroken as error:
        program_error = TIME_LIMIT_TEXT if str(error) == TIME_LIMIT_TEXT else f"no answer from the program: {error}"
        names = {}
    if program_error is None:
        namespace = {"__name__": "tests", "__builtins__": builtins}
        for name, value in names.items():
            if type(name) is not str:
                continue
            # A standard-library module the program imported is this process's own
            # import: a test calling math.fabs must not be calling the program's math.
            namespace[name] = _own_module(name, value) if name in sys.stdlib_module_names else value
        for index, test in enumerate(tests):
            try:
                exec(compile(test, f"<test {index}>", "exec"), namespace)
            except ChannelBroken as error:
                outcomes.append("fail " + str(error))
            except RemoteError as error:
                outcomes.append("fail " + str(error))
            except BaseException as error:  # the test's own failure: an assert, a TypeError from a Remote ...
                outcomes.append("fail " + describe(error))
            else:
                outcomes.append("pass")
    lines = [str(len(tests)), "program ok" if program_error is None else "program error " + program_error, *outcomes]
    write_verdict(lines, nonce.encode(), verdict_fd, bound_names())
    os._exit(0)

