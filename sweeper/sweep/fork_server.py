"""Warm trial start: a process that has already imported torch, timm and the worker forks each
trial's worker, so a trial no longer pays ~3 s of imports before its first step. One server
serves every slot of an orchestrator (each request carries its worker's environment, GPU
included): one per slot made `--workers 16` import torch 16 times at once and keep 16 copies
(benchmarks/README.md, "Fork servers").

Each trial still gets a process of its own (its own session, environment, CUDA_VISIBLE_DEVICES,
pipes and stderr file, and a clean exit that frees everything it allocated). That is safe
because the server never touches CUDA or starts torch's thread pools: it only imports.

Protocol, over a SOCK_SEQPACKET socket pair (one JSON message per packet):
    orchestrator -> server: {"argv": [...], "env": {...}, "cwd": "..."} + fds (stdin, stdout, stderr)
    server -> orchestrator: {"started": pid} or {"error": "..."}, later {"exited": pid, "code": code}
where code follows subprocess's convention (-N: killed by signal N). The server dies with its
orchestrator and each worker with its server (PR_SET_PDEATHSIG), so kill -9 of the orchestrator
still leaves no worker behind.
"""

from __future__ import annotations

import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

MAX_MESSAGE = 1 << 20
ENABLE_ENV = "SWEEPER_FORK_SERVER"  # 0: start every worker with a fresh interpreter


def enabled() -> bool:
    return os.environ.get(ENABLE_ENV, "1") != "0" and hasattr(socket, "send_fds") and hasattr(os, "fork")


# --- the server process -------------------------------------------------------------------------

def _child(conn: socket.socket, request: dict, fds: list[int]) -> None:
    """In the forked process: become the worker the request describes, then exit."""
    code = 1
    try:
        conn.close()
        os.setsid()  # a Ctrl-C at the terminal reaches the orchestrator only
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        for sig in (signal.SIGTERM, signal.SIGCHLD):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)  # as in a fresh interpreter
        os.environ.clear()
        os.environ.update(request["env"])
        os.chdir(request["cwd"])
        sys.stdin = os.fdopen(0, "r")
        sys.stdout = os.fdopen(1, "w", buffering=1)
        sys.stderr = os.fdopen(2, "w", buffering=1)
        import torch

        if os.environ.get("OMP_NUM_THREADS", "").isdigit():  # read by OpenMP at import, in the server
            torch.set_num_threads(max(1, int(os.environ["OMP_NUM_THREADS"])))
        from sweeper.train import worker

        code = worker.main(request["argv"])
    except BaseException:
        import traceback

        traceback.print_exc()
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        os._exit(code)


def _send(conn: socket.socket, message: dict) -> None:
    conn.send(json.dumps(message).encode())


def serve(fd: int) -> None:
    from sweeper.train import worker  # the heavy imports (torch, timm, torchvision), once

    worker.die_with_parent()
    conn = socket.socket(fileno=fd)
    while True:
        ready, _, _ = select.select([conn], [], [], 0.2)
        while True:  # reap finished workers and say how they ended
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            _send(conn, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})
        if not ready:
            continue
        message, fds, _, _ = socket.recv_fds(conn, MAX_MESSAGE, 3)
        if not message:
            return  # the orchestrator is gone; our workers die with us
        try:
            request = json.loads(message)
            pid = os.fork()
        except Exception as exc:
            _send(conn, {"error": f"{type(exc).__name__}: {exc}"})
            pid = -1
        if pid == 0:
            _child(conn, request, fds)
        for f in fds:
            os.close(f)
        if pid > 0:
            _send(conn, {"started": pid})


# --- the orchestrator's side --------------------------------------------------------------------

class ForkedWorker:
    """A worker forked by a server, with the parts of subprocess.Popen the orchestrator uses."""

    def __init__(self, pid: int, stdin: IO[str], stdout: IO[str]):
        self.pid, self.stdin, self.stdout = pid, stdin, stdout
        self.returncode: int | None = None
        self._exited = threading.Event()

    def _ended(self, code: int) -> None:
        self.returncode = code
        self._exited.set()

    def wait(self, timeout: float | None = None) -> int:
        if not self._exited.wait(timeout):
            raise subprocess.TimeoutExpired(str(self.pid), timeout)
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            os.kill(self.pid, sig)


class ForkServer:
    """The server; `launch` forks a worker from it."""

    def __init__(self):
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.conn = ours
        self.proc = subprocess.Popen(
            [sys.executable, "-c", f"from sweeper.sweep.fork_server import serve; serve({theirs.fileno()})"],
            pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
            start_new_session=True)
        theirs.close()
        self._lock = threading.Lock()  # one launch at a time: its reply is the next "started"
        self._replies: list[dict] = []
        self._reply_ready = threading.Condition()
        self._workers: dict[int, ForkedWorker] = {}
        self._early_exits: dict[int, int] = {}
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        while True:
            try:
                data = self.conn.recv(MAX_MESSAGE)
            except OSError:
                data = b""
            if not data:  # the server is gone, and its workers with it
                with self._reply_ready:
                    self._replies.append({"error": "fork server exited"})
                    for w in self._workers.values():
                        if w.returncode is None:
                            w._ended(-signal.SIGKILL)
                    self._reply_ready.notify_all()
                return
            message = json.loads(data)
            with self._reply_ready:
                if "exited" in message:
                    pid, code = message["exited"], message["code"]
                    if pid in self._workers:
                        self._workers.pop(pid)._ended(code)
                    else:  # exited before launch() registered it
                        self._early_exits[pid] = code
                else:
                    self._replies.append(message)
                    self._reply_ready.notify_all()

    def launch(self, argv: list[str], env: dict[str, str], stderr: IO, cwd: Path | None = None) -> ForkedWorker:
        in_r, in_w = os.pipe()
        out_r, out_w = os.pipe()
        try:
            with self._lock:
                request = {"argv": argv, "env": env, "cwd": str(cwd or os.getcwd())}
                socket.send_fds(self.conn, [json.dumps(request).encode()], [in_r, out_w, stderr.fileno()])
                with self._reply_ready:
                    # no time limit: the first launch waits for the server's imports, however
                    # slow a loaded machine makes them; a dead server answers through _read
                    while not self._reply_ready.wait_for(lambda: self._replies, timeout=1.0):
                        if self.proc.poll() is not None and not self._replies:
                            self._replies.append({"error": f"fork server exited with code {self.proc.returncode}"})
                    reply = self._replies.pop(0)
                    if "started" not in reply:
                        raise OSError(f"fork server: {reply.get('error')}")
                    handle = ForkedWorker(reply["started"], os.fdopen(in_w, "w"), os.fdopen(out_r, "r"))
                    if handle.pid in self._early_exits:
                        handle._ended(self._early_exits.pop(handle.pid))
                    else:
                        self._workers[handle.pid] = handle
                    return handle
        except BaseException:
            for fd in (in_w, out_r):
                try:
                    os.close(fd)
                except OSError:
                    pass
            raise
        finally:
            os.close(in_r)
            os.close(out_w)

    def close(self) -> None:
        """Stop the server (workers it forked are the orchestrator's to stop first)."""
        try:
            self.conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.conn.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


class Launcher:
    """Starts trial workers: forked by the orchestrator's server when there is one, else
    (disabled, or the server is gone) as a fresh `python -m sweeper.train.worker`. The server
    starts with the first trial (which waits for its imports, as a fresh interpreter would), so
    an orchestrator with nothing to run starts none."""

    def __init__(self, use_server: bool | None = None):
        self.use = enabled() if use_server is None else use_server
        self.server: ForkServer | None = None

    def _server(self) -> ForkServer | None:
        if self.use and self.server is None:
            try:
                self.server = ForkServer()
            except OSError:
                self.use = False
        return self.server

    def launch(self, config_path: Path, env: dict[str, str], stderr: IO):
        server = self._server()
        if server is not None:
            try:
                return server.launch([str(config_path)], env, stderr)
            except OSError:
                self.close()
                self.use = False  # fresh interpreters from now on
        return subprocess.Popen(
            [sys.executable, "-m", "sweeper.train.worker", str(config_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env,
            start_new_session=True)  # a Ctrl-C at the terminal reaches the orchestrator only

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
