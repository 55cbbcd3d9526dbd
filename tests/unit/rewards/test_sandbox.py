"""The code sandbox contains hostile programs and scores them as failures.

Each attack program is also a wrong solution: whatever it tries, the score must be
0.0 and scored (not unscored), and its side effect must not happen. Checks that
depend on a layer the machine may refuse (network or mount namespace, privilege
drop) read the layer from the result's info; on a machine that runs as root with
CAP_SYS_ADMIN (this one and CI) every layer applies.
"""

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from pathlib import Path

import psutil
import pytest

import roles.rewards.code as code_reward
import roles.sandbox.reaping as reaping
from roles.rewards.code import CodeExecutionConfig, score_code, score_code_batch
from roles.sandbox.config import SandboxConfig
from roles.sandbox.harness.isolation import SESSION_SYSCALLS
from roles.sandbox.runner import run_in_sandbox

REPO_ROOT = Path(__file__).resolve().parents[3]
MARKER = f"troupe-sandbox-test-{uuid.uuid4().hex}"
ADD_TESTS = "assert add(1, 2) == 3\nassert add(-1, 1) == 0\nassert add(2, 2) == 4\n"
WRONG_ADD = "def add(a, b):\n    return a - b\n"
# Long enough that a program which ends by itself is never cut off on a loaded
# machine (2 cores shared with other test runs); attacks that loop forever get
# SHORT_TIME_LIMIT_S instead, so the suite does not wait on them.
TIME_LIMIT_S = 10.0
SHORT_TIME_LIMIT_S = 1.0


def is_alive(info):
    """Not a finished zombie. A zombie leader with threads left is alive (pthread_exit)."""
    return info["status"] != psutil.STATUS_ZOMBIE or (info["num_threads"] or 0) > 1


@pytest.fixture(autouse=True)
def uid_range():
    """A uid range of this test's own: the leftover check below must see only this
    test's sandboxes (another test session may run sandboxes on the machine meanwhile)."""
    low = 900_000_000 + secrets.randbelow(99_000) * 1000
    yield (low, low + 1000)
    assert psutil.Process().children(recursive=True) == []
    leftovers = []
    for process in psutil.process_iter(["uids", "cmdline", "status", "num_threads"]):
        if not is_alive(process.info) or process.info["uids"] is None:
            continue
        if low <= process.info["uids"].real < low + 1000 or MARKER in " ".join(process.info["cmdline"] or ()):
            leftovers.append(process.info)
    assert leftovers == []


@pytest.fixture
def sandbox(tmp_path, uid_range):
    return SandboxConfig(
        time_limit_s=TIME_LIMIT_S, memory_limit_mb=256, max_processes=8, root_dir=str(tmp_path), uid_range=uid_range
    )


@pytest.fixture
def options(sandbox):
    return CodeExecutionConfig(sandbox=sandbox)


@pytest.fixture
def short_options(sandbox):
    """For attacks that never end by themselves: they run into the wall clock."""
    return CodeExecutionConfig(sandbox=sandbox.model_copy(update={"time_limit_s": SHORT_TIME_LIMIT_S}))


def program(source: str) -> str:
    return textwrap.dedent(source).replace("MARKER", MARKER)


def assert_scored_as_failure(result):
    assert result.unscored is False
    assert result.score == 0.0


def test_correct_solution_scores_one_with_a_verdict_per_test(options):
    result = score_code("", "```python\ndef add(a, b):\n    return a + b\n```", ADD_TESTS, config=options)

    assert result.score == 1.0 and not result.unscored
    assert [test["passed"] for test in result.info["tests"]] == [True, True, True]
    assert (result.info["passed"], result.info["total"]) == (3, 3)


def test_partially_correct_solution_scores_the_fraction_passed(options):
    result = score_code("", "def add(a, b):\n    return abs(a) + b\n", ADD_TESTS, config=options)

    assert result.score == pytest.approx(2 / 3)
    assert [test["passed"] for test in result.info["tests"]] == [True, False, True]
    assert result.info["tests"][1]["error"] == "AssertionError"


def test_without_partial_credit_anything_short_of_all_tests_scores_zero(sandbox):
    options = CodeExecutionConfig(sandbox=sandbox, partial_credit=False)

    result = score_code("", "def add(a, b):\n    return abs(a) + b\n", ADD_TESTS, config=options)

    assert_scored_as_failure(result)
    assert result.info["passed"] == 2


def test_syntax_error_scores_zero(options):
    result = score_code("", "def add(a, b)\n    return a + b\n", ADD_TESTS, config=options)

    assert_scored_as_failure(result)
    assert "SyntaxError" in result.info["tests"][0]["error"]


def test_stdin_stdout_cases_pass_on_matching_output_and_fail_on_wrong_output(options):
    cases = [{"input": "1 2\n", "output": "3\n"}, {"input": "5 5\n", "output": "10"}, {"input": "0 7", "output": "8"}]
    response = "```python\na, b = map(int, input().split())\nprint(a + b)\n```"

    result = score_code("", response, cases, config=options)

    assert result.score == pytest.approx(2 / 3)
    assert [test["error"] for test in result.info["tests"]] == [None, None, "wrong answer"]


def test_stdin_program_that_ends_with_exit_passes_even_without_site_packages(sandbox):
    options = CodeExecutionConfig(sandbox=sandbox.model_copy(update={"site_packages": False}))

    response = "print(int(input()) * 2)\nexit()\nprint('unreachable')\n"

    result = score_code("", response, [{"input": "21", "output": "42"}], config=options)

    assert result.score == 1.0


def test_infinite_loop_is_killed_at_the_time_limit(short_options):
    started = time.monotonic()

    result = score_code("", WRONG_ADD + "while True:\n    pass\n", ADD_TESTS, config=short_options)

    assert_scored_as_failure(result)
    assert result.info["timed_out"] is True
    assert result.info["seconds"] >= SHORT_TIME_LIMIT_S
    assert time.monotonic() - started < 5


def test_ignoring_sigalrm_sigterm_and_sigxcpu_does_not_outlast_the_time_limit(short_options):
    attack = program(
        """
        import signal
        for name in ("SIGALRM", "SIGTERM", "SIGXCPU", "SIGINT"):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
        def add(a, b):
            return a + b
        while True:
            pass
        """
    )

    result = score_code("", attack, ADD_TESTS, config=short_options)

    assert_scored_as_failure(result)
    assert result.info["timed_out"] is True


def test_fork_bomb_is_contained_and_every_process_is_killed(short_options):
    attack = program(
        """
        import os
        def add(a, b):
            return a + b
        while True:
            try:
                os.fork()
            except OSError:
                pass
        """
    )

    result = score_code("", attack, ADD_TESTS, config=short_options)

    assert_scored_as_failure(result)
    # the uid_range fixture checks that none of the forks survived


def test_memory_bomb_hits_the_address_space_limit(options):
    attack = "def add(a, b):\n    return a + b\nblocks = []\nwhile True:\n    blocks.append(bytearray(32 << 20))\n"

    result = score_code("", attack, ADD_TESTS, config=options)

    assert_scored_as_failure(result)
    assert result.info["timed_out"] is False
    assert result.info["tests"][0]["error"] == "program failed: MemoryError"


def test_rlimits_are_applied_and_cap_file_size_and_open_files(sandbox):
    probe = program(
        """
        import errno, json, os, resource
        names = ("RLIMIT_CPU", "RLIMIT_AS", "RLIMIT_NPROC", "RLIMIT_FSIZE", "RLIMIT_NOFILE", "RLIMIT_CORE")
        limits = {name: resource.getrlimit(getattr(resource, name))[0] for name in names}
        handle = os.open("sparse", os.O_WRONLY | os.O_CREAT)
        try:
            os.pwrite(handle, b"x", limits["RLIMIT_FSIZE"])  # one byte past the limit
            past_file_size = "written"
        except OSError as error:
            past_file_size = errno.errorcode[error.errno]
        handles = []
        try:
            while True:
                handles.append(os.open("sparse", os.O_RDONLY))
        except OSError as error:
            too_many_files = errno.errorcode[error.errno]
        print(json.dumps({"limits": limits, "past_file_size": past_file_size, "too_many_files": too_many_files}))
        """
    )

    run = run_in_sandbox(probe, sandbox)

    assert run.completed and run.program_error is None
    report = json.loads(run.stdout)
    # CPU: the 10 s wall clock rounded up, plus one second; the rest from the fixture and the defaults
    expected = {"RLIMIT_CPU": 11, "RLIMIT_AS": 256 << 20, "RLIMIT_FSIZE": 16 << 20, "RLIMIT_NOFILE": 256}
    expected["RLIMIT_CORE"] = 0
    assert {name: report["limits"][name] for name in expected} == expected
    if run.privileges_dropped:  # a uid of its own: the process count starts from zero
        assert report["limits"]["RLIMIT_NPROC"] == 8
    assert (report["past_file_size"], report["too_many_files"]) == ("EFBIG", "EMFILE")


def test_sys_exit_before_the_asserts_does_not_skip_them(options):
    wrong = score_code("", WRONG_ADD + "import sys\nsys.exit(0)\n", ADD_TESTS, config=options)
    right = score_code("", "def add(a, b):\n    return a + b\nraise SystemExit\n", ADD_TESTS, config=options)

    assert_scored_as_failure(wrong)
    assert right.score == 1.0  # the asserts did run after the exit


def test_os_exit_before_the_asserts_fails_every_test(options):
    result = score_code("", WRONG_ADD + "import os\nos._exit(0)\n", ADD_TESTS, config=options)

    assert_scored_as_failure(result)
    assert result.info["tests"][0]["error"] == "program failed: no answer from the program: the program's process ended"


def test_wrappers_that_swallow_assertion_errors_do_not_hide_failures(short_options):
    attack = program(
        """
        import builtins, sys
        real_exec, real_compile = builtins.exec, builtins.compile
        def forgiving_exec(source, *args, **kwargs):
            try:
                real_exec(source, *args, **kwargs)
            except BaseException:
                pass
        builtins.exec = forgiving_exec
        builtins.compile = lambda *args, **kwargs: real_compile("pass", "<swallowed>", "exec")
        for module_name, harness in list(sys.modules.items()):
            if module_name == "__main__" or module_name.startswith("roles.sandbox"):
                for name, value in list(vars(harness).items()):
                    if callable(value) and not isinstance(value, type):
                        setattr(harness, name, lambda *args, **kwargs: None)
        sys.settrace = sys.setprofile = lambda *args: None
        sys.excepthook = lambda *args: None
        def add(a, b):
            return a - b
        """
    )

    result = score_code("", attack, ADD_TESTS, config=short_options)

    assert_scored_as_failure(result)
    # the tests run in the judge, which none of this reaches; the program's own server
    # loop may be broken by it (no answer, the process ended), which only costs it its answers
    assert not any(test["passed"] for test in result.info["tests"]), result.info


def test_printed_or_forged_verdicts_without_the_nonce_are_not_believed(options):
    attack = program(
        """
        import os
        def add(a, b):
            return a - b
        print("PASS 3/3")
        forged = b"0123456789abcdef0123456789abcdef 3\\nprogram ok\\npass\\npass\\npass"
        for fd in range(3, 64):
            try:
                os.write(fd, forged)
            except OSError:
                pass
        for name in ("verdict", "../verdict", "results"):
            try:
                with open(name, "wb") as handle:
                    handle.write(forged)
            except OSError:
                pass
        os._exit(0)
        """
    )

    result = score_code("", attack, ADD_TESTS, config=options)

    assert_scored_as_failure(result)


def test_a_child_that_reads_the_verdict_and_rewrites_it_cannot_sign_a_pass(options):
    """Between the harness's exit and the final SIGKILL a forked child can still run and
    can reopen the verdict file through /proc; it must find nothing to forge with."""
    attack = program(
        """
        import os
        def add(a, b):
            return a - b
        verdict_fd = next(fd for fd in range(3, 64) if os.path.exists(f"/proc/self/fd/{fd}")
                          and os.readlink(f"/proc/self/fd/{fd}").endswith("/verdict"))
        if os.fork() == 0:
            reader = os.open(f"/proc/self/fd/{verdict_fd}", os.O_RDONLY)
            while b"\\n" not in os.pread(reader, 4096, 0):
                pass
            written = os.pread(reader, 4096, 0)
            head, _, rest = written.partition(b"\\n")
            all_pass = head + b"\\nprogram ok\\npass\\npass\\npass"
            for forged in (all_pass, written.replace(b"fail AssertionError", b"pass")):
                for _ in range(20000):
                    os.pwrite(verdict_fd, forged, 0)
                    os.ftruncate(verdict_fd, len(forged))
            os._exit(0)
        """
    )

    result = score_code("", attack, ADD_TESTS, config=options)

    assert_scored_as_failure(result)


def test_os_system_and_setsid_cannot_leave_a_process_behind(options):
    attack = program(
        """
        import os, subprocess, sys
        def add(a, b):
            return a - b
        sleeper = [sys.executable, "-c", "import time; time.sleep(60)", "MARKER"]
        os.system(" ".join(sleeper[:2] + ["'import time; time.sleep(60)'", "MARKER", "&"]))
        subprocess.Popen(sleeper, start_new_session=True)
        """
    )

    result = score_code("", attack, ADD_TESTS, config=options)

    assert_scored_as_failure(result)
    # the uid_range fixture looks for MARKER in every command line


@pytest.mark.skipif(platform.machine() not in SESSION_SYSCALLS, reason="no seccomp syscall table for this machine")
@pytest.mark.parametrize(
    "call", ["os.setsid()", "os.setpgid(0, 0)", "subprocess.Popen(['true'], start_new_session=True)"]
)
def test_no_process_of_the_run_can_leave_its_process_group(sandbox, call):
    # in a child: the harness leads its session already, so it could not anyway
    attempt = program(
        f"""
        import os, subprocess
        child = os.fork()
        if child == 0:
            try:
                {call}
            except PermissionError:
                os._exit(1)
            os._exit(0)
        refused = os.waitstatus_to_exitcode(os.waitpid(child, 0)[1]) == 1
        print("refused" if refused else "left the group")
        """
    )

    run = run_in_sandbox(attempt, sandbox)

    assert run.completed and run.program_error is None
    assert run.stdout.strip() == "refused"


@pytest.mark.skipif(os.geteuid() != 0, reason="the uid sweep runs only for sandboxes started as root")
def test_uid_sweep_kills_a_process_whose_leader_thread_has_exited(uid_range):
    """Outside the process group (where seccomp is missing) only the uid sweep reaches a
    process, and a leader that called pthread_exit shows as a zombie while it runs on."""
    uid = uid_range[0]
    # started as root and dropped in-process, as the harness does: the interpreter may
    # sit where the sandbox uid cannot exec it (a 0700 /root)
    lingering = (
        "import ctypes, os, threading, time\n"
        f"os.setgroups([]); os.setresgid({uid}, {uid}, {uid}); os.setresuid({uid}, {uid}, {uid})\n"
        "threading.Thread(target=time.sleep, args=(60,)).start()\n"
        "ctypes.CDLL(None).pthread_exit(None)\n"
    )
    process = subprocess.Popen([sys.executable, "-c", lingering, MARKER], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while psutil.Process(process.pid).status() != psutil.STATUS_ZOMBIE:
            assert time.monotonic() < deadline, "the leader thread did not exit"
            time.sleep(0.01)
        assert psutil.Process(process.pid).num_threads() == 2  # the zombie leader and the sleeping thread

        reaping.kill_processes_of(uid)

        assert process.wait(timeout=5) == -signal.SIGKILL
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def test_reloading_os_gives_no_way_out(options, tmp_path):
    escaped = REPO_ROOT / f"{MARKER}-reload"
    attack = program(
        f"""
        import importlib, os
        importlib.reload(os)
        os.system("touch {escaped}")
        def add(a, b):
            return a - b
        """
    )

    try:
        result = score_code("", attack, ADD_TESTS, config=options)
        assert_scored_as_failure(result)
        if result.info["privileges_dropped"]:
            assert not escaped.exists()
    finally:
        escaped.unlink(missing_ok=True)


def test_writes_outside_the_work_directory_do_not_land(options):
    outside_tmp = Path("/tmp") / f"{MARKER}-tmp"
    outside_repo = REPO_ROOT / f"{MARKER}-repo"
    attack = program(
        f"""
        for path in ("{outside_tmp}", "{outside_repo}"):
            try:
                with open(path, "w") as handle:
                    handle.write("escaped")
            except OSError:
                pass
        def add(a, b):
            return a - b
        """
    )

    try:
        result = score_code("", attack, ADD_TESTS, config=options)
        assert_scored_as_failure(result)
        if result.info["filesystem_isolated"]:
            assert not outside_tmp.exists()
        if result.info["privileges_dropped"]:
            assert not outside_repo.exists()
    finally:
        outside_tmp.unlink(missing_ok=True)
        outside_repo.unlink(missing_ok=True)


def test_socket_to_a_listener_on_the_host_does_not_get_through(options):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        listener.setblocking(False)
        port = listener.getsockname()[1]
        attack = program(
            f"""
            import socket
            def add(a, b):
                return a - b
            try:
                socket.create_connection(("127.0.0.1", {port}), timeout=1).sendall(b"leak")
            except OSError:
                pass
            """
        )

        result = score_code("", attack, ADD_TESTS, config=options)

        assert_scored_as_failure(result)
        if result.info["network_isolated"]:
            with pytest.raises(BlockingIOError):
                listener.accept()


def test_parent_environment_is_not_visible(options, monkeypatch):
    monkeypatch.setenv("TROUPE_SANDBOX_SECRET", "hunter2")
    solution = program(
        """
        import os
        def parent_environment_leaks():
            try:
                with open(f"/proc/{os.getppid()}/environ", "rb") as handle:
                    return b"hunter2" in handle.read()
            except OSError:
                return False
        """
    )
    tests = [
        "assert 'TROUPE_SANDBOX_SECRET' not in os.environ",
        "assert os.environ['HOME'] == os.getcwd()",
        "assert not parent_environment_leaks()",
    ]

    result = score_code("", solution, tests, config=options)

    verdicts = [test["passed"] for test in result.info["tests"]]
    assert verdicts[:2] == [True, True]
    if result.info["privileges_dropped"]:
        assert verdicts[2] is True


def test_work_directory_is_private_and_removed_afterwards(sandbox, tmp_path):
    run = run_in_sandbox(
        "import os\nopen('left-behind.txt', 'w').write('x')\nprint(os.getcwd(), sorted(os.listdir('.')))",
        sandbox,
    )

    assert run.completed and run.program_error is None
    assert "left-behind.txt" in run.stdout
    assert list(tmp_path.iterdir()) == []


def test_sandbox_that_cannot_start_is_unscored_not_zero(sandbox, tmp_path):
    broken = sandbox.model_copy(update={"python_executable": str(tmp_path / "no-such-python")})

    result = score_code("", "def add(a, b):\n    return a + b\n", ADD_TESTS, config=CodeExecutionConfig(sandbox=broken))

    assert result.unscored is True
    assert result.score == 0.0
    assert "could not start" in result.info["infra_error"]


@pytest.mark.parametrize(
    ("change", "reasons"),
    [
        # exits at once: before or after the spec fits into the pipe
        ({"python_executable": shutil.which("true")}, ("did not read its spec", "exited during set-up")),
        ({"startup_timeout_s": 0.001}, ("did not come up",)),
    ],
)
def test_sandbox_that_dies_or_stalls_while_starting_is_unscored(sandbox, change, reasons):
    stalled = sandbox.model_copy(update=change)
    options = CodeExecutionConfig(sandbox=stalled)

    result = score_code("", "def add(a, b):\n    return a + b\n", ADD_TESTS, config=options)

    assert result.unscored is True
    assert any(reason in result.info["infra_error"] for reason in reasons)


def test_batch_runs_at_most_max_concurrent_sandboxes_at_once(sandbox, monkeypatch):
    running, peak, lock = 0, 0, threading.Lock()
    real_run_with_tests = code_reward.run_with_tests

    def counting_run_with_tests(*args, **kwargs):
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
        try:
            return real_run_with_tests(*args, **kwargs)
        finally:
            with lock:
                running -= 1

    monkeypatch.setattr(code_reward, "run_with_tests", counting_run_with_tests)
    responses = ["import time\ntime.sleep(0.3)\ndef add(a, b):\n    return a + b\n"] * 6

    options = CodeExecutionConfig(sandbox=sandbox, max_concurrent=2)

    results = score_code_batch([""] * 6, responses, [ADD_TESTS] * 6, options)

    assert [result.score for result in results] == [1.0] * 6
    assert peak == 2


def test_isolation_layers_are_reported(options):
    result = score_code("", "def add(a, b):\n    return a + b\n", ADD_TESTS, config=options)

    if os.geteuid() == 0 and sys.platform == "linux":
        assert result.info["privileges_dropped"] is True
    for layer in ("network_isolated", "filesystem_isolated", "privileges_dropped"):
        assert isinstance(result.info[layer], bool)
