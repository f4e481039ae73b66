"""ringmx-bench send and sink, driven as real processes (issue 3)."""
import json
import os
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
        sender, rcpts, size, msgid, tls = line.split("\t")
        assert tls == "none"
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


def test_auth_flag_not_built_yet():
    p = subprocess.run([bench_bin(), "send", "--server", "127.0.0.1:1", "--auth", "u:p"],
                       capture_output=True, text=True, timeout=10)
    assert p.returncode == 2 and "needs TLS support (not built yet)" in p.stderr


def test_bad_arguments_are_refused():
    for args in (["send"], ["send", "--server", "nohost"], ["sink", "--listen", "127.0.0.1:1",
                 "--reply", "451:0.9,550:0.5"], ["frobnicate"]):
        p = subprocess.run([bench_bin(), *args], capture_output=True, text=True, timeout=10)
        assert p.returncode == 2 and p.stderr


# --- CHUNKING (RFC 3030 BDAT) ---

def final_codes(got):
    """Codes of the last line of each reply, in order (continuation lines skipped)."""
    return [int(l[:3]) for l in got.split(b"\r\n") if len(l) >= 4 and l[3:4] == b" "]


def chunked_dialogue(port, data, steps=None):
    """Sends data (then reads until the sink closes); with steps, in pieces of those sizes
    (cycled), each its own segment, so the sink sees the stream split at odd places."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert s.recv(1024).startswith(b"220")
        off, i = 0, 0
        while off < len(data):
            n = steps[i % len(steps)] if steps else len(data)
            s.sendall(data[off:off + n])
            off, i = off + n, i + 1
            if steps:
                time.sleep(0.002)
        got = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return got
            got += chunk


def bdat_txn(msg, mail=b"MAIL FROM:<s@x.test>\r\n", rcpt=b"RCPT TO:<r@y.test>\r\n"):
    return mail + rcpt + b"BDAT %d LAST\r\n" % len(msg) + msg


def message(n):
    # Data that a line parser would take for commands or an end of DATA.
    return (b"From: s@x.test\r\nMessage-ID: <m%d@bdat.test>\r\nSubject: t\r\n\r\n"
            b"body\r\n.\r\nMAIL FROM:<evil@x>\r\nQUIT\r\n.\r\n\x00\xff binary\r\n" % n)


def record_lines(path):
    return [l.split("\t") for l in path.read_text().splitlines()]


def test_send_bdat_to_sink_records_every_message(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--expect", "600", "--record", str(record), "--json",
                            "--threads", "2")
    rc, rep, err = run_send(port, "--bdat", "--messages", "600", "--connections", "12",
                            "--size", "2000", "--rcpts", "2", "--to-domain", "d.test",
                            "--from", "s@x.test", "--threads", "2", timeout=30)
    assert rc == 0, err
    assert rep["messages"] == 600 and rep["ok"] == 600 and rep["conn_errors"] == 0
    assert 0 < rep["latency_ms"]["data"]["p50"] <= rep["latency_ms"]["data"]["max"]
    src, out, serr = procs.stop(sink, sig=0)
    assert src == 0, serr
    summary = json.loads(out)
    assert summary["messages"] == 600 and summary["protocol_errors"] == 0
    lines = record_lines(record)
    assert len(lines) == 600
    assert {tuple(l[:2]) for l in lines} == {("s@x.test", "rcpt1@d.test,rcpt2@d.test")}
    ids = {l[3] for l in lines}
    assert len(ids) == 600 and all(i.startswith("<") and i.endswith("@ringmx-bench>") for i in ids)
    # BDAT carries the message without the DATA framing: the sender's byte count (no final
    # dot) equals the sizes the sink recorded, and the sink counted the same bytes.
    assert rep["bytes"] == sum(int(l[2]) for l in lines) == summary["bytes"]


def test_send_bdat_falls_back_to_data_without_chunking(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--no-chunking", "--record", str(record), "--json",
                            "--threads", "1", "--idle-timeout", "2")
    got = chunked_dialogue(port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                           b"BDAT 4 LAST\r\nQUIT\r\n")
    assert b"250-CHUNKING" not in got and b"250-PIPELINING" in got
    assert final_codes(got) == [250, 250, 250, 502, 221]
    rc, rep, err = run_send(port, "--bdat", "--messages", "200", "--connections", "4",
                            timeout=30)
    assert rc == 0 and rep["ok"] == 200, err
    src, out, _ = procs.stop(sink)
    assert src == 0 and json.loads(out)["messages"] == 200
    lines = record_lines(record)
    assert len(lines) == 200 and len({l[3] for l in lines}) == 200
    # DATA was used: the sender counts the final ".\r\n" that the record leaves out.
    assert rep["bytes"] == sum(int(l[2]) for l in lines) + 3 * 200


def test_bdat_and_data_record_the_same_size(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--record", str(record), "--threads", "1")
    for flags in ([], ["--bdat"]):
        rc, rep, err = run_send(port, *flags, "--messages", "3", "--connections", "1",
                                "--size", "1174", timeout=20)
        assert rc == 0 and rep["ok"] == 3, err
    procs.stop(sink)
    sizes = [int(l[2]) for l in record_lines(record)]
    assert len(sizes) == 6 and sizes[:3] == sizes[3:]


PIPELINED = (b"EHLO x\r\n" + bdat_txn(message(1)) + bdat_txn(message(2)) + b"NOOP\r\n" +
             bdat_txn(b"Message-ID: <m3@bdat.test>\r\n\r\n", rcpt=b"RCPT TO:<r3@y.test>\r\n") +
             b"QUIT\r\n")


@pytest.mark.parametrize("steps", [None, [1], [7, 3, 1, 11, 2], [64, 5, 129]],
                         ids=["one-write", "bytewise", "odd", "larger"])
def test_sink_pipelined_bdat(procs, tmp_path, steps):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--record", str(record), "--threads", "1", "--json")
    got = chunked_dialogue(port, PIPELINED, steps)
    assert b"250-CHUNKING\r\n" in got
    assert final_codes(got) == [250] + [250, 250, 250] * 2 + [250] + [250, 250, 250] + [221]
    assert got.count(b"250 2.0.0 Ok: queued") == 3
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["messages"] == 3 and summary["protocol_errors"] == 0
    assert record_lines(record) == [
        ["s@x.test", "r@y.test", str(len(message(1))), "<m1@bdat.test>", "none"],
        ["s@x.test", "r@y.test", str(len(message(2))), "<m2@bdat.test>", "none"],
        ["s@x.test", "r3@y.test", "30", "<m3@bdat.test>", "none"],
    ]


def test_sink_bdat_multi_chunk_and_refusals(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--record", str(record), "--threads", "1", "--json")
    msg = message(7)
    got = chunked_dialogue(port, (
        b"EHLO x\r\n"
        b"BDAT 12\r\nMAIL FROM:<>"        # no MAIL: 503, the octets are still data
        b"NOOP\r\n"
        b"MAIL FROM:<s@x.test>\r\nBDAT 3 LAST\r\nabc"  # no recipient: 554
        b"RCPT TO:<r@y.test>\r\n"
        + b"BDAT 20\r\n" + msg[:20]       # Message-ID header split across chunks
        + b"BDAT 0\r\n"
        + b"DATA\r\n"                     # DATA can't join a BDAT transaction
        + b"BDAT %d\r\n" % (len(msg) - 20) + msg[20:]
        + b"BDAT 0 LAST\r\n"
        b"QUIT\r\n"), [5, 1, 3])
    assert final_codes(got) == [250, 503, 250, 250, 554, 250, 250, 250, 503, 250, 250, 221]
    assert b"250 2.0.0 20 octets" in got and b"250 2.0.0 0 octets" in got
    assert b"250 2.0.0 %d octets" % (len(msg) - 20) in got
    # Bad sizes are syntax errors and consume nothing; the third error closes.
    got = chunked_dialogue(port, b"EHLO x\r\nBDAT x\r\nBDAT 12345678901234567890 LAST\r\n"
                           b"BDAT 5 FIRST\r\n")
    assert final_codes(got) == [250, 501, 501, 421]
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["messages"] == 1 and summary["protocol_errors"] == 5
    assert record_lines(record) == [["s@x.test", "r@y.test", str(len(msg)), "<m7@bdat.test>",
                                     "none"]]


def test_sink_bdat_size_limit(procs):
    port, sink = start_sink(procs, "--threads", "1", "--json")
    limit = 104857600
    got = chunked_dialogue(port, b"EHLO x\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n"
                           b"BDAT %d LAST\r\n" % (limit + 1) + b"x" * (limit + 1) +
                           b"RSET\r\nMAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\n" +
                           b"BDAT %d\r\n" % limit + b"y" * limit + b"BDAT 1 LAST\r\nz" +
                           b"BDAT 1 LAST\r\nz" + b"QUIT\r\n")
    assert final_codes(got) == [250, 250, 250, 552, 250, 250, 250, 250, 552, 503, 221]
    assert b"552 5.3.4" in got
    src, out, _ = procs.stop(sink)
    assert json.loads(out)["messages"] == 0


def test_sink_bdat_reply_fraction(procs, tmp_path):
    record = tmp_path / "record.tsv"
    # With --threads 1 the second of every two RCPTs gets 550.
    port, sink = start_sink(procs, "--reply", "550:0.5", "--record", str(record),
                            "--threads", "1", "--json")
    got = chunked_dialogue(port, b"EHLO x\r\n" + bdat_txn(message(1)) + bdat_txn(message(2)) +
                           b"RSET\r\n" + bdat_txn(message(3)) + b"QUIT\r\n")
    assert final_codes(got) == [250, 250, 250, 250, 250, 550, 554, 250, 250, 250, 250, 221]
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["messages"] == 2 and summary["rcpt_permfail"] == 1
    assert [l[3] for l in record_lines(record)] == ["<m1@bdat.test>", "<m3@bdat.test>"]
    port, sink = start_sink(procs, "--reply", "550:0.1", "--threads", "1", "--json")
    rc, rep, err = run_send(port, "--bdat", "--messages", "400", "--connections", "4",
                            timeout=30)
    assert rc == 0, err
    assert rep["ok"] == 360 and rep["permfail"] == 40 and rep["rcpt_permfail"] == 40
    assert "550 5.0.0" in " ".join(e["text"] for e in rep["first_errors"])
    src, out, _ = procs.stop(sink)
    assert json.loads(out)["messages"] == 360


# --- TLS: STARTTLS and implicit TLS, --messages-per-connection ---

FIXTURES = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "fixtures", "tls")
CERT = os.path.join(FIXTURES, "ecdsa.pem")
KEY = os.path.join(FIXTURES, "ecdsa.key")
TLS_ARG = f"{CERT},{KEY}"


def test_starttls_to_sink_records_tls_version(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--expect", "300", "--record",
                            str(record), "--json", "--threads", "2")
    rc, rep, err = run_send(port, "--starttls", "--messages", "300", "--connections", "4",
                            "--size", "3000", "--threads", "2", timeout=30)
    assert rc == 0, err
    assert rep["ok"] == 300 and rep["conn_errors"] == 0 and rep["tls"] == "starttls"
    assert rep["connections_opened"] == rep["handshakes"] == 4
    assert 0 < rep["handshake_p50_ms"] <= rep["handshake_max_ms"]
    src, out, serr = procs.stop(sink, sig=0)
    assert src == 0, serr
    summary = json.loads(out)
    assert summary["messages"] == 300 and summary["handshakes"] == 4
    assert summary["tls_errors"] == summary["protocol_errors"] == 0
    lines = record_lines(record)
    assert len(lines) == 300 and {l[4] for l in lines} == {"TLSv1.3"}
    assert rep["bytes"] == sum(int(l[2]) for l in lines) + 3 * 300


def test_starttls_bdat_and_large_messages(procs, tmp_path):
    """Messages larger than the adapter's output buffer go out in pieces."""
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--record", str(record), "--threads", "1")
    for flags in ([], ["--bdat"]):
        rc, rep, err = run_send(port, "--starttls", *flags, "--messages", "6",
                                "--connections", "2", "--size", "600000", timeout=30)
        assert rc == 0 and rep["ok"] == 6, err
    procs.stop(sink)
    sizes = [int(l[2]) for l in record_lines(record)]
    assert len(sizes) == 12 and sizes[:6] == sizes[6:] and min(sizes) > 590000


def test_messages_per_connection_reconnects(procs):
    port, sink = start_sink(procs, "--json", "--threads", "1")
    rc, rep, err = run_send(port, "--messages", "40", "--messages-per-connection", "1",
                            "--connections", "3", timeout=30)
    assert rc == 0 and rep["ok"] == 40, err
    assert rep["connections_opened"] == 40 and rep["handshakes"] == 0 and rep["tls"] == "none"
    # Messages go to whichever connection is free: a slot's last connection may get fewer
    # than K, so 30 messages at K=3 take 10 connections, plus at most one per other slot.
    rc, rep, err = run_send(port, "--messages", "30", "--messages-per-connection", "3",
                            "--connections", "2", timeout=30)
    assert rc == 0 and rep["ok"] == 30, err
    assert 10 <= rep["connections_opened"] <= 11
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["connections"] == 1 + 40 + rep["connections_opened"]  # 1: wait_listen
    assert summary["messages"] == 70


def test_implicit_tls_one_message_per_connection_resumes(procs, tmp_path):
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--implicit-tls", "--json",
                            "--record", str(record), "--threads", "2")
    rc, rep, err = run_send(port, "--tls", "--messages", "60", "--messages-per-connection",
                            "1", "--connections", "3", "--threads", "1", timeout=30)
    assert rc == 0 and rep["ok"] == 60, err
    assert rep["connections_opened"] == rep["handshakes"] == 60 and rep["tls"] == "implicit"
    # The first handshake of each connection slot is a full one; later ones resume (tickets
    # from either sink thread: they share the ticket secret). No handshake fails.
    assert rep["handshakes_resumed"] == 60 - 3 and rep["conn_errors"] == 0
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["messages"] == 60 and summary["connections"] == 61
    assert summary["handshakes"] == 60 and summary["handshakes_resumed"] == rep["handshakes_resumed"]
    assert {l[4] for l in record_lines(record)} == {"TLSv1.3"}


def test_no_resume_forces_full_handshakes(procs):
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--implicit-tls", "--json")
    rc, rep, err = run_send(port, "--tls", "--no-resume", "--messages", "20",
                            "--messages-per-connection", "1", "--connections", "2", timeout=30)
    assert rc == 0 and rep["ok"] == 20, err
    assert rep["handshakes"] == 20 and rep["handshakes_resumed"] == 0
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["handshakes"] == 20 and summary["handshakes_resumed"] == 0


def test_starttls_without_offer_fails_clearly(procs):
    port, sink = start_sink(procs, "--threads", "1")
    rc, rep, err = run_send(port, "--starttls", "--messages", "5", "--connections", "1",
                            timeout=20)
    assert rc == 1 and rep["ok"] == 0 and rep["conn_errors"] >= 1
    assert "server does not offer STARTTLS" in rep["first_errors"][0]["text"]
    assert "nothing was delivered" in err


def test_tls_to_plaintext_server_fails_clearly(procs):
    port, sink = start_sink(procs, "--threads", "1")
    rc, rep, err = run_send(port, "--tls", "--messages", "5", "--connections", "1", timeout=20)
    assert rc == 1 and rep["ok"] == 0 and rep["handshakes"] == 0
    assert "TLS handshake" in rep["first_errors"][0]["text"]


def smtp_over(f, *lines):
    """Writes lines to the file-like f, returns the code of each reply, in order."""
    codes = []
    for line in lines:
        f.write(line.encode() + b"\r\n")
        f.flush()
        while True:
            got = f.readline()
            if got[3:4] != b"-":
                codes.append(int(got[:3]))
                break
    return codes


def test_python_starttls_client_against_sink(procs, tmp_path):
    """smtplib with OpenSSL: an independent TLS peer, as ringmx-bench send is not one."""
    import smtplib
    import ssl
    record = tmp_path / "record.tsv"
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--record", str(record), "--json",
                            "--threads", "1")
    ctx = ssl.create_default_context(cafile=os.path.join(FIXTURES, "ca.pem"))
    ctx.check_hostname = False  # smtplib would check "127.0.0.1"; the chain is still verified
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.ehlo("py.test")
        assert c.has_extn("starttls")
        c.starttls(context=ctx)
        c.ehlo("py.test")
        assert not c.has_extn("starttls")
        assert c.sock.version() == "TLSv1.3"
        c.sendmail("py@x.test", ["r@y.test"], b"Message-ID: <py1@tls.test>\r\n\r\nhello\r\n")
    tls12 = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    tls12.check_hostname, tls12.verify_mode = False, ssl.CERT_NONE
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as c:
        c.starttls(context=tls12)
        c.sendmail("py@x.test", ["r@y.test"], b"Message-ID: <py2@tls.test>\r\n\r\nhi\r\n")
    # Commands pipelined behind STARTTLS are dropped, never executed (RFC 3207 5).
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        f = raw.makefile("rwb")
        assert f.readline().startswith(b"220")
        f.write(b"EHLO x\r\nSTARTTLS\r\nMAIL FROM:<evil@x.test>\r\n")
        f.flush()
        got = b""
        while not got.endswith(b"220 2.0.0 ready to start TLS\r\n"):
            got += raw.recv(4096)
        ctx2 = ssl.create_default_context(cafile=os.path.join(FIXTURES, "ca.pem"))
        with ctx2.wrap_socket(raw, server_hostname="mx.ringmx.test") as s:
            tf = s.makefile("rwb")
            assert smtp_over(tf, "EHLO x", "RCPT TO:<r@y.test>", "QUIT") == [250, 503, 221]
    src, out, _ = procs.stop(sink)
    summary = json.loads(out)
    assert summary["handshakes"] == 3 and summary["tls_errors"] == 0
    assert [(l[3], l[4]) for l in record_lines(record)] == [("<py1@tls.test>", "TLSv1.3"),
                                                           ("<py2@tls.test>", "TLSv1.2")]


def test_python_implicit_tls_client_against_sink(procs):
    import smtplib
    import ssl
    port, sink = start_sink(procs, "--tls", TLS_ARG, "--implicit-tls", "--json")
    ctx = ssl.create_default_context(cafile=os.path.join(FIXTURES, "ca.pem"))
    ctx.check_hostname = False
    with smtplib.SMTP_SSL("127.0.0.1", port, timeout=10, context=ctx) as c:
        c.ehlo("py.test")
        assert not c.has_extn("starttls")
        c.sendmail("py@x.test", ["r@y.test"], b"Subject: x\r\n\r\nhello\r\n")
    src, out, _ = procs.stop(sink)
    assert json.loads(out)["messages"] == 1


def python_tls_server(resume):
    """An implicit-TLS SMTP server on Python's ssl (OpenSSL), one thread per connection."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(os.path.join(FIXTURES, "rsa.pem"), os.path.join(FIXTURES, "rsa.key"))
    if not resume:
        ctx.num_tickets = 0
    stats = {"messages": 0, "versions": set()}

    def session(conn):
        with ctx.wrap_socket(conn, server_side=True) as s:
            stats["versions"].add(s.version())
            f = s.makefile("rwb")
            f.write(b"220 py ESMTP\r\n")
            f.flush()
            while True:
                line = f.readline()
                if not line:
                    return
                verb = line[:4].upper()
                if verb == b"EHLO":
                    f.write(b"250-py\r\n250 PIPELINING\r\n")
                elif verb == b"DATA":
                    f.write(b"354 go\r\n")
                    f.flush()
                    while f.readline() != b".\r\n":
                        pass
                    stats["messages"] += 1
                    f.write(b"250 queued\r\n")
                elif verb == b"QUIT":
                    f.write(b"221 bye\r\n")
                    f.flush()
                    return
                else:
                    f.write(b"250 ok\r\n")
                f.flush()

    def behaviour(conn):  # fake_server closes conn on return: the session gets a copy
        threading.Thread(target=session, args=(conn.dup(),), daemon=True).start()

    port, close = fake_server(behaviour)
    return port, close, stats


@pytest.mark.parametrize("resume", [True, False], ids=["tickets", "no-tickets"])
def test_send_tls_against_python_ssl_server(resume):
    port, close, stats = python_tls_server(resume)
    try:
        rc, rep, err = run_send(port, "--tls", "--messages", "12", "--connections", "2",
                                "--messages-per-connection", "1", "--threads", "1",
                                "--timeout", "20", timeout=30)
        assert rc == 0 and rep["ok"] == 12, err
        assert rep["handshakes"] == 12 and stats["messages"] == 12
        assert stats["versions"] == {"TLSv1.3"}
        if resume:
            assert rep["handshakes_resumed"] == 12 - 2 and rep["conn_errors"] == 0
        else:
            assert rep["handshakes_resumed"] == 0
    finally:
        close()
