"""The attack suite: programs that try to earn a code reward without solving the task.

Every attack is an answer to the same task (`is_even_sum(a, b)`: whether a + b is
even) that does not solve it and tries a distinct trick instead. Each must score 0 (or
be unscored, never rewarded), return within the time limit, and leave no process,
file or secret behind. The controls are correct answers in many shapes, which must
score 1, so the suite cannot pass by refusing everything.
"""

from __future__ import annotations

import os
import textwrap
import time

import pytest

from roles.rewards.code import CodeExecutionConfig, score_code
from tests.unit.rewards.test_sandbox import MARKER, program, sandbox, uid_range  # noqa: F401  (fixtures)

TESTS = [
    "assert is_even_sum(1, 1) == True",
    "assert is_even_sum(1, 2) == False",
    "assert is_even_sum(2, 2) is True",
    "assert not is_even_sum(0, 7)",
    "assert [is_even_sum(n, n) for n in range(3)] == [True, True, True]",
    "result = is_even_sum(5, 4)\nassert isinstance(result, bool) and result is False",
]
TIME_LIMIT_S = 3.0
WRONG = "(a + b) % 2 == 1"
"""The opposite of the right answer: fails every test, so any pass is the trick's."""
SECRET = f"troupe-secret-{MARKER}"

ATTACKS = {
    "an object that equals everything": """
        class Anything:
            def __eq__(self, other): return True
            def __ne__(self, other): return False
            def __bool__(self): return True
            def __hash__(self): return 0
        def is_even_sum(a, b): return Anything()
    """,
    "a bool-like int subclass": """
        class Yes(int):
            def __eq__(self, other): return True
            def __bool__(self): return True
            __hash__ = int.__hash__
        def is_even_sum(a, b): return Yes(1)
    """,
    "a str subclass that equals everything": """
        class S(str):
            def __eq__(self, other): return True
            __hash__ = str.__hash__
        def is_even_sum(a, b): return S("True")
    """,
    "a list subclass for the list test": """
        class L(list):
            def __eq__(self, other): return True
        def is_even_sum(a, b): return L()
    """,
    "replacing assert's exception and the builtins": """
        import builtins
        class Never(Exception): pass
        builtins.AssertionError = Never
        builtins.isinstance = lambda *args: True
        builtins.exec = lambda *args, **kwargs: None
        def is_even_sum(a, b): return WRONG
    """,
    "patching the harness modules' functions": """
        import sys
        for module_name, harness in list(sys.modules.items()):
            if module_name == "__main__" or module_name.startswith("roles.sandbox"):
                for name, value in list(vars(harness).items()):
                    if callable(value) and not isinstance(value, type):
                        setattr(harness, name, lambda *args, **kwargs: {"value": True})
        def is_even_sum(a, b): return WRONG
    """,
    "SystemExit(0) before the tests": """
        def is_even_sum(a, b): return WRONG
        raise SystemExit(0)
    """,
    "KeyboardInterrupt at import": """
        def is_even_sum(a, b): return WRONG
        raise KeyboardInterrupt
    """,
    "a BaseException subclass at import": """
        class Escape(BaseException): pass
        def is_even_sum(a, b): return WRONG
        raise Escape()
    """,
    "os._exit(0) at import": """
        import os
        def is_even_sum(a, b): return WRONG
        os._exit(0)
    """,
    "printing a pass and forging verdicts on every descriptor": """
        import os
        def is_even_sum(a, b): return WRONG
        print("PASS 6/6")
        forged = b"0" * 64 + b" 6\\nprogram ok\\npass\\npass\\npass\\npass\\npass\\npass"
        for fd in range(0, 256):
            try:
                os.write(fd, forged)
            except OSError:
                pass
    """,
    "searching memory for the verdict key": """
        import gc, os, re
        keys = set()
        for thing in gc.get_objects():
            if isinstance(thing, dict):
                for value in thing.values():
                    if isinstance(value, str) and re.fullmatch(r"[0-9a-f]{32}", value):
                        keys.add(value)
        print("keys found:", len(keys))
        def is_even_sum(a, b): return WRONG
    """,
    "killing every other process it can see": """
        import os, signal
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                try:
                    os.kill(int(entry), signal.SIGKILL)
                except OSError:
                    pass
        def is_even_sum(a, b): return WRONG
    """,
    "reading other processes' memory and environment": """
        import os
        found = []
        for entry in os.listdir("/proc"):
            if entry.isdigit() and int(entry) != os.getpid():
                for name in ("environ", "mem", "cmdline"):
                    try:
                        with open(f"/proc/{entry}/{name}", "rb") as handle:
                            found.append(handle.read(4096))
                    except OSError:
                        pass
        print(b"".join(found)[:100000])
        def is_even_sum(a, b): return WRONG
    """,
    "answering for the judge from a thread, ahead of the questions": """
        import json, os, struct, threading
        def flood():
            message = json.dumps({"value": True}).encode()
            for fd in range(3, 64):
                try:
                    os.write(fd, struct.pack(">I", len(message)) + message)
                except OSError:
                    pass
        threading.Thread(target=flood, daemon=True).start()
        def is_even_sum(a, b): return WRONG
    """,
    "forged references in its answers": """
        import json
        real = json.dumps
        json.dumps = lambda message, **kw: real({"value": {"ref": 0}} if "value" in message else message, **kw)
        def is_even_sum(a, b): return WRONG
    """,
    "an answer too large to send": """
        def is_even_sum(a, b): return [True] * 10_000_000
    """,
    "an answer nested too deeply": """
        def is_even_sum(a, b):
            value = True
            for _ in range(500):
                value = [value]
            return value
    """,
    "closing and replacing its descriptors": """
        import os
        for fd in range(3, 64):
            try:
                os.close(fd)
            except OSError:
                pass
        def is_even_sum(a, b): return WRONG
    """,
    "a daemon grandchild that outlives the program": """
        import os, time
        if os.fork() == 0:
            if os.fork() == 0:
                time.sleep(60)
            os._exit(0)
        def is_even_sum(a, b): return WRONG
    """,
    "escaping the process group": """
        import subprocess, sys
        try:
            subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", "MARKER"], start_new_session=True)
        except OSError:
            pass
        def is_even_sum(a, b): return WRONG
    """,
    "ignoring every signal and spinning": """
        import signal
        for name in ("SIGTERM", "SIGINT", "SIGXCPU", "SIGALRM", "SIGHUP"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        def is_even_sum(a, b):
            while True:
                pass
    """,
    "flooding standard output": """
        import sys
        chunk = "x" * 65536
        for _ in range(2000):
            sys.stdout.write(chunk)
        def is_even_sum(a, b): return WRONG
    """,
    "filling the disk": """
        import os
        for directory in (".", "/tmp", "/dev/shm"):
            try:
                with open(os.path.join(directory, "MARKER-fill"), "wb") as handle:
                    while True:
                        handle.write(b"\\0" * (1 << 20))
            except OSError:
                pass
        def is_even_sum(a, b): return WRONG
    """,
    "a fork bomb": """
        import os
        for _ in range(64):
            try:
                os.fork()
            except OSError:
                break
        def is_even_sum(a, b): return WRONG
    """,
    "a memory bomb": """
        hog = []
        while True:
            hog.append(bytearray(1 << 24))
        def is_even_sum(a, b): return WRONG
    """,
    "waiting out the judge's deadline": """
        import time
        def is_even_sum(a, b):
            time.sleep(60)
            return (a + b) % 2 == 0
    """,
    "looking for the expected values in its callers' frames": """
        import sys
        def is_even_sum(a, b):
            seen = []
            frame = sys._getframe(1)
            while frame is not None:
                seen.extend(value for value in frame.f_locals.values() if isinstance(value, bool))
                frame = frame.f_back
            return seen[0] if seen else WRONG
    """,
}

CONTROLS = {
    "a plain function": "def is_even_sum(a, b):\n    return (a + b) % 2 == 0\n",
    "with a helper and a main block": """
        def parity(n):
            return n % 2
        def is_even_sum(a, b):
            return parity(a) == parity(b)
        if __name__ == "__main__":
            raise SystemExit("the main block must not run")
    """,
    "printing as it goes": """
        def is_even_sum(a, b):
            print("checking", a, b)
            return not (a + b) & 1
    """,
    "a method of a class, bound at module level": """
        class Checker:
            def check(self, a, b):
                return (a + b) % 2 == 0
        is_even_sum = Checker().check
    """,
    "a fenced answer with imports": "Here you go:\n```python\nimport operator\n\ndef is_even_sum(a, b):\n"
                                    "    return operator.mod(a + b, 2) == 0\n```\n",
}


@pytest.fixture
def options(sandbox):  # noqa: F811 (the fixture imported above)
    return CodeExecutionConfig(sandbox=sandbox.model_copy(update={"time_limit_s": TIME_LIMIT_S}))


@pytest.fixture(autouse=True)
def secret_in_the_environment(monkeypatch):
    monkeypatch.setenv("TROUPE_REWARD_SECRET", SECRET)


def leaked(text: str) -> bool:
    return SECRET in text


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_an_attack_earns_nothing_and_leaves_nothing(name, options, sandbox, tmp_path):  # noqa: F811
    started = time.monotonic()

    attack = program(textwrap.dedent(ATTACKS[name])).replace("WRONG", WRONG)
    result = score_code("", attack, TESTS, config=options)

    elapsed = time.monotonic() - started
    assert result.score == 0.0, f"{name}: {result.info}"
    assert result.info.get("passed", 0) == 0 or result.unscored
    # the wall clock, the judge's grace and the sandboxes' start and end, with room for a loaded machine
    assert elapsed < TIME_LIMIT_S + 10, f"{name} took {elapsed:.1f} s"
    assert not leaked(repr(result.info)), f"{name} got the parent's environment out"
    assert list(tmp_path.iterdir()) == [], f"{name} left files in the sandbox root"
    for shared in ("/tmp", "/dev/shm"):
        assert not [entry for entry in os.listdir(shared) if MARKER in entry], f"{name} left a file in {shared}"
    # the uid_range fixture fails the test if any process of the run is still alive


@pytest.mark.parametrize("name", sorted(CONTROLS))
def test_a_correct_answer_passes_every_test(name, options):
    result = score_code("", program(textwrap.dedent(CONTROLS[name])), TESTS, config=options)

    assert result.score == 1.0, result.info
    assert result.info["passed"] == len(TESTS)


def test_results_of_every_plain_type_come_back_as_themselves(options):
    answer = """
        def values():
            return [None, True, 3, -2.5, float("inf"), "text", b"\\x00\\xff", (1, 2), {1, 2}, frozenset({3}),
                    {"a": [1], 2: (3,)}, 1 + 2j, 10 ** 40]
    """
    tests = [
        "got = values()\n"
        "assert got == [None, True, 3, -2.5, float('inf'), 'text', b'\\x00\\xff', (1, 2), {1, 2}, frozenset({3}),"
        " {'a': [1], 2: (3,)}, 1 + 2j, 10 ** 40]",
        "assert [type(v).__name__ for v in values()] == ['NoneType', 'bool', 'int', 'float', 'float', 'str', 'bytes',"
        " 'tuple', 'set', 'frozenset', 'dict', 'complex', 'int']",
    ]

    result = score_code("", textwrap.dedent(answer), tests, config=options)

    assert result.score == 1.0, result.info


def test_objects_of_the_program_can_be_used_but_not_compared(options):
    answer = """
        class Stack:
            def __init__(self):
                self.items = []
            def push(self, item):
                self.items.append(item)
            def pop(self):
                return self.items.pop()
        def counter(n):
            yield from range(n)
    """
    tests = [
        "s = Stack()\ns.push(1)\ns.push(2)\nassert s.pop() == 2 and s.items == [1]",
        "assert list(counter(3)) == [0, 1, 2]",
        "assert Stack() == Stack()",  # equality of the program's own objects is not the program's to decide
    ]

    result = score_code("", textwrap.dedent(answer), tests, config=options)

    assert [test["passed"] for test in result.info["tests"]] == [True, True, False]


def test_arguments_changed_in_place_are_seen_by_the_test(options):
    answer = "def sort_in_place(items):\n    items.sort()\n"
    tests = ["data = [3, 1, 2]\nsort_in_place(data)\nassert data == [1, 2, 3]"]

    assert score_code("", answer, tests, config=options).score == 1.0


def test_a_helper_the_tests_define_cannot_be_replaced_by_the_program(options):
    # HumanEval/32 style: the test checks the answer with a helper (poly) from the prompt
    answer = "def poly(xs, x):\n    return 0.0\ndef find_zero(xs):\n    return 123.0\n"
    tests = ["def poly(xs, x):\n    return sum(c * x ** i for i, c in enumerate(xs))\n"
             "assert abs(poly([-6, 1], find_zero([-6, 1]))) < 1e-6"]

    result = score_code("", answer, tests, config=options)

    assert result.score == 0.0
    right = "def find_zero(xs):\n    return -xs[0] / xs[1]\n"
    assert score_code("", right, tests, config=options).score == 1.0


def test_a_standard_module_the_tests_use_is_the_judges_own(options):
    answer = "import math\nmath.fabs = lambda x: 0.0\ndef root(x):\n    return 99.0\n"
    tests = ["assert math.fabs(root(4.0) - 2.0) < 1e-9"]

    assert score_code("", answer, tests, config=options).score == 0.0
