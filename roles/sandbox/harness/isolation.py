"""Phase 1 of the harness: the isolation layers, applied while still privileged.

`set_up` enters a new network namespace and a new mount namespace (private tmpfs over
the work directory and the world-writable directories), sets the rlimits, drops to
the run's own uid, sets no_new_privs, makes the judge undumpable and installs the
seccomp filter that keeps every process in its process group. Each layer the
machine refuses is left out and named in the report's ``notes``; the package
docstring (`roles.sandbox.harness`) has the phases and `roles.sandbox.runner` the
threat model. Standard library only.
"""

import ctypes
import os
import platform
import resource
import stat
import sys

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

