"""The launcher and test harness that run inside the code sandbox.

`roles/rewards/sandbox.py` starts this file as ``python -I -S sandbox_harness.py
SPEC_FD STATUS_FD`` in a new session, with a scrubbed environment, as root or as the
current user. One process, three phases:

1. Set-up (trusted, possibly root): read the run's spec (role, program or tests,
   nonce, limits, descriptors) from the SPEC_FD pipe and close it; enter a new
   network namespace; enter a new mount namespace with private tmpfs mounts over the
   work directory and the world-writable directories; set the rlimits; drop to the
   run's own uid; forbid leaving the process group (seccomp).
2. Report: write which isolation took effect to STATUS_FD and close it. A run whose
   report never arrives is the sandbox's failure, never the program's.
3. The role's work. Three roles:

   * ``program``: run the untrusted program (stdin/stdout cases) and write a verdict,
     authenticated with an HMAC keyed by the nonce, to its verdict descriptor. The
     parent compares the output; the verdict only says the program ended normally.
   * ``candidate``: run the untrusted program, then serve the judge's requests over
     two pipes: call this function, read that attribute, with arguments and results
     that travel as plain values (`encode`). Everything in this process is the
     program's to tamper with, and nothing in it decides a verdict.
   * ``judge``: run the trusted test code, in a process of its own (its own uid when
     started as root, never dumpable, so the candidate can neither signal, trace nor
     read it). Names the tests take from the program are remote references; what
     comes back from the candidate is rebuilt from plain data by this process (an
     exact type per value: never the candidate's objects, so never its ``__eq__``,
     ``__hash__`` or ``__bool__``), and the comparisons of the test run here. The
     expected values never leave this process. It writes the signed verdict.

   The exit status is never read. The nonce is never written anywhere: a process of
   the run may read a verdict (reopening ``/proc/self/fd/N``) between the harness's
   exit and the final SIGKILL, and must learn nothing it could sign another with.

Why one process per role: after the privilege drop nothing is exec'd, so the
interpreter is never re-read from a directory the sandbox uid cannot traverse, and
nothing can be swapped in between the phases. Why ``-I -S``: no environment
variable, user site or ``.pth`` file runs code while the process is still
privileged; site-packages are added after the drop when the spec asks for them.

Standard library only: this file runs before anything else is importable.
"""

import base64
import builtins
import ctypes
import json
import os
import platform
import resource
import select
import stat
import struct
import sys
import time
import traceback

try:
    from _hashlib import hmac_digest as _hmac_digest  # C code: nothing the program can patch
except ImportError:  # a Python built without OpenSSL
    from hmac import digest as _hmac_digest

CLONE_NEWNS = 0x00020000
CLONE_NEWNET = 0x40000000
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_BIND = 0x1000
MS_REC = 0x4000
MS_PRIVATE = 0x40000
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000
EPERM = 1
# (audit arch of struct seccomp_data, syscall numbers of setsid and setpgid) per machine
SESSION_SYSCALLS = {"x86_64": (0xC000003E, 112, 109), "aarch64": (0xC00000B7, 157, 154)}
X32_SYSCALL_BIT = 0x40000000
# Directories any user may write to on common distributions. Each gets a private
# tmpfs, so nothing the program writes there is seen by, or outlives, the sandbox.
SHARED_WRITABLE_DIRS = ("/tmp", "/var/tmp", "/dev/shm", "/run/lock")
ERROR_TEXT_LIMIT = 300
MESSAGE_LIMIT_BYTES = 16 << 20
"""Largest request or reply between the judge and the candidate."""
VALUE_DEPTH_LIMIT = 64
TIME_LIMIT_TEXT = "time limit exceeded"
"""What the judge writes for a program or test that ran out of time (the parent reads it)."""

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p]
_libc.unshare.argtypes = [ctypes.c_int]
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]


def _check(result: int, what: str) -> None:
    if result != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"{what}: {os.strerror(errno)}")


def _mount(source, target, fstype, flags, options=None) -> None:
    def encode(text):
        return None if text is None else text.encode()

    _check(_libc.mount(encode(source), encode(target), encode(fstype), flags, encode(options)), f"mount {target}")


def _try_unshare(flag: int, name: str, notes: list) -> bool:
    try:
        _check(_libc.unshare(flag), f"unshare({name})")
    except OSError as error:
        # Expected without CAP_SYS_ADMIN (rootless containers, CI runners as a user):
        # run without this layer and say so in the report.
        notes.append(str(error))
        return False
    return True


def _is_within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _first_untraversable_ancestor(path: str):
    """The outermost directory above ``path`` that other users cannot enter (``/root``
    for an interpreter under ``/root/.pyenv``), or None."""
    current = ""
    for part in path.strip("/").split("/")[:-1]:
        current += "/" + part
        if not os.stat(current).st_mode & stat.S_IXOTH:
            return current
    return None


def _cover_with_tmpfs(target: str, options: str, keep: list) -> None:
    """Mount a fresh tmpfs over ``target``, then bind each ``keep`` path back in place."""
    handles = [os.open(path, os.O_PATH) for path in keep]  # still reachable once hidden
    try:
        _mount("tmpfs", target, "tmpfs", MS_NOSUID | MS_NODEV, options)
        for path, handle in zip(keep, handles):
            os.makedirs(path, exist_ok=True)
            _mount(f"/proc/self/fd/{handle}", path, None, MS_BIND | MS_REC)
    finally:
        for handle in handles:
            os.close(handle)


def isolate_filesystem(work_dir: str, read_paths: list, owner: tuple, size_bytes: int) -> None:
    """In a new mount namespace: private tmpfs over the world-writable directories and
    over ``work_dir``; directories that hide ``read_paths`` from other users (the
    interpreter under a 0700 home) are covered too, with ``read_paths`` bound back."""
    # Without this, mounts below would propagate into the host's namespace.
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    covers = {}
    for directory in SHARED_WRITABLE_DIRS:
        if os.path.isdir(directory) and not os.path.islink(directory):
            if os.stat(directory).st_mode & stat.S_IWOTH:
                covers[directory] = "1777"
    for path in read_paths:
        blocker = _first_untraversable_ancestor(path)
        if blocker is not None and blocker not in covers:
            covers[blocker] = "0755"
    covered = []
    for target in sorted(covers):
        if any(_is_within(target, outer) for outer in covered):
            continue  # inside a tmpfs already mounted: its paths were rebuilt there
        keep = [path for path in read_paths if _is_within(path, target)]
        _cover_with_tmpfs(target, f"size={size_bytes},mode={covers[target]}", keep)
        covered.append(target)
    os.makedirs(work_dir, exist_ok=True)
    uid, gid = owner
    _mount("tmpfs", work_dir, "tmpfs", MS_NOSUID | MS_NODEV, f"size={size_bytes},mode=0700,uid={uid},gid={gid}")
    os.chdir(work_dir)  # the old cwd is the directory underneath the new tmpfs


def _threads_owned_by(uid: int) -> int:
    count = 0
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status", encoding="ascii", errors="replace") as status:
                fields = dict(line.split(":", 1) for line in status if ":" in line)
        except OSError:
            continue  # the process exited while we looked
        if int(fields["Uid"].split()[0]) == uid:
            count += int(fields["Threads"])
    return count


def apply_limits(limits: dict, own_uid: bool) -> None:
    """Set the rlimits. RLIMIT_NPROC counts every thread of the real uid: with a uid of
    its own the sandbox starts from one; sharing the caller's uid, from the caller's count."""
    limits = dict(limits)
    if not own_uid:
        limits["RLIMIT_NPROC"] += _threads_owned_by(os.getuid())
    for name, value in limits.items():
        # One second between the soft CPU limit (SIGXCPU, which a program may ignore)
        # and the hard one (SIGKILL).
        hard = value + 1 if name == "RLIMIT_CPU" else value
        resource.setrlimit(getattr(resource, name), (value, hard))


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(_SockFilter))]


def forbid_leaving_the_process_group(notes: list) -> bool:
    """Make setsid and setpgid fail with EPERM in this process and all it starts.

    The wall clock ends a run with SIGKILL to its process group; a process that
    moved to a new session or group would survive that (as root the uid sweep still
    finds it, as a normal user nothing would). Needs no_new_privs, not root. Syscalls
    of another ABI (i386, x32), through which the numbers differ, are all refused.
    """
    # A 32-bit interpreter on a 64-bit kernel makes only syscalls this filter refuses.
    is_64_bit_process = ctypes.sizeof(ctypes.c_void_p) == 8
    numbers = SESSION_SYSCALLS.get(platform.machine()) if is_64_bit_process else None
    if numbers is None:
        notes.append(f"seccomp: no syscall table for this {platform.machine()} interpreter; setsid is allowed")
        return False
    audit_arch, setsid, setpgid = numbers
    load_word, jump_if_equal, jump_if_at_least, return_value = 0x20, 0x15, 0x35, 0x06
    deny = SECCOMP_RET_ERRNO | EPERM
    program = [
        (load_word, 0, 0, 4),  # seccomp_data.arch
        (jump_if_equal, 1, 0, audit_arch),
        (return_value, 0, 0, deny),
        (load_word, 0, 0, 0),  # seccomp_data.nr
        (jump_if_at_least, 3, 0, X32_SYSCALL_BIT),
        (jump_if_equal, 2, 0, setsid),
        (jump_if_equal, 1, 0, setpgid),
        (return_value, 0, 0, SECCOMP_RET_ALLOW),
        (return_value, 0, 0, deny),
    ]
    filters = (_SockFilter * len(program))(*(_SockFilter(*instruction) for instruction in program))
    fprog = _SockFprog(len(program), filters)
    try:
        _check(_libc.prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")
    except OSError as error:
        # A kernel built without seccomp: run without this layer and say so in the report.
        notes.append(str(error))
        return False
    return True


def drop_privileges(uid: int, gid: int) -> None:
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)


def set_up(spec: dict) -> dict:
    """Apply every isolation layer the machine permits; return what took effect."""
    os.umask(0o022)
    notes = []
    report = {"network_isolated": False, "filesystem_isolated": False, "privileges_dropped": False}
    report["network_isolated"] = _try_unshare(CLONE_NEWNET, "CLONE_NEWNET", notes)
    uid, gid = (spec["uid"], spec["gid"]) if spec["uid"] is not None else (os.getuid(), os.getgid())
    if _try_unshare(CLONE_NEWNS, "CLONE_NEWNS", notes):
        read_paths = sorted({os.path.realpath(path) for path in _interpreter_paths() if os.path.isdir(path)})
        isolate_filesystem(spec["work_dir"], read_paths, (uid, gid), spec["tmpfs_bytes"])
        report["filesystem_isolated"] = True
    apply_limits(spec["limits"], own_uid=spec["uid"] is not None)
    if spec["uid"] is not None:
        drop_privileges(uid, gid)
        report["privileges_dropped"] = True
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")
    if spec["role"] == "judge":
        # Not dumpable: no process of the same uid may trace it or read its memory or
        # descriptors through /proc (when not started as root, the candidate shares its uid).
        _check(_libc.prctl(PR_SET_DUMPABLE, 0, 0, 0, 0), "prctl(PR_SET_DUMPABLE)")
    forbid_leaving_the_process_group(notes)
    stdlib = os.path.dirname(os.__file__)
    if not os.access(stdlib, os.R_OK | os.X_OK):
        raise PermissionError(
            f"the standard library {stdlib} is not readable by uid {os.getuid()}: "
            "install Python in a world-readable place or set python_executable"
        )
    import site  # under -S importing it runs nothing

    if spec["site_packages"]:
        site.main()
    else:
        site.setquit()  # exit() and quit(), which many programs end with
    report["notes"] = notes
    return report


def _interpreter_paths() -> list:
    executable_dir = os.path.dirname(os.path.abspath(sys.executable))
    return [sys.base_prefix, sys.base_exec_prefix, sys.prefix, sys.exec_prefix, os.path.dirname(executable_dir)]


def _describe(error: BaseException) -> str:
    try:
        message = str(error)
        text = type(error).__name__ + (f": {message}" if message else "")
    except BaseException:  # an exception's __str__ is program code and may raise anything
        text = "an exception that could not be printed"
    return text.replace("\n", " ")[:ERROR_TEXT_LIMIT]


def _bound_names():
    """What the untrusted-code roles use once the program has started, bound before it
    starts: the program can replace builtins, module attributes (os.write, sys.settrace)
    and this module's globals, but not the locals of a running frame."""
    return {
        "run": exec, "compile": compile, "exit": os._exit, "write": os.write, "seek": os.lseek,
        "truncate": os.ftruncate, "settrace": sys.settrace, "setprofile": sys.setprofile,
        "BaseException": BaseException, "SystemExit": SystemExit, "describe": _describe,
        "type": type, "int": int, "len": len, "sign": _hmac_digest, "hex": bytes.hex,
    }


def _execute_program(program: str, module_name: str, bound: dict):
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


def _write_verdict(lines: list, key: bytes, verdict_fd: int, bound: dict) -> None:
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
    bound = _bound_names()
    stdout = sys.stdout
    _, program_error = _execute_program(program, module_name, bound)
    try:
        stdout.flush()
    except bound["BaseException"]:
        pass  # the program closed or broke its stdout: that shows up as its output
    lines = ["0", "program ok" if program_error is None else "program error " + program_error]
    _write_verdict(lines, nonce.encode(), verdict_fd, bound)
    bound["exit"](0)


# ---------------------------------------------------------------- plain values
# A value crossing between the candidate and the judge is JSON: None, bools, ints,
# floats (NaN and infinities as JSON's extensions), strings and lists as themselves;
# everything else a one-key object: {"tuple": [...]}, {"set": [...]},
# {"frozenset": [...]}, {"dict": [[key, value], ...]}, {"bytes": base64},
# {"complex": [real, imaginary]}, and {"ref": n} for an object the candidate keeps
# (anything whose type is not exactly one of these: its class, a function, an
# instance with an __eq__ of its own). The judge rebuilds values with its own types.

_PLAIN_SCALARS = (type(None), bool, int, float, str)


def encode(value, refs: list, depth: int = 0):
    """The candidate side: ``value`` as plain data, objects as references into ``refs``."""
    kind = type(value)
    if depth > VALUE_DEPTH_LIMIT:
        raise ValueError("value nested too deeply to send")
    if kind in _PLAIN_SCALARS:
        return value
    if kind is list:
        return [encode(item, refs, depth + 1) for item in value]
    if kind in (tuple, set, frozenset):
        return {kind.__name__: [encode(item, refs, depth + 1) for item in value]}
    if kind is dict:
        return {"dict": [[encode(k, refs, depth + 1), encode(v, refs, depth + 1)] for k, v in value.items()]}
    if kind is bytes:
        return {"bytes": base64.b64encode(value).decode("ascii")}
    if kind is complex:
        return {"complex": [value.real, value.imag]}
    refs.append(value)
    return {"ref": len(refs) - 1}


class RemoteError(Exception):
    """The candidate's code raised while the judge called it (the text is the candidate's)."""


class ChannelBroken(Exception):
    """The candidate stopped answering, answered garbage, or ran out of time."""


def decode(data, make_ref, depth: int = 0):
    """The judge side: rebuild a value from plain data with this process's own types."""
    if depth > VALUE_DEPTH_LIMIT:
        raise ChannelBroken("a value nested too deeply")
    kind = type(data)
    if kind in _PLAIN_SCALARS:
        return data
    if kind is list:
        return [decode(item, make_ref, depth + 1) for item in data]
    if kind is not dict or len(data) != 1:
        raise ChannelBroken(f"not a value: {kind.__name__}")
    (tag, body), = data.items()
    if tag in ("tuple", "set", "frozenset") and type(body) is list:
        items = [decode(item, make_ref, depth + 1) for item in body]
        try:
            return {"tuple": tuple, "set": set, "frozenset": frozenset}[tag](items)
        except TypeError as error:  # an unhashable item in a set: not a value that exists
            raise ChannelBroken(f"a {tag} of unhashable items") from error
    if tag == "dict" and type(body) is list:
        pairs = [decode(pair, make_ref, depth + 1) for pair in body]
        if not all(type(pair) is list and len(pair) == 2 for pair in pairs):
            raise ChannelBroken("a dict entry is not a pair")
        try:
            return {key: value for key, value in pairs}
        except TypeError as error:
            raise ChannelBroken("a dict with an unhashable key") from error
    if tag == "bytes" and type(body) is str:
        return base64.b64decode(body.encode("ascii"), validate=True)
    if tag == "complex" and type(body) is list and len(body) == 2 and all(type(x) in (int, float) for x in body):
        return complex(body[0], body[1])
    if tag == "ref" and type(body) is int:
        return make_ref(body)
    raise ChannelBroken(f"not a value: {{{tag!r}: ...}}")


def _send(fd: int, message: dict, deadline=None) -> None:
    data = json.dumps(message).encode()
    data = struct.pack(">I", len(data)) + data
    while data:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0 or not select.select([], [fd], [], remaining)[1]:
                raise ChannelBroken(TIME_LIMIT_TEXT)
        try:
            data = data[os.write(fd, data):]
        except OSError as error:
            raise ChannelBroken(f"the channel closed: {error.strerror}") from error


def _receive(fd: int, deadline=None) -> dict:
    def read_exactly(count: int) -> bytes:
        chunks, left = [], count
        while left:
            if deadline is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0 or not select.select([fd], [], [], remaining)[0]:
                    raise ChannelBroken(TIME_LIMIT_TEXT)
            try:
                chunk = os.read(fd, min(left, 1 << 20))
            except OSError as error:
                raise ChannelBroken(f"the channel closed: {error.strerror}") from error
            if not chunk:
                raise ChannelBroken("the program's process ended")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    (size,) = struct.unpack(">I", read_exactly(4))
    if size > MESSAGE_LIMIT_BYTES:
        raise ChannelBroken(f"a message of {size} bytes (limit {MESSAGE_LIMIT_BYTES})")
    try:
        message = json.loads(read_exactly(size))
    except ValueError as error:
        raise ChannelBroken("a message that is not JSON") from error
    if type(message) is not dict:
        raise ChannelBroken("a message that is not an object")
    return message


# ---------------------------------------------------------------- the candidate
def serve_candidate(program: str, module_name: str, requests_fd: int, replies_fd: int) -> None:
    """The ``candidate`` role: run the program, say so, then answer requests until the
    judge closes its end. Nothing here is trusted: the judge believes only plain data."""
    namespace, program_error = _execute_program(program, module_name, _bound_names())
    refs: list = []
    names = {name: value for name, value in namespace.items() if not name.startswith("__")}
    try:
        _send(replies_fd, {"ready": True, "program_error": program_error, "names": encode(names, refs)})
        while True:
            request = _receive(requests_fd)
            _send(replies_fd, {**_answer(request, refs), "id": request.get("id")})
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
        return {"error": _describe(error)}


# ---------------------------------------------------------------- the judge
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
            _send(self.requests_fd, {**message, "id": self.sent}, self.deadline)
            reply = _receive(self.replies_fd, self.deadline)
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
        ready = _receive(replies_fd, channel.deadline)
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
                outcomes.append("fail " + _describe(error))
            else:
                outcomes.append("pass")
    lines = [str(len(tests)), "program ok" if program_error is None else "program error " + program_error, *outcomes]
    _write_verdict(lines, nonce.encode(), verdict_fd, _bound_names())
    os._exit(0)


def main() -> None:
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


if __name__ == "__main__":
    main()
