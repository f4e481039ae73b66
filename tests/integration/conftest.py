"""Fixtures that run the real ringmx binaries on loopback.

RINGMX_BUILD names the build directory (default: build), relative to the repo.
Every process a test starts is stopped when the test ends.
"""
import json
import os
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
BUILD = os.path.join(REPO, os.environ.get("RINGMX_BUILD", "build"))
TLS_FIXTURE = os.path.join(REPO, "tests", "fixtures", "tls")


def tls_file(name):
    """A file of the test PKI (tests/fixtures/tls): ca.pem, ecdsa.pem, ecdsa.key, ..."""
    return os.path.join(TLS_FIXTURE, name)


def tls_client_context(ca="ca.pem", verify=True):
    """A Python ssl client context trusting the fixture CA (or trusting anything)."""
    ctx = ssl.create_default_context(cafile=tls_file(ca) if verify else None)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    return ctx


def binary(name):
    path = os.path.join(BUILD, name)
    assert os.path.exists(path), f"{name} is not built in {BUILD}"
    return path


def free_port(host="127.0.0.1"):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_free(port, host="127.0.0.1"):
    """True when nothing listens on port (TIME_WAIT connections do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
            return True
        except OSError:
            return False


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


def wait_until(cond, timeout=10.0, what="condition"):
    """Polls cond() until it returns a true value (returned) or timeout passes."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def show_message(server, queue_id):
    """`ringmxctl show ID` split into (envelope line, our Received: header, the bytes sent)."""
    out = server.ctl("show", queue_id).stdout
    envelope, stored = out.split(b"\n", 1)
    assert stored.startswith(b"Received: "), stored[:200]
    end = 0
    while True:  # the header ends at the first line that is not a continuation
        end = stored.index(b"\r\n", end) + 2
        if stored[end:end + 1] not in (b" ", b"\t"):
            break
    return envelope.decode(), stored[:end].decode(), stored[end:]


def smtp_client(server, source="127.0.0.1", timeout=10.0, port=None):
    """An smtplib session to server (its first listener, or port), from the loopback address
    source."""
    return smtplib.SMTP("127.0.0.1", port or server.port, timeout=timeout,
                        source_address=(source, 0))


class RawSmtp:
    """SMTP over a bare socket, for exact bytes: send() them, read reply() as (code, text)."""

    def __init__(self, server, source="127.0.0.1", timeout=10.0, port=None):
        self.sock = socket.create_connection(("127.0.0.1", port or server.port),
                                             timeout=timeout, source_address=(source, 0))
        self.buf = b""

    def starttls(self, context, server_hostname="mx.ringmx.test"):
        """The TLS handshake on this connection (after a 220 to STARTTLS, or at once on an
        implicit-TLS port). Plaintext bytes already read and not yet consumed would be
        lost: a test reads exactly the replies it expects before calling this."""
        assert self.buf == b"", f"plaintext left unread before the handshake: {self.buf!r}"
        self.sock = context.wrap_socket(self.sock, server_hostname=server_hostname)
        return self.sock

    def send(self, data):
        self.sock.sendall(data.encode() if isinstance(data, str) else data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(f"connection closed; pending {self.buf!r}")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode(errors="replace")

    def reply(self):
        """One whole (possibly multi-line) reply: (code, text of its lines joined by \\n)."""
        lines = [self.line()]
        while len(lines[-1]) > 3 and lines[-1][3] == "-":
            lines.append(self.line())
        return int(lines[-1][:3]), "\n".join(lines)

    def cmd(self, line):
        self.send(line + "\r\n")
        return self.reply()

    def closed(self):
        """True when the server closes the connection (any unread bytes are dropped)."""
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True

    def close(self):
        self.sock.close()


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
            # Nothing listens on port 9: accepted mail stays queued (deferred, retried in an
            # hour) unless a test routes it to a sink. Tests never query the real DNS.
            "routes": {"*": "[127.0.0.1]:9"},
            "queue": {"retry": ["1h"]},
        }
        for key, value in overrides.items():
            if isinstance(value, dict) and isinstance(cfg.get(key), dict):
                cfg[key].update(value)
            else:
                cfg[key] = value
        self.cfg = cfg
        # a test's own listen list: the first listener is the one start() waits for
        self.port = int(cfg["listen"][0]["address"].rsplit(":", 1)[1])
        with open(self.cfg_path, "w") as f:
            f.write(to_yaml(cfg))
        self.proc = None

    def start(self, timeout=15.0):
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([binary("ringmx"), "-c", self.cfg_path],
                                     stdout=self.log, stderr=self.log)
        wait_port("127.0.0.1", self.port, timeout, self.proc)
        deadline = time.monotonic() + timeout
        while not self.control_ready():  # a socket file left by a kill -9 is not enough
            assert time.monotonic() < deadline, "control socket never appeared"
            time.sleep(0.05)
        return self

    def control_ready(self):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            try:
                s.connect(self.sock)
                return True
            except OSError:
                return False

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
        rc = self.stop(signal.SIGKILL)
        # The kernel tears a dead process's io_uring down asynchronously: its listening
        # sockets live on for some ms, and a new SO_REUSEPORT listener would share them.
        wait_until(lambda: port_free(self.port), 5.0, f"port {self.port} released")
        return rc

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


@pytest.fixture
def postfix_factory(tmp_path):
    """Private Postfix instances (postfix_mta.py), stopped and removed when the test ends
    (pass or fail); skips the test where a private Postfix cannot run."""
    from postfix_mta import PostfixMTA, unavailable
    reason = unavailable()
    if reason:
        pytest.skip(reason)
    mtas = []

    def make(relay_domain, nexthop_port, main_cf=None):
        mtas.append(PostfixMTA(relay_domain, nexthop_port, keep_dir=str(tmp_path),
                               main_cf=main_cf))
        return mtas[-1].start()

    yield make
    for mta in mtas:
        mta.stop()
