"""ringmx-bench send and sink, driven as real processes (issue 3)."""
import json
import os
import shutil
import signal
import socket
import subprocess
import threading
import time

import pytest

from benchlib import Procs, bench_bin, free_port, run_send, sink_args, wait_listen

SMTP_SINK = "/usr/sbin/smtp-sink"


@pytest.fixture
def procs():
    p = Procs()
    try:
        yield p
    finally:
        p.close()


def start_sink(procs, *extra):
    port = free_port()
    p = procs.start(sink_args(port, *extra))
    assert wait_listen(port), p.stderr.read() if p.poll() is not None else "sink not listening"
    return port, p


def test_send_to_sink_records_every_message(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--expect", "600", "--record", str(record), "--json",
                            "--threads", "2")
    rc, rep, err = run_send(port, "--messages", "600", "--connections", "12", "--size", "2000",
                            "--rcpts", "2", "--to-domain", "d.test", "--from", "s@x.test",
                            "--threads", "2", timeout=30)
    assert rc == 0, err
    assert rep["messages"] == 600 and rep["ok"] == 600
    assert rep["tempfail"] == rep["permfail"] == rep["conn_errors"] == 0
    assert rep["first_errors"] == []
    assert 0 < rep["latency_ms"]["data"]["p50"] <= rep["latency_ms"]["data"]["max"]
    assert rep["latency_ms"]["txn"]["p99.9"] <= rep["latency_ms"]["txn"]["max"]
    src, out, serr = procs.stop(sink, sig=0)  # --expect: exits by itself
    assert src == 0, serr
    summary = json.loads(out)
    assert summary["messages"] == 600 and summary["connections"] == 13  # + wait_listen probe
    lines = record.read_text().splitlines()
    assert len(lines) == 600
    ids = set()
    for line in lines:
        sender, rcpts, size, msgid = line.split("\t")
        assert sender == "s@x.test"
        assert rcpts == "rcpt1@d.test,rcpt2@d.test"
        assert 1900 <= int(size) <= 2100
        assert msgid.startswith("<") and msgid.endswith("@ringmx-bench>")
        ids.add(msgid)
    assert len(ids) == 600


def test_reply_fractions_are_counted(procs):
    port, sink = start_sink(procs, "--reply", "451:0.1,550:0.05", "--threads", "1", "--json")
    rc, rep, err = run_send(port, "--messages", "400", "--connections", "4", timeout=30)
    assert rc == 0, err
    assert rep["ok"] + rep["tempfail"] + rep["permfail"] == 400
    # Deterministic spreading: exact, except that a code sharing its last slot lags by one.
    assert rep["tempfail"] == 40
    assert 19 <= rep["permfail"] <= 20
    assert rep["rcpt_tempfail"] == rep["tempfail"]
    texts = " ".join(e["text"] for e in rep["first_errors"])
    assert "451 4.0.0" in texts and "550 5.0.0" in texts
    src, out, _ = procs.stop(sink)
    assert src == 0
    summary = json.loads(out)
    assert summary["rcpt_tempfail"] == 40 and summary["messages"] == rep["ok"]


def test_send_to_closed_port_fails_cleanly():
    port = free_port()
    t0 = time.monotonic()
    rc, rep, err = run_send(port, "--messages", "10", "--connections", "3", timeout=20)
    assert rc != 0
    assert "unreachable" in err and "refused" in err.lower()
    assert rep["ok"] == 0 and rep["conn_errors"] >= 3
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize("flags", [[], ["-p"], ["-e"]], ids=["pipelining", "no-pipelining",
                                                              "helo-only"])
def test_send_against_postfix_smtp_sink(procs, flags):
    if not os.access(SMTP_SINK, os.X_OK):
        pytest.skip("Postfix smtp-sink not installed")
    port = free_port()
    user = ["-u", "nobody"] if os.geteuid() == 0 else []
    procs.start([SMTP_SINK, *user, *flags, "-c", f"127.0.0.1:{port}", "128"])
    assert wait_listen(port)
    rc, rep, err = run_send(port, "--messages", "300", "--connections", "10", "--rcpts", "3",
                            timeout=30)
    assert rc == 0, err
    assert rep["ok"] == 300 and rep["conn_errors"] == 0


def test_rate_paces_the_load(procs):
    port, sink = start_sink(procs, "--threads", "1")
    rc, rep, err = run_send(port, "--messages", "100", "--connections", "5", "--rate", "200",
                            timeout=20)
    assert rc == 0 and rep["ok"] == 100, err
    assert 0.45 <= rep["elapsed_s"] <= 1.5  # 100 messages at 200/s: about 0.5 s
    assert rep["msgs_per_s"] <= 220


def smtp_dialogue(port, data, read_until_close=True):
    with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
        s.recv(1024)
        s.sendall(data)
        got = b""
        while read_until_close:
            chunk = s.recv(65536)
            if not chunk:
                break
            got += chunk
        return got


def test_sink_survives_garbage(procs):
    port, sink = start_sink(procs, "--threads", "1", "--json", "--idle-timeout", "1")
    got = smtp_dialogue(port, b"\x00\xff garbage\r\nHELLO?\r\nxyzzy\r\nNOOP\r\n")
    assert got.count(b"500 5.5.2") == 2 and b"421 4.7.0" in got
    assert b"250 2.0.0" not in got  # NOOP after the closing 421 is not executed
    got = smtp_dialogue(port, b"A" * 70000 + b"\r\n" + b"B" * 70000 + b"\r\nQUIT\r\n")
    assert got.count(b"500 5.5.6 line too long") == 2 and b"221" in got
    got = smtp_dialogue(port, b"RCPT TO:<a@b>\r\nMAIL FROM:<a\tb>\r\nQUIT\r\n")
    assert b"503 5.5.1" in got and b"501 5.5.4" in got
    # A bare-LF "dot line" does not end DATA; only CRLF.CRLF does.
    got = smtp_dialogue(port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
                        b"Subject: x\r\n\r\nbody\n.\nmore\r\n.\r\nQUIT\r\n")
    assert got.count(b"250 2.0.0 Ok: queued") == 1 and b"221" in got
    t0 = time.monotonic()
    assert smtp_dialogue(port, b"EHLO x\r\n") .count(b"250") >= 1  # idle peer gets closed
    assert time.monotonic() - t0 < 4
    rc, rep, err = run_send(port, "--messages", "50", "--connections", "2", timeout=20)
    assert rc == 0 and rep["ok"] == 50, err
    src, out, _ = procs.stop(sink)
    assert src == 0
    summary = json.loads(out)
    assert summary["messages"] == 51 and summary["protocol_errors"] >= 7


def fake_server(behaviour):
    """A one-purpose SMTP peer; behaviour(conn) runs for each connection."""
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                continue
            with conn:
                conn.settimeout(3)
                try:
                    behaviour(conn)
                except OSError:
                    pass

    th = threading.Thread(target=serve, daemon=True)
    th.start()

    def close():
        stop.set()
        th.join(timeout=5)
        srv.close()

    return srv.getsockname()[1], close


def read_cmds(conn, n):
    buf = b""
    while buf.count(b"\r\n") < n:
        chunk = conn.recv(4096)
        if not chunk:
            raise OSError("closed")
        buf += chunk
    return buf


def close_in_data(conn):
    conn.sendall(b"220 x\r\n")
    read_cmds(conn, 1)
    conn.sendall(b"250-x\r\n250 PIPELINING\r\n")
    read_cmds(conn, 3)
    conn.sendall(b"250 ok\r\n250 ok\r\n354 go\r\n")
    conn.recv(100)


@pytest.mark.parametrize("behaviour,expect", [
    (lambda c: c.sendall(b"hello there\r\n"), "malformed reply"),
    (lambda c: c.sendall(b"220 " + b"x" * 200000), "reply line too long"),
    (lambda c: c.sendall(b"554 go away\r\n"), "554 go away"),
    (close_in_data, "connection closed by server"),
])
def test_send_survives_bad_servers(behaviour, expect):
    port, close = fake_server(behaviour)
    try:
        t0 = time.monotonic()
        rc, rep, err = run_send(port, "--messages", "20", "--connections", "2", "--timeout",
                                "10", timeout=20)
        assert rc != 0 and rep is not None, err
        assert rep["ok"] == 0 and rep["conn_errors"] >= 2
        assert expect in " ".join(e["text"] for e in rep["first_errors"])
        assert "nothing was delivered" in err or "unreachable" in err
        assert time.monotonic() - t0 < 10
    finally:
        close()


def test_silent_server_is_bounded_by_timeout():
    port, close = fake_server(lambda c: time.sleep(3))
    try:
        rc, rep, err = run_send(port, "--messages", "5", "--connections", "1", "--timeout",
                                "1", timeout=10)
        assert rc == 3 and rep["timed_out"] is True and "timed out" in err
    finally:
        close()


@pytest.mark.parametrize("args", [
    ["send", "--server", "127.0.0.1:1", "--starttls"],
    ["send", "--server", "127.0.0.1:1", "--auth", "u:p"],
    ["sink", "--listen", "127.0.0.1:0", "--tls", "c.pem,k.pem"],
])
def test_tls_flags_not_built_yet(args):
    p = subprocess.run([bench_bin(), *args], capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "needs TLS support (not built yet)" in p.stderr


def test_bad_arguments_are_refused():
    for args in (["send"], ["send", "--server", "nohost"], ["sink", "--listen", "127.0.0.1:1",
                 "--reply", "451:0.9,550:0.5"], ["frobnicate"]):
        p = subprocess.run([bench_bin(), *args], capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and p.stderr
