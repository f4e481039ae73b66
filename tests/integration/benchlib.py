"""Helpers for driving ringmx-bench in integration tests: binary lookup, free ports,
processes that are always reaped."""
import json
import os
import signal
import socket
import subprocess
import time

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def bench_bin():
    build = os.path.join(REPO, os.environ.get("RINGMX_BUILD", "build"))
    path = os.path.join(build, "ringmx-bench")
    if not os.access(path, os.X_OK):
        raise FileNotFoundError(f"ringmx-bench not built under {build} (set RINGMX_BUILD)")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_listen(port, timeout=5.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return True
        except OSError:
            time.sleep(0.02)
    return False


class Procs:
    """Starts processes and kills whatever is still running at the end."""

    def __init__(self):
        self.procs = []

    def start(self, args, **kw):
        p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)
        self.procs.append(p)
        return p

    def stop(self, p, sig=signal.SIGTERM, timeout=10):
        if p.poll() is None:
            p.send_signal(sig)
        out, err = p.communicate(timeout=timeout)
        return p.returncode, out, err

    def close(self):
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            try:
                p.communicate(timeout=5)
            except (subprocess.TimeoutExpired, ValueError):
                pass


def sink_args(port, *extra):
    return [bench_bin(), "sink", "--listen", f"127.0.0.1:{port}", *extra]


def run_send(port, *extra, timeout=60):
    """Runs send with --json; returns (returncode, parsed JSON or None, stderr)."""
    args = [bench_bin(), "send", "--server", f"127.0.0.1:{port}", "--json", *extra]
    p = subprocess.run(args, capture_output=True, text=True, timeout=timeout)
    try:
        report = json.loads(p.stdout)
    except ValueError:
        report = None
    return p.returncode, report, p.stderr
