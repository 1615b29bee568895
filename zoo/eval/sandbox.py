"""The sandbox that code-generation tasks (:mod:`zoo.eval.code`) run each program in (:func:`run_program`).

Generated code is untrusted, so it never runs in the evaluating process: each program is a ``sys.executable -I``
subprocess (isolated mode: no ``PYTHON*`` variables, no user site, no script directory on ``sys.path``) in a
fresh temporary directory as cwd, with a minimal environment (no proxies, no tokens) and stdin closed.

Containment is bubblewrap's (``bwrap``, Linux; package ``bubblewrap``): the program runs in its own user,
network, PID, mount, IPC, UTS and cgroup namespaces, with every capability dropped and an unprivileged uid (65534)
inside:

* files: its root is empty but for ``/usr`` (with the ``/bin``, ``/lib`` links), the interpreter's own prefix
  and the virtual environment, all read-only, a private ``/proc`` and a minimal ``/dev``; its working directory
  is a private tmpfs of ``dir_bytes`` (64 MiB) in all, the only writable path (the program and the runner are
  bound into it read-only). The evaluating user's home, ``/etc``, ``/tmp`` and every other file are not there to
  read or to write, and the files a program writes together cannot exceed ``dir_bytes``;
* network: a network namespace of its own holds only a loopback interface; nothing outside it can be reached
  (a server on the host's 127.0.0.1 is not the program's 127.0.0.1);
* processes: in its PID namespace it sees and can signal only its own processes; ``--die-with-parent`` and the
  namespace's init make every process it started die with the run, even one that left the process group.

**No sandbox, no run.** Whether namespaces work is checked once per ``bwrap`` binary (an empty program run under
it; ``$ZOO_BWRAP`` names another binary than the ``bwrap`` on ``PATH``). Where they do not (no ``bwrap``,
unprivileged user namespaces disabled, a container that forbids them), :func:`run_program` raises
:class:`SandboxUnavailableError` naming the reason and the install line, and runs nothing; only
``unsafe_no_sandbox=True`` (``zoo eval --unsafe-no-sandbox``) runs programs without namespaces, after a warning.
What then remains are the guards below, which stop accidents of generated code, not an adversary.

The guards, inside the namespaces as well as without them:

* hangs: a wall-clock deadline, then SIGKILL to the whole process group (``start_new_session=True`` makes the
  program the leader of its own); RLIMIT_CPU (timeout + 1 s) as a second stop for a busy loop;
* leftovers: the group is killed after a normal exit too, before the leader is reaped (so its id cannot have
  been reused), and the run waits (up to 2 s) until none of it is running; output goes to a file, not a pipe,
  so a child holding the output open cannot keep the run waiting;
* memory: RLIMIT_AS (default 1 GiB): a large allocation is a MemoryError in the program, not the machine's OOM;
* output and files: RLIMIT_FSIZE bounds every single file the program writes (its output included; only the tail
  of the output is read back); RLIMIT_CORE 0: no core dumps;
* fork bombs: RLIMIT_NPROC, and a prelude that runs before the program and replaces ``os.fork``, ``os.system``,
  ``os.exec*``, ``os.spawn*``, ``os.posix_spawn``, ``subprocess.Popen``, ``os.kill``, ``os.setsid`` (which
  would leave the group), ``os._exit``, ``os.remove``/``rmdir``/``rename``/``chmod``/``chdir``…,
  ``shutil.rmtree``/``move`` with functions that raise, in both ``os`` and ``posix``; ``ctypes`` cannot be
  imported; ``socket.socket`` (and ``_socket.socket``, ``socketpair``, ``fromfd``) raise PermissionError;
* ``sys.exit()`` / ``exit()`` before the tests finish is a failure (it would otherwise skip the asserts).

The prelude is not containment: it lives in the program's own interpreter, which the program can undo (``del
sys.modules["ctypes"]`` and import it again, reload a builtin module). Without namespaces (the opt-in) a program
can read every file the evaluating user can read (secrets in ``$HOME``, ``/proc/<pid>/environ``), write any path
it names, fill the disk (the size limit is per file), reach the network, signal the evaluator, leave a child
behind that called ``setsid``, and RLIMIT_NPROC does not apply to root. Neither mode caps root's process count
(no cgroup) nor filters system calls (no seccomp). The limits are set by a ``preexec_fn`` (between fork and exec,
only ``setrlimit`` calls), which CPython documents as not safe with threads in the parent; it is kept to system
calls.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from zoo.errors import ZooError

_DISABLED = {
    "os": "fork forkpty system popen execl execle execlp execlpe execv execve execvp execvpe spawnl spawnle spawnlp "
    "spawnlpe spawnv spawnve spawnvp spawnvpe posix_spawn posix_spawnp kill killpg setsid setpgid setpgrp _exit "
    "remove unlink rmdir removedirs rename renames replace truncate ftruncate chmod fchmod lchmod "
    "chown fchown lchown chroot chdir fchdir link symlink mknod",
    "shutil": "rmtree move chown",
    "subprocess": "Popen call run check_call check_output getoutput getstatusoutput",
    "_posixsubprocess": "fork_exec",
    "socket": "socketpair fromfd create_connection create_server",
    "_socket": "socketpair",
}
GUARD = f"""\
import os, posix, shutil, socket, _socket, subprocess, _posixsubprocess, sys

def _refuse(name):
    def refused(*args, **kwargs):
        raise PermissionError(name + " is disabled in the code-evaluation sandbox")
    return refused

for _module_name, _names in {_DISABLED!r}.items():
    for _module in ([os, posix] if _module_name == "os" else [sys.modules[_module_name]]):
        for _name in _names.split():
            if hasattr(_module, _name):
                setattr(_module, _name, _refuse(_module_name + "." + _name))

class _NoSocket(socket.socket):  # a subclass, so that modules subclassing socket.socket (ssl) still import
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the code-evaluation sandbox")

class _NoRawSocket(_socket.socket):
    def __init__(self, *args, **kwargs):
        raise PermissionError("network access is disabled in the code-evaluation sandbox")

socket.socket, _socket.socket = _NoSocket, _NoRawSocket
sys.modules["ctypes"] = sys.modules["_ctypes"] = None
"""
RUNNER = """\
import builtins, sys
with open("program.py", encoding="utf-8") as _file:
    _code = compile(_file.read(), "program.py", "exec")
try:
    exec(_code, {"__name__": "program", "__builtins__": builtins})  # as the harnesses: no __main__ blocks
except SystemExit as _exit:
    sys.stderr.write(f"SystemExit({_exit.code!r}) before the tests finished\\n")
    raise SystemExit(3) from None
"""


@dataclass(frozen=True)
class Result:
    """One program's run. ``status``: ``passed``, ``failed`` (an exception, an assert, a signal), ``timeout``
    or ``error`` (the sandbox could not run it); ``message``: a short reason; ``output``: the tail of its stdout
    and stderr; ``pid``: its process (and process group) id."""

    passed: bool
    status: str
    message: str = ""
    output: str = ""
    pid: int | None = None


def _limits(*, timeout: float, memory_bytes: int, file_bytes: int, processes: int):
    import resource

    cpu = math.ceil(timeout) + 1
    wanted = {resource.RLIMIT_AS: memory_bytes, resource.RLIMIT_CPU: cpu, resource.RLIMIT_FSIZE: file_bytes,
              resource.RLIMIT_CORE: 0, resource.RLIMIT_NPROC: processes}  # fmt: skip
    limits = []
    for which, value in wanted.items():
        hard = resource.getrlimit(which)[1]  # a limit can only be lowered without privileges
        infinite = hard == resource.RLIM_INFINITY
        value = value if infinite else min(value, hard)
        # CPU: SIGXCPU at the soft limit, SIGKILL one second later at the hard one
        top = value + 1 if which == resource.RLIMIT_CPU and (infinite or value < hard) else value
        limits.append((which, (value, top)))

    def preexec() -> None:  # runs in the child between fork and exec: keep it to system calls
        for which, soft_hard in limits:
            resource.setrlimit(which, soft_hard)

    return preexec


SANDBOX_UID = 65534  # the program's uid and gid inside its user namespace ("nobody")
BWRAP_ENV = "ZOO_BWRAP"  # the bubblewrap binary to use instead of the `bwrap` on PATH
INSTALL = (
    "install bubblewrap (Debian/Ubuntu: apt-get install bubblewrap; Fedora/RHEL: dnf install bubblewrap; Arch: "
    "pacman -S bubblewrap) on a Linux machine that allows unprivileged user namespaces"
)
UNSAFE = (
    "a program can then read every file you can (keys in $HOME, your processes' environments), write and fill any "
    "path, reach the network and signal your processes"
)


class SandboxUnavailableError(ZooError, ValueError):
    """Generated code would run without namespace isolation (no usable ``bwrap``) and the user did not opt in."""


_probe_lock = threading.Lock()
_probed: dict[str, str | None] = {}  # bwrap binary -> None where namespaces work, else why not
_warned: set[str] = set()


def _python_paths() -> list[str]:
    """The interpreter's prefixes (the virtual environment and the Python it was made from), as the interpreter
    names them and with symlinks resolved, outside ``/usr`` (bound anyway), outermost first."""
    paths = set()
    for prefix in (sys.prefix, sys.exec_prefix, sys.base_prefix, sys.base_exec_prefix):
        paths.update({os.path.abspath(prefix), os.path.realpath(prefix)})
    paths = sorted(p for p in paths if p != "/" and p != "/usr" and not p.startswith("/usr/"))
    return [p for p in paths if not any(p.startswith(q + "/") for q in paths)]


def _isolation_args(bwrap: str, host_dir: str, *, dir_bytes: int, files: Sequence[str] = ()) -> list[str]:
    """``bwrap`` and its arguments for a program whose working directory is a private tmpfs of ``dir_bytes`` at
    the path of ``host_dir``, with ``files`` of ``host_dir`` bound into it read-only (module docstring: only the
    interpreter, its libraries and that directory are visible; nothing but the directory is writable)."""
    args = [bwrap, "--unshare-all", "--die-with-parent", "--cap-drop", "ALL",
            "--uid", str(SANDBOX_UID), "--gid", str(SANDBOX_UID), "--ro-bind", "/usr", "/usr"]  # fmt: skip
    for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32"):  # merged /usr: links into it
        if os.path.islink(top):
            args += ["--symlink", os.readlink(top), top]
        elif os.path.isdir(top):
            args += ["--ro-bind", top, top]
    for path in _python_paths():
        args += ["--ro-bind", path, path]
    # the working directory: a tmpfs whose size bounds everything the program writes together (RLIMIT_FSIZE bounds
    # each file only); bind sources are read from the host's tree, so the files reach the tmpfs that hides it
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(dir_bytes), "--tmpfs", host_dir]
    for name in files:
        path = os.path.join(host_dir, name)
        args += ["--ro-bind", path, path]
    args += ["--chdir", host_dir]
    return [*args, "--remount-ro", "/dev", "--remount-ro", "/"]  # the (private) root and /dev too


def find_bwrap() -> str:
    """The bubblewrap binary: ``$ZOO_BWRAP`` when set, else ``bwrap`` on ``PATH`` (the name alone when absent)."""
    return os.environ.get(BWRAP_ENV) or shutil.which("bwrap") or "bwrap"


def sandbox_problem(bwrap: str | None = None) -> str | None:
    """Why programs cannot run in namespaces here (``None`` where they can), for the ``bwrap`` binary (default:
    :func:`find_bwrap`). Tried once per binary and process, by running an empty program under it."""
    bwrap = bwrap or find_bwrap()
    with _probe_lock:
        if bwrap not in _probed:
            _probed[bwrap] = _probe(bwrap)
    return _probed[bwrap]


def namespaces_available(bwrap: str | None = None) -> bool:
    """Whether programs run in namespaces here (see the module docstring and :func:`sandbox_problem`)."""
    return sandbox_problem(bwrap) is None


def _probe(bwrap: str) -> str | None:
    found = shutil.which(bwrap)
    if found is None:
        where = f"${BWRAP_ENV}={bwrap} is" if os.environ.get(BWRAP_ENV) == bwrap else "bubblewrap (bwrap) is"
        return f"{where} not installed"
    with tempfile.TemporaryDirectory(prefix="zoo-code-") as cwd:
        try:
            probe = subprocess.run([*_isolation_args(found, cwd, dir_bytes=2**20), sys.executable, "-I", "-c", "pass"],
                                   stdin=subprocess.DEVNULL, capture_output=True, timeout=60)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            return f"{found} could not be run ({type(err).__name__}: {err})"
    if probe.returncode == 0:
        return None
    message = " ".join(probe.stderr.decode("utf-8", "replace").split())[-300:]
    return f"{found} could not create namespaces here (exit status {probe.returncode}: {message})"


def require_sandbox(*, unsafe_no_sandbox: bool = False, bwrap: str | None = None) -> str | None:
    """The ``bwrap`` binary that contains programs here; where none works, :class:`SandboxUnavailableError` (the
    reason and the install line), or with ``unsafe_no_sandbox`` ``None`` after one warning of what is then not
    contained."""
    bwrap = bwrap or find_bwrap()
    why = sandbox_problem(bwrap)
    if why is None:
        return shutil.which(bwrap)
    if not unsafe_no_sandbox:
        raise SandboxUnavailableError(
            f"code sandbox: {why}, so generated programs are not run: {INSTALL}, or pass --unsafe-no-sandbox "
            f"(unsafe_no_sandbox=True) to run them uncontained; {UNSAFE}"
        )
    if why not in _warned:
        _warned.add(why)
        warnings.warn(
            f"code sandbox: {why}; --unsafe-no-sandbox: generated programs run WITHOUT namespace isolation, with "
            f"resource limits and an in-process prelude that a program can undo; {UNSAFE}",
            RuntimeWarning,
            stacklevel=3,
        )
    return None


def _kill_group(pgid: int, *, grace: float = 2.0) -> None:
    """SIGKILL every process of group ``pgid`` and wait (up to ``grace`` s) until none is running: a kill is
    delivered when the target is next scheduled. Zombies are not waited for (they hold no memory; init reaps
    the orphans)."""
    deadline = time.monotonic() + grace
    while True:
        try:
            os.killpg(pgid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            return
        if not _running_members(pgid) or time.monotonic() > deadline:
            return
        time.sleep(0.005)


def _running_members(pgid: int) -> bool:
    """Whether a process of group ``pgid`` is still running (not a zombie), read from /proc (True without it)."""
    if not os.path.isdir("/proc"):
        return True
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                state, _, group = f.read().rsplit(b")", 1)[1].split()[:3]
        except (OSError, ValueError):
            continue
        if int(group) == pgid and state not in (b"Z", b"X"):
            return True
    return False


def _tail(path: str, limit: int) -> str:
    with open(path, "rb") as f:
        f.seek(max(0, os.fstat(f.fileno()).st_size - limit))
        return f.read(limit).decode("utf-8", "replace")


def run_program(program: str, *, timeout: float = 10.0, memory_bytes: int = 2**30, file_bytes: int = 16 * 2**20,
                dir_bytes: int = 64 * 2**20, processes: int = 128, max_output: int = 8192, guard: bool = True,
                unsafe_no_sandbox: bool = False, isolate: bool = True) -> Result:  # fmt: skip
    """Run ``program`` (Python source) in a sandboxed subprocess (module docstring) and report whether it exited
    cleanly within ``timeout`` wall-clock seconds. ``memory_bytes``, ``file_bytes``, ``processes``: RLIMIT_AS,
    RLIMIT_FSIZE, RLIMIT_NPROC; ``dir_bytes``: the size of its working directory, all files together (in
    namespaces only); ``max_output``: bytes of output kept. ``guard=False`` leaves out the prelude that disables
    fork, sockets and destructive ``os`` functions (to test the namespaces and OS-level limits alone).

    Where namespaces are unavailable, :class:`SandboxUnavailableError` is raised and nothing runs, unless
    ``unsafe_no_sandbox`` (then the program runs uncontained, see the module docstring); ``isolate=False`` (with
    ``unsafe_no_sandbox``) leaves the namespaces out even where they work, as the tests' uncontained controls do.
    Never raises for anything the program does."""
    if timeout <= 0:
        raise ValueError(f"timeout={timeout}: must be > 0 seconds (--timeout)")
    if not isolate and not unsafe_no_sandbox:
        raise ValueError("isolate=False runs the program uncontained: pass unsafe_no_sandbox=True to mean it")
    bwrap = require_sandbox(unsafe_no_sandbox=unsafe_no_sandbox) if isolate else None
    preexec = _limits(timeout=timeout, memory_bytes=memory_bytes, file_bytes=file_bytes, processes=processes)
    with tempfile.TemporaryDirectory(prefix="zoo-code-") as cwd:
        with open(os.path.join(cwd, "program.py"), "w", encoding="utf-8") as f:
            f.write(program)
        with open(os.path.join(cwd, "run.py"), "w", encoding="utf-8") as f:
            f.write((GUARD if guard else "") + RUNNER)
        env = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": cwd, "TMPDIR": cwd, "LANG": "C.UTF-8"}
        out_path = os.path.join(cwd, "output")  # in namespaces, hidden from the program by its tmpfs
        isolated = bwrap is not None
        sandbox = _isolation_args(bwrap, cwd, dir_bytes=dir_bytes, files=("program.py", "run.py")) if isolated else []
        command = [*sandbox, sys.executable, "-I", "run.py"]
        try:
            with open(out_path, "wb") as out:
                proc = subprocess.Popen(command, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                        preexec_fn=preexec)  # fmt: skip
        except (OSError, subprocess.SubprocessError) as err:
            return Result(False, "error", f"could not start the program: {type(err).__name__}: {err}")
        deadline, delay, timed_out = time.monotonic() + timeout, 0.002, False
        try:
            # Wait without reaping (WNOWAIT): while the leader is a zombie its id stays taken, so the group kill
            # below cannot hit an unrelated process that got the id again.
            while os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    timed_out = True
                    break
                time.sleep(min(delay, remaining))
                delay = min(2 * delay, 0.05)
        finally:
            with contextlib.suppress(OSError):  # the leader (not yet reaped) and everything it left behind
                os.killpg(proc.pid, signal.SIGKILL)
            returncode = proc.wait()
            _kill_group(proc.pid)  # and wait until they have died (bwrap's init is one of them: its namespace too)
        if isolated and 128 < returncode <= 128 + 64:  # bwrap exits with 128 + n when the program died of signal n
            returncode = 128 - returncode
        output = _tail(out_path, max_output)
        if returncode > 0 and os.path.getsize(out_path) >= file_bytes:  # the traceback did not fit either
            return Result(False, "failed", f"output reached the file size limit ({file_bytes} bytes)", output, proc.pid)
    return _result(returncode, timed_out=timed_out, timeout=timeout, output=output, pid=proc.pid)


def _result(returncode: int, *, timed_out: bool, timeout: float, output: str, pid: int) -> Result:
    if timed_out:
        return Result(False, "timeout", f"killed after {timeout:g} s (wall clock)", output, pid)
    if returncode == 0:
        return Result(True, "passed", "", output, pid)
    if returncode < 0:
        name = signal.Signals(-returncode).name if -returncode in signal.valid_signals() else str(-returncode)
        if -returncode == signal.SIGXCPU:
            return Result(False, "timeout", "CPU time limit exceeded (SIGXCPU)", output, pid)
        why = {"SIGXFSZ": " (file size limit)", "SIGKILL": " (killed, e.g. out of memory)"}.get(name, "")
        return Result(False, "failed", f"killed by {name}{why}", output, pid)
    lines = [line for line in output.splitlines() if line.strip()]
    return Result(False, "failed", (lines[-1] if lines else f"exit status {returncode}")[:300], output, pid)


def run_programs(programs: Sequence[str], *, workers: int | None = None, **options) -> list[Result]:
    """:func:`run_program` on each program, ``workers`` at a time (default: the number of CPUs), results in
    order. Each worker thread only waits on its subprocess. The sandbox is checked (and refused, or warned about)
    once, before the threads start."""
    if options.get("isolate", True):
        require_sandbox(unsafe_no_sandbox=options.get("unsafe_no_sandbox", False))
    if not programs:
        return []
    with ThreadPoolExecutor(max_workers=max(1, min(workers or os.cpu_count() or 1, len(programs)))) as pool:
        return list(pool.map(lambda program: run_program(program, **options), programs))
