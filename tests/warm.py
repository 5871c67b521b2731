"""Entry points started as real processes, without paying for their imports each time.

``python train.py ...`` spends about 11 s of a CPU core importing torch, Lightning, torchmetrics
and Hydra before it does anything; the tests start dozens of such processes. A warm server,
started once per test worker, imports all that once and then forks one child per command. Each
child is a real process of its own, as ``subprocess`` would start it: its own pid (SIGKILL,
``start_new_session``), its own environment, working folder, stdout and stderr files, the
script run as ``__main__`` with ``sys.argv`` as typed (so Lightning's DDP starts its other ranks
by running the command again, cold), ``threading`` and ``atexit`` shut down as at interpreter
exit, and the exit status subprocess would report (negative: killed by that signal).

Only commands of the form ``python <script.py> args`` (this interpreter) go through it; anything
else is a plain subprocess. ``CXRLAB_TEST_COLD=1`` turns it off (every process cold).
"""

from __future__ import annotations

import contextlib
import json
import os
import selectors
import socket
import subprocess
import sys
from pathlib import Path

# What takes the time (torch, torchvision, torchmetrics with torch._dynamo, scipy, optuna...),
# imported before the fork. Not Lightning nor cxrlab's modules that import it: Lightning's
# loggers set themselves up at import depending on whether logging is configured by then (the
# Hydra entry points import it after Hydra has configured logging, and its lines then go to
# train.log); imported in the child, where the script imports it, it behaves as in a cold
# process, for 0.4 s once the rest is loaded.
PRELOAD = (
    "torch",
    "torchvision",
    "torchmetrics",
    "hydra",
    "omegaconf",
    "optuna",
    "pandas",
    "scipy.stats",
    "scipy.signal",
    "sklearn.metrics",
    "matplotlib",
    "cv2",
    "pydicom",
    "albumentations",
)
# Not W&B either: it makes its media folder (a TemporaryDirectory) at import, which would be
# one folder for every child, removed by the first child that exits.


# ------------------------------------------------------------------------------ server side
def _child(req: dict) -> None:
    """In the forked child: become the command, run it, exit as the interpreter would."""
    import atexit
    import runpy
    import threading
    import traceback

    if req.get("new_session"):
        os.setsid()
    os.chdir(req["cwd"])
    os.environ.clear()
    os.environ.update(req["env"])
    for path in reversed([p for p in req["env"].get("PYTHONPATH", "").split(os.pathsep) if p]):
        if path not in sys.path:
            sys.path.insert(0, path)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, name in ((1, "stdout"), (2, "stderr")):
        out = os.open(req[name], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(out, fd)
    # the interpreter's own streams on the new descriptors (they live as long as the process)
    sys.stdin = open(0, closefd=False)  # noqa: SIM115
    sys.stdout = open(1, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", buffering=1, closefd=False)  # noqa: SIM115
    sys.argv = list(req["argv"][1:])
    code = 0
    try:
        runpy.run_path(sys.argv[0], run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
        if not isinstance(e.code, (int, type(None))):
            print(e.code, file=sys.stderr)
    except BaseException:
        traceback.print_exc()
        code = 1
    try:  # what the interpreter does on the way out
        threading._shutdown()
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def serve(address: str) -> None:
    import importlib

    for name in PRELOAD:
        with contextlib.suppress(ImportError):  # an optional extra that is not installed
            importlib.import_module(name)
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(address)
    server.listen(64)
    sel = selectors.DefaultSelector()
    sel.register(server, selectors.EVENT_READ)
    # stdin is a pipe from the test worker that started this server: end of file means the
    # worker is gone (however it ended), and so is the reason to keep serving
    sel.register(sys.stdin, selectors.EVENT_READ)
    waiting: dict[int, socket.socket] = {}
    buffers: dict[socket.socket, bytes] = {}
    print("ready", flush=True)
    while True:
        for key, _ in sel.select(timeout=0.05):
            if key.fileobj is sys.stdin:
                if not os.read(sys.stdin.fileno(), 4096):
                    return
                continue
            if key.fileobj is server:
                conn, _ = server.accept()
                buffers[conn] = b""
                sel.register(conn, selectors.EVENT_READ)
                continue
            conn = key.fileobj
            data = conn.recv(65536)
            if not data:  # the client went away
                sel.unregister(conn)
                buffers.pop(conn, None)
                conn.close()
                continue
            buffers[conn] += data
            if not buffers[conn].endswith(b"\n"):
                continue
            req = json.loads(buffers.pop(conn))
            sel.unregister(conn)
            if req.get("stop"):
                return
            pid = os.fork()
            if pid == 0:  # the child keeps no socket of the server's
                for other in [server, conn, *waiting.values(), *buffers]:
                    other.close()
                sel.close()
                _child(req)
            waiting[pid] = conn
            conn.sendall(json.dumps({"pid": pid}).encode() + b"\n")
        while waiting:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            conn = waiting.pop(pid, None)
            if conn is not None:
                try:
                    code = os.waitstatus_to_exitcode(status)
                    conn.sendall(json.dumps({"returncode": code}).encode() + b"\n")
                except OSError:
                    pass
                conn.close()


# ------------------------------------------------------------------------------ client side
class WarmProcess:
    """What ``subprocess.Popen`` offers the tests: pid, poll, wait, returncode, communicate."""

    def __init__(self, conn: socket.socket, pid: int, out: Path, err: Path, text: bool):
        self._conn, self.pid, self._out, self._err, self._text = conn, pid, out, err, text
        self.returncode: int | None = None
        self._buf = b""

    def _read(self, timeout: float | None) -> None:
        self._conn.settimeout(timeout)
        try:
            while b"\n" not in self._buf:
                data = self._conn.recv(4096)
                if not data:
                    raise RuntimeError("the warm server went away")
                self._buf += data
        except (TimeoutError, BlockingIOError):
            return
        finally:
            self._conn.settimeout(None)
        self.returncode = json.loads(self._buf.split(b"\n", 1)[0])["returncode"]
        self._conn.close()

    def poll(self) -> int | None:
        if self.returncode is None:
            self._read(0.001)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        if self.returncode is None:
            self._read(timeout)
            if self.returncode is None:
                raise subprocess.TimeoutExpired("warm process", timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.poll() is None:
            os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(15)

    def kill(self) -> None:
        self.send_signal(9)

    def output(self) -> tuple:
        out, err = self._out.read_bytes(), self._err.read_bytes()
        if self._text:
            return out.decode(errors="replace"), err.decode(errors="replace")
        return out, err

    def communicate(self, timeout: float | None = None) -> tuple:
        self.wait(timeout)
        return self.output()


class WarmServer:
    def __init__(self, folder: Path):
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.address = str(folder / "warm.sock")
        self.proc = subprocess.Popen(
            [sys.executable, __file__, self.address],
            stdin=subprocess.PIPE,  # closed when this process ends: the server stops then
            stdout=subprocess.PIPE,
            stderr=open(folder / "server.log", "w"),  # noqa: SIM115 (the server's, for its life)
            text=True,
            env=dict(os.environ),
        )
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError("the warm server did not start")
        self._n = 0

    @classmethod
    def at(cls, address: str) -> WarmServer:
        """A client of the server listening at ``address`` (started by another process)."""
        client = cls.__new__(cls)
        client.address, client._n = address, 0
        return client

    def start(self, cmd, env=None, cwd=None, text=True, start_new_session=False,
              stdout=None, stderr=None) -> WarmProcess:  # fmt: skip
        """Fork ``cmd`` (``python script.py args``) from the server; its output goes to the
        files ``stdout``/``stderr`` (default: new files in the server's folder)."""
        self._n += 1
        out = Path(stdout or self.folder / f"{self._n}.out")
        err = Path(stderr or self.folder / f"{self._n}.err")
        req = {
            "argv": [str(c) for c in cmd],
            "env": dict(os.environ if env is None else env),
            "cwd": str(cwd or os.getcwd()),
            "stdout": str(out),
            "stderr": str(err),
            "new_session": start_new_session,
        }
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        conn.connect(self.address)
        conn.sendall(json.dumps(req).encode() + b"\n")
        buf = b""
        while b"\n" not in buf:
            data = conn.recv(4096)
            if not data:
                raise RuntimeError("the warm server went away")
            buf += data
        first, rest = buf.split(b"\n", 1)
        proc = WarmProcess(conn, json.loads(first)["pid"], out, err, text)
        proc._buf = rest
        if rest.strip():
            proc._read(0)
        return proc

    def close(self) -> None:
        try:
            conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            conn.connect(self.address)
            conn.sendall(b'{"stop": true}\n')
            conn.close()
            self.proc.wait(10)
        except (OSError, subprocess.TimeoutExpired):
            self.proc.kill()


# ------------------------------------------------------------------------------ as `python`
SHIM = """#!{python} -S
# `python` for commands a test types into bash: python <script>.py runs forked from the test
# worker's warm server (tests/warm.py), anything else is the real interpreter
import os, sys
sys.path.insert(0, {tests!r})
args = sys.argv[1:]
if not (args and args[0].endswith(".py") and os.path.exists({address!r})):
    os.execv({python!r}, [{python!r}, *args])
import warm
me = f"/proc/{{os.getpid()}}/fd"
proc = warm.WarmServer.at({address!r}).start(
    [{python!r}, *args], env=dict(os.environ), cwd=os.getcwd(),
    stdout=f"{{me}}/1", stderr=f"{{me}}/2",
)
code = proc.wait()
sys.exit(code if code >= 0 else 128 - code)
"""


def write_shim(server: WarmServer, folder: Path) -> Path:
    """A folder with a ``python`` that routes ``python <script>.py`` to ``server``: put it first
    on PATH for commands run through bash as typed."""
    folder.mkdir(parents=True, exist_ok=True)
    shim = folder / "python"
    shim.write_text(SHIM.format(python=sys.executable, tests=str(Path(__file__).parent),
                                address=server.address))  # fmt: skip
    shim.chmod(0o755)
    return folder


if __name__ == "__main__":
    serve(sys.argv[1])
