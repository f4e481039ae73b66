"""Fixtures that run the real ringmx binaries on loopback.

RINGMX_BUILD names the build directory (default: build), relative to the repo.
Every process a test starts is stopped when the test ends.
"""
import json
import os
import signal
import socket
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, os.environ.get("RINGMX_BUILD", "build"))


def binary(name):
    path = os.path.join(BUILD, name)
    if not os.path.exists(path):
        path = os.path.join(BUILD, "tools", name)
    assert os.path.exists(path), f"{name} is not built in {BUILD}"
    return path


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def wait_port(host, port, timeout=10.0, proc=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port}")


def to_yaml(value):
    """Enough YAML for our configs: JSON flow style is valid YAML 1.2."""
    return json.dumps(value, indent=2)


class Ringmx:
    """One ringmx server with its own spool, socket and config under tmp_path."""

    def __init__(self, tmp_path, **overrides):
        self.dir = tmp_path
        self.port = free_port()
        self.spool = str(tmp_path / "spool")
        self.sock = str(tmp_path / "ctl.sock")
        self.cfg_path = str(tmp_path / "ringmx.yaml")
        self.log_path = str(tmp_path / "ringmx.log")
        cfg = {
            "hostname": "mx.ringmx.test",
            "workers": 2,
            "spool_dir": self.spool,
            "control_socket": self.sock,
            "listen": [{"address": f"127.0.0.1:{self.port}", "role": "mx",
                        "tls": "none", "auth": "off"}],
            "relay_domains": ["example.test"],
            "mynetworks": ["127.0.0.1/32"],
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        self.cfg = cfg
        with open(self.cfg_path, "w") as f:
            f.write(to_yaml(cfg))
        self.proc = None

    def start(self, timeout=15.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary("ringmx"), "-c", self.cfg_path],
                                     stdout=self.log, stderr=self.log)
        wait_port("127.0.0.1", self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while not os.path.exists(self.sock):
            assert time.monotonic() < deadline, "control socket never appeared"
            time.sleep(0.05)
        return self

    def stop(self, sig=signal.SIGTERM, timeout=20.0):
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        rc = self.proc.returncode
        self.proc = None
        self.log.close()
        return rc

    def kill9(self):
        return self.stop(signal.SIGKILL)

    def ctl(self, *args, check=True):
        r = subprocess.run([binary("ringmxctl"), "-c", self.cfg_path, *args],
                           capture_output=True, timeout=30)
        if check:
            assert r.returncode == 0, r.stderr.decode()
        return r

    def queue(self):
        return json.loads(self.ctl("queue", "--json").stdout)

    def stats(self):
        return json.loads(self.ctl("stats", "--json").stdout)

    def logtext(self):
        with open(self.log_path, "rb") as f:
            return f.read().decode(errors="replace")


@pytest.fixture
def ringmx_factory(tmp_path):
    servers = []

    def make(start=True, sub="", **overrides):
        d = tmp_path / sub if sub else tmp_path
        d.mkdir(exist_ok=True)
        server = Ringmx(d, **overrides)
        servers.append(server)
        return server.start() if start else server

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def ringmx(ringmx_factory):
    return ringmx_factory()
