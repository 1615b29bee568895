"""The code-evaluation sandbox (zoo.eval.sandbox): results, time, process, memory and network limits, and the
evaluating process left as it was."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from zoo.eval import sandbox
from zoo.eval.sandbox import SandboxUnavailableError, run_program, run_programs

ANYWHERE = {"unsafe_no_sandbox": True}  # the guards' tests: in namespaces where they work, else with the guards alone
UNCONTAINED = {"unsafe_no_sandbox": True, "isolate": False}  # the controls: what the namespaces take away


def live_group_members(pgid: int) -> list[int]:
    """Pids of processes (zombies excluded: they hold nothing but a pid) whose process group is ``pgid``."""
    members = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # after "pid (comm)": state ppid pgrp ...
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(entry))
    return members


# ---- the sandbox -----------------------------------------------------------------------------------------------
def test_passing_and_failing_programs():
    ok = run_program("x = 2\nassert x * 2 == 4\nprint('ok')\n", timeout=5, **ANYWHERE)
    assert ok.passed and ok.status == "passed" and ok.output == "ok\n" and ok.pid is not None
    failed = run_program("assert 1 + 1 == 3, 'arithmetic is broken'", timeout=5, **ANYWHERE)
    assert not failed.passed and failed.status == "failed" and "AssertionError: arithmetic is broken" in failed.message
    syntax = run_program("def f(:\n", timeout=5, **ANYWHERE)
    assert syntax.status == "failed" and "SyntaxError" in syntax.message
    early = run_program("import sys\nsys.exit(0)\nassert False", timeout=5, **ANYWHERE)  # exit must not skip asserts
    assert early.status == "failed" and "SystemExit" in early.message


def test_an_infinite_loop_is_killed_at_the_timeout():
    start = time.monotonic()
    result = run_program("while True:\n    pass\n", timeout=1.0, **ANYWHERE)
    assert time.monotonic() - start < 1.0 + 3
    assert result.status == "timeout" and not result.passed
    assert live_group_members(result.pid) == []


@pytest.mark.parametrize(
    "program",
    ["import os\nwhile True:\n    os.fork()\n",
     "import os, time\nif os.fork() == 0:\n    time.sleep(1000)\n",
     "import posix\nwhile True:\n    posix.fork()\n",
     "import subprocess\nsubprocess.Popen(['sleep', '1000'])\n"],
    ids=["fork-bomb", "orphan-child", "posix-fork", "subprocess"],
)  # fmt: skip
def test_fork_bombs_and_children_are_contained(program):
    start = time.monotonic()
    result = run_program(program, timeout=3, **ANYWHERE)
    assert time.monotonic() - start < 3 + 3
    assert result.status == "failed" and "disabled in the code-evaluation sandbox" in result.message
    assert live_group_members(result.pid) == []


def test_children_left_behind_are_killed_after_a_normal_exit():
    """Without the prelude (the OS-level containment alone): the leader forks 15 sleeping descendants and exits
    at once; the run ends then (not at the timeout) and the group kill leaves none of them alive."""
    program = "import os, time\nleader = os.getpid()\nfor _ in range(4):\n    os.fork()\nif os.getpid() != leader:\n    time.sleep(1000)\n"  # noqa: E501
    start = time.monotonic()
    result = run_program(program, timeout=30, guard=False, **ANYWHERE)
    assert time.monotonic() - start < 10, "the run waited for the leader's children"
    assert result.passed
    assert live_group_members(result.pid) == []


@pytest.mark.skipif(os.geteuid() == 0, reason="a user other than root runs it: root is exempt from RLIMIT_NPROC (the "
                    "prelude guards instead)")
def test_rlimit_nproc_stops_an_unguarded_fork_bomb():
    result = run_program("import os\nwhile True:\n    os.fork()\n", timeout=3, processes=32, guard=False, **ANYWHERE)
    assert not result.passed and live_group_members(result.pid) == []


def test_a_huge_allocation_is_a_memory_error():
    start = time.monotonic()
    result = run_program("data = bytearray(10**10)\n", timeout=10, **ANYWHERE)
    assert time.monotonic() - start < 8
    assert result.status == "failed" and "MemoryError" in result.message


def test_no_network():
    for program in ("import socket\nsocket.socket()\n",
                    "import socket\nsocket.create_connection(('127.0.0.1', 9), timeout=1)\n",
                    "import _socket\n_socket.socket()\n"):  # fmt: skip
        result = run_program(program, timeout=5, **ANYWHERE)
        assert result.status == "failed" and "disabled in the code-evaluation sandbox" in result.message, program
    # the stand-in is a subclass, so modules that subclass socket.socket still import
    assert run_program("import ssl, asyncio, urllib.request\n", timeout=10, **ANYWHERE).passed


MARKER = "unchanged"


def test_the_evaluating_process_is_unaffected(tmp_path):
    global MARKER
    keep = tmp_path / "keep.txt"
    keep.write_text("data")
    cwd, fork, environ = os.getcwd(), os.fork, dict(os.environ)
    program = (f"import os, shutil\nMARKER = 'changed'\nos.environ['ZOO_SANDBOX'] = '1'\nrefused = 0\n"
               f"for f in (lambda: os.chdir('/'), lambda: os.remove({str(keep)!r}), "
               f"lambda: shutil.rmtree({str(tmp_path)!r}), lambda: os.kill(os.getppid(), 0)):\n"
               "    try:\n        f()\n    except PermissionError:\n        refused += 1\n"
               "assert refused == 4 and 'zoo-code-' in os.getcwd() and __name__ != '__main__'\n")  # fmt: skip
    result = run_program(program, timeout=5, **ANYWHERE)
    assert result.passed, result.output
    assert os.getcwd() == cwd and MARKER == "unchanged" and os.fork is fork and dict(os.environ) == environ
    assert keep.read_text() == "data"


def test_programs_run_in_parallel_and_keep_their_order():
    programs = ["import time\ntime.sleep(1)\n", "import time\ntime.sleep(1)\nassert False\n"] * 2
    start = time.monotonic()
    results = run_programs(programs, workers=4, timeout=10, **ANYWHERE)
    assert time.monotonic() - start < 3.5  # four 1-second sleeps at once, not one after another
    assert [r.status for r in results] == ["passed", "failed", "passed", "failed"]


# ---- namespaces: what an adversarial program (the prelude left out) still cannot do ----------------------------
@pytest.mark.needs_bwrap
def test_no_connection_to_a_server_of_the_host():
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    port = server.getsockname()[1]
    program = (f"import socket\ntry:\n    socket.create_connection(('127.0.0.1', {port}), timeout=2)\n"
               "except OSError as err:\n    print('no connection:', err)\n"
               "else:\n    raise SystemExit('connected')\n")  # fmt: skip
    try:
        result = run_program(program, timeout=10, guard=False)
        assert result.passed and "no connection" in result.output, result.output
        with pytest.raises(BlockingIOError):
            server.accept()  # nothing ever reached the server
        control = run_program(program, timeout=10, guard=False, **UNCONTAINED)  # the same program, uncontained
        assert control.status == "failed" and "connected" in control.message
    finally:
        server.close()


@pytest.mark.needs_bwrap
def test_files_outside_its_directory_are_neither_readable_nor_writable(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("s3cret-value")
    targets = [str(tmp_path / "escaped.txt"), os.path.join(sys.prefix, "escaped.txt"), "/usr/escaped.txt",
               "/escaped.txt", "/tmp/escaped.txt", "/dev/shm/escaped.txt"]  # fmt: skip
    program = (f"import os\nfor path in ({str(secret)!r}, '/etc/passwd', {os.path.expanduser('~/.bashrc')!r}):\n"
               "    try:\n        print(open(path).read())\n    except OSError as err:\n"
               "        print('unreadable', type(err).__name__)\n"
               f"for path in {targets!r}:\n"
               "    try:\n        open(path, 'w').write('x')\n    except OSError as err:\n"
               "        print('unwritable', type(err).__name__)\n    else:\n        print('WROTE', path)\n"
               "open('inside.txt', 'w').write('its own directory is writable')\n")  # fmt: skip
    result = run_program(program, timeout=10, guard=False)
    assert result.passed, result.output
    assert "s3cret" not in result.output and "root:" not in result.output and "WROTE" not in result.output
    assert result.output.count("unreadable") == 3 and result.output.count("unwritable") == len(targets)
    assert not any(os.path.exists(path) for path in targets[:3])  # the host's paths (the rest were private)
    control = run_program(f"print(open({str(secret)!r}).read())", timeout=10, guard=False, **UNCONTAINED)
    assert "s3cret-value" in control.output  # what the namespaces take away


@pytest.mark.needs_bwrap
def test_the_evaluating_processes_are_invisible():
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    program = (f"import os, signal\npids = sorted(int(p) for p in os.listdir('/proc') if p.isdigit())\n"
               "print('pids', pids)\nassert len(pids) <= 3 and os.getpid() <= 3, pids\n"
               f"for pid in ({sleeper.pid}, {os.getpid()}):\n"
               "    try:\n        os.kill(pid, signal.SIGKILL)\n    except ProcessLookupError:\n"
               "        print('no such process', pid)\n")  # fmt: skip
    try:
        result = run_program(program, timeout=10, guard=False)
        assert result.passed, result.output
        assert result.output.count("no such process") == 2
        assert sleeper.poll() is None  # still alive
    finally:
        sleeper.kill()
        sleeper.wait()


def _processes_with(marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                if marker.encode() in f.read():
                    found.append(int(entry))
        except (OSError, ValueError):
            continue
    return found


@pytest.mark.needs_bwrap
def test_a_child_that_left_the_process_group_dies_with_the_run():
    marker = f"zoo-sandbox-leftover-{os.getpid()}"
    program = ("import os, sys\nif os.fork() == 0:\n    os.setsid()\n"
               f"    os.execv(sys.executable, [sys.executable, '-c', 'import time; time.sleep(60)', {marker!r}])\n")  # fmt: skip  # noqa: E501
    result = run_program(program, timeout=10, guard=False)
    assert result.passed, result.output
    assert _processes_with(marker) == []
    control = run_program(program, timeout=10, guard=False, **UNCONTAINED)  # uncontained, it escapes the group kill
    assert control.passed
    deadline = time.monotonic() + 5
    while not (escaped := _processes_with(marker)) and time.monotonic() < deadline:
        time.sleep(0.05)
    for pid in escaped:
        os.kill(pid, signal.SIGKILL)
    assert escaped


# ---- no sandbox, no run: the attack of a program that undoes the prelude ------------------------------------------
ATTACK = """\
import struct, sys
for name in ("ctypes", "_ctypes"):  # the prelude's block of ctypes, undone
    sys.modules.pop(name, None)
import ctypes

libc = ctypes.CDLL(None, use_errno=True)
try:
    print("SECRET", open({secret!r}).read())
except OSError as err:
    print("no secret:", err)
fd = libc.socket(2, 1, 0)  # AF_INET, SOCK_STREAM, through libc: the prelude's socket stand-in is bypassed
address = struct.pack("=H", 2) + struct.pack("!H", {port}) + bytes([127, 0, 0, 1]) + bytes(8)
print("CONNECTED" if libc.connect(fd, address, len(address)) == 0 else "no connection: errno %d" % ctypes.get_errno())
try:
    open({outside!r}, "w").write("escaped")
    print("WROTE OUTSIDE")
except OSError as err:
    print("no write:", err)
"""


@pytest.fixture
def attack(tmp_path):
    """The program, a planted secret, a server on the host's loopback and a path outside the program's directory;
    yields the program and a function telling which of the three it reached."""
    secret, outside = tmp_path / "secret.txt", tmp_path / "escaped.txt"
    secret.write_text("s3cret-value")
    server = socket.create_server(("127.0.0.1", 0))
    server.setblocking(False)
    program = ATTACK.format(secret=str(secret), port=server.getsockname()[1], outside=str(outside))

    def reached() -> set[str]:
        try:
            server.accept()[0].close()
            connected = {"network"}
        except BlockingIOError:
            connected = set()
        return connected | ({"outside"} if outside.exists() else set())

    try:
        yield program, reached
    finally:
        server.close()


@pytest.fixture
def no_bwrap(monkeypatch, tmp_path):
    """The sandbox pointed at a bubblewrap binary that does not exist (as on a machine without it)."""
    monkeypatch.setenv(sandbox.BWRAP_ENV, str(tmp_path / "no-such-bwrap"))


def test_without_bubblewrap_nothing_runs(no_bwrap, attack):
    program, reached = attack
    for run in (lambda: run_program(program, timeout=10), lambda: run_programs([program, program], timeout=10)):
        with pytest.raises(SandboxUnavailableError) as err:
            run()
        message = str(err.value)
        assert "\n" not in message and "no-such-bwrap is not installed" in message
        assert "apt-get install bubblewrap" in message and "--unsafe-no-sandbox" in message
    assert reached() == set()


def test_without_bubblewrap_the_opt_in_runs_the_attack_uncontained(no_bwrap, attack):
    """What ``--unsafe-no-sandbox`` gives up, shown: the prelude is undone and every attempt succeeds."""
    program, reached = attack
    with pytest.warns(RuntimeWarning, match="WITHOUT namespace isolation.*can undo"):
        result = run_program(program, timeout=10, unsafe_no_sandbox=True)
    assert result.passed, result.output
    assert "SECRET s3cret-value" in result.output and "CONNECTED" in result.output
    assert reached() == {"network", "outside"}
    # the prelude still stops the accidents it was made for
    guarded = run_program("import socket\nsocket.socket()\n", timeout=5, unsafe_no_sandbox=True)
    assert guarded.status == "failed" and "disabled in the code-evaluation sandbox" in guarded.message


@pytest.mark.needs_bwrap
def test_with_bubblewrap_the_attack_is_contained(attack):
    program, reached = attack
    result = run_program(program, timeout=10)
    assert result.passed, result.output
    assert "s3cret" not in result.output and "no secret" in result.output
    assert "no connection" in result.output and "no write" in result.output
    assert reached() == set()


@pytest.mark.needs_bwrap
def test_the_files_of_a_program_are_limited_in_total():
    """30 files of 15 MiB each: every one is under the per-file limit (16 MiB), 450 MiB together; the working
    directory's tmpfs stops them at its size."""
    program = ("written = 0\ntry:\n    for i in range(30):\n        with open(f'f{i}', 'wb') as f:\n"
               "            f.write(bytes(15 * 2**20))\n        written += 15\n"
               "finally:\n    print('written MiB', written)\n")  # fmt: skip
    result = run_program(program, timeout=30, dir_bytes=64 * 2**20)
    assert result.status == "failed" and "No space left on device" in result.message, result.output
    written = int(result.output.split("written MiB")[1].split()[0])
    assert 15 <= written <= 64
    small = run_program(program.replace("range(30)", "range(2)"), timeout=30, dir_bytes=64 * 2**20)
    assert small.passed and "written MiB 30" in small.output


def test_eval_refuses_code_tasks_without_bubblewrap_before_loading_the_model(tmp_path):
    """One line, exit status 2, before the checkpoint (here a file that does not exist) is read."""
    env = {**os.environ, sandbox.BWRAP_ENV: str(tmp_path / "no-such-bwrap")}
    out = subprocess.run([sys.executable, "-m", "zoo", "eval", "--ckpt", str(tmp_path / "never-read.ckpt"),
                          "--tasks", "humaneval", "--data-dir", str(tmp_path)], capture_output=True, text=True,
                         env=env, timeout=120)  # fmt: skip
    assert out.returncode == 2, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "no-such-bwrap is not installed" in lines[0] and "apt-get install bubblewrap" in lines[0]
    assert "never-read.ckpt" not in out.stderr


def test_evaluate_code_refuses_before_sampling(no_bwrap, monkeypatch):
    from zoo.eval.code import evaluate_code

    monkeypatch.setattr("zoo.eval.code.load_problems", lambda *a, **k: pytest.fail("problems were loaded"))
    with pytest.raises(SandboxUnavailableError, match="--unsafe-no-sandbox"):
        evaluate_code(model=None, tokenizer=None, eos_token="x", task="humaneval", timeout=5)
