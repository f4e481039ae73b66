"""Connection, error, time and size limits, and a graceful stop."""
import signal
import time

from conftest import RawSmtp, wait_until
from test_smtp import queued_id


def quiet(server):
    """Waits until the start-up probe connection is gone, so limits count only ours."""
    wait_until(lambda: server.stats()["connections_active"] == 0, 5, "no active connections")
    return server


def session(server, source="127.0.0.1"):
    raw = RawSmtp(server, source=source)
    code, text = raw.reply()
    return raw, code, text


def assert_refused(server, source, reason):
    raw, code, text = session(server, source)
    assert code == 421 and text.startswith("421 4.7.0"), text
    assert raw.closed()
    wait_until(lambda: reason in server.logtext(), 5, f"a connect-refused line for {reason}")


def test_max_connections_per_ip(ringmx_factory):
    server = quiet(ringmx_factory(limits={"max_connections_per_ip": 3}))
    held = [session(server)[0] for _ in range(3)]
    assert_refused(server, "127.0.0.1", "reason=max_connections_per_ip")
    other, code, _ = session(server, "127.0.0.2")
    assert code == 220
    assert other.cmd("EHLO other.example")[0] == 250
    for raw in held:  # the held sessions are untouched
        assert raw.cmd("NOOP")[0] == 250
    held.pop().cmd("QUIT")
    # the released slot is free again once the server has seen the close
    raw, code, _ = wait_until(lambda: (lambda s: s if s[1] == 220 else None)(session(server)),
                              5, "a free per-IP slot")
    assert raw.cmd("QUIT")[0] == 221


def test_max_connections_total(ringmx_factory):
    server = quiet(ringmx_factory(workers=1, limits={"max_connections": 3}))
    held = [session(server, f"127.0.0.{n}") for n in (1, 2, 3)]
    assert [code for _, code, _ in held] == [220, 220, 220]
    assert_refused(server, "127.0.0.4", "reason=max_connections")
    assert server.stats()["connections_refused"] >= 1
    assert held[0][0].cmd("EHLO still.example")[0] == 250


def test_max_connections_is_per_server_not_per_worker(ringmx_factory):
    n = 12
    server = quiet(ringmx_factory(workers=n, limits={"max_connections": n}))
    held = [session(server, f"127.0.0.{k + 1}") for k in range(n)]
    assert [code for _, code, _ in held] == [220] * n


def test_max_errors(ringmx_factory):
    server = ringmx_factory(limits={"max_errors": 3})
    raw, _, _ = session(server)
    assert raw.cmd("EHLO client.example")[0] == 250
    assert raw.cmd("FROBNICATE")[0] == 500
    assert raw.cmd("RCPT TO:<u@example.test>")[0] == 503
    code, text = raw.cmd("BOGUS")
    if code == 500:  # the refusal itself may come first, then the 421
        code, text = raw.reply()
    assert code == 421 and text.startswith("421 4.7.0"), text
    assert raw.closed()


def expect_timeout(raw, low, high):
    """The next reply is 421 4.4.2, between low and high seconds from now; then the close."""
    t0 = time.monotonic()
    code, text = raw.reply()
    elapsed = time.monotonic() - t0
    assert code == 421 and text.startswith("421 4.4.2"), text
    assert low <= elapsed <= high, elapsed
    assert raw.closed()


def test_command_timeout(ringmx_factory):
    server = ringmx_factory(limits={"command_timeout": "2s", "data_timeout": "30s"})
    raw, _, _ = session(server)
    assert raw.cmd("EHLO client.example")[0] == 250
    expect_timeout(raw, 1.5, 4.0)
    assert "timeout client=127.0.0.1" in server.logtext()


def test_data_timeout(ringmx_factory):
    server = ringmx_factory(limits={"command_timeout": "30s", "data_timeout": "1s"})
    raw, _, _ = session(server)
    assert raw.cmd("EHLO client.example")[0] == 250
    transaction(raw)
    raw.send("Subject: slow\r\n\r\npart of a body\r\n")
    expect_timeout(raw, 0.5, 3.0)
    assert server.queue() == []


def transaction(raw, mail_args=""):
    assert raw.cmd(f"MAIL FROM:<a@client.example>{mail_args}")[0] == 250
    assert raw.cmd("RCPT TO:<u@example.test>")[0] == 250
    assert raw.cmd("DATA")[0] == 354


def body_of(size):
    head = b"Subject: size\r\n\r\n"
    line = b"x" * 98 + b"\r\n"
    body = head + line * ((size - len(head)) // len(line))
    body += b"y" * (size - len(body) - 2) + b"\r\n"
    assert len(body) == size
    return body


def test_max_message_size(ringmx_factory):
    limit = 4000
    server = ringmx_factory(limits={"max_message_size": limit})
    raw, _, _ = session(server)
    code, text = raw.cmd("EHLO client.example")
    assert f"SIZE {limit}" in text
    code, text = raw.cmd(f"MAIL FROM:<a@client.example> SIZE={limit + 1}")
    assert code == 552 and text.startswith("552 5.3.4"), text
    code, text = raw.cmd("MAIL FROM:<a@client.example> SIZE=99999999999999999999999")
    assert code in (552, 501) and text[4:5] == "5", text

    transaction(raw)  # an undeclared size, over the limit
    raw.send(body_of(limit + 1) + b".\r\n")
    code, text = raw.reply()
    assert code == 552 and text.startswith("552 5.3.4"), text

    transaction(raw, f" SIZE={limit}")  # declared honestly but sent over: still refused
    raw.send(body_of(3 * limit) + b".\r\n")
    code, text = raw.reply()
    assert code == 552 and text.startswith("552 5.3.4"), text
    assert server.queue() == []

    transaction(raw, f" SIZE={limit}")  # exactly at the limit: taken, and the session lives on
    raw.send(body_of(limit) + b".\r\n")
    qid = queued_id(raw.reply())
    assert raw.cmd("QUIT")[0] == 221
    (m,) = server.queue()
    assert m["id"] == qid


def test_max_recipients(ringmx_factory):
    server = ringmx_factory(limits={"max_recipients": 5})
    raw, _, _ = session(server)
    assert raw.cmd("EHLO client.example")[0] == 250
    assert raw.cmd("MAIL FROM:<a@client.example>")[0] == 250
    for k in range(5):
        assert raw.cmd(f"RCPT TO:<r{k}@example.test>")[0] == 250
    code, text = raw.cmd("RCPT TO:<r5@example.test>")
    assert code == 452 and text.startswith("452 4.5.3"), text
    assert raw.cmd("DATA")[0] == 354
    qid = queued_id(raw.cmd("Subject: five\r\n\r\nfive\r\n."))
    (m,) = server.queue()
    assert m["id"] == qid
    assert [r["address"] for r in m["recipients"]] == [f"r{k}@example.test" for k in range(5)]


def test_sigterm_with_idle_connection(ringmx):
    raw, _, _ = session(ringmx)
    assert raw.cmd("EHLO idle.example")[0] == 250
    t0 = time.monotonic()
    ringmx.proc.send_signal(signal.SIGTERM)
    code, text = raw.reply()
    assert code == 421 and text.startswith("421 4."), text
    assert raw.closed()
    rc = ringmx.proc.wait(10)
    assert rc == 0
    assert time.monotonic() - t0 < 5


def test_sigterm_lets_a_transaction_finish(ringmx):
    raw, _, _ = session(ringmx)
    assert raw.cmd("EHLO busy.example")[0] == 250
    transaction(raw)
    raw.send("Subject: in flight\r\n\r\nfirst half\r\n")
    ringmx.proc.send_signal(signal.SIGTERM)
    time.sleep(0.5)
    raw.send("second half\r\n.\r\n")
    qid = queued_id(raw.reply())
    code, text = raw.cmd("QUIT")
    assert code in (221, 421), text
    assert ringmx.proc.wait(10) == 0
    ringmx.stop()
    ringmx.start()
    assert [m["id"] for m in ringmx.queue()] == [qid]
