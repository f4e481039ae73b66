"""Outbound relay end to end: ringmx relays to a recording sink on loopback; what arrives is
checked byte for byte, and retries, connection limits, queue control and faults of the
remote give the right per-recipient outcome."""
import datetime
import re
import threading

from conftest import free_port, show_message, smtp_client, wait_until
from sinks import CLOSE, CUT, Sink, first_n
from test_smtp import queued_id

SHORT_QUEUE = {"retry": ["1s", "2s"], "max_lifetime": "60s"}


def split_received(data):
    """(our Received: header with its folded lines, the rest) of a message as the sink got it."""
    received, rest = data.split(b"\r\n", 1)
    while rest[:1] in (b" ", b"\t"):
        more, rest = rest.split(b"\r\n", 1)
        received += b"\r\n" + more
    return received, rest


def relay_to(factory, sink, queue=None, **overrides):
    """A ringmx whose every recipient goes to sink, on a short retry schedule."""
    return factory(routes={"*": sink.route}, queue=queue or SHORT_QUEUE, **overrides)


def send(server, body, sender="from@client.example", rcpts=("to@example.test",)):
    with smtp_client(server) as s:
        s.ehlo("client.example")
        assert s.mail(sender)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        return queued_id(s.data(body))


def outcome_lines(server, qid, outcome):
    return [line for line in server.logtext().splitlines()
            if f"{qid} {outcome} " in line]


def log_time(line):
    """Seconds since the epoch of a log line's ISO timestamp."""
    return datetime.datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()


def wait_empty(server, timeout=15.0):
    wait_until(lambda: server.queue() == [], timeout, "an empty queue")


def rcpt_state(server, qid):
    (m,) = [m for m in server.queue() if m["id"] == qid]
    return m["recipients"][0]


BODY = (b"From: from@client.example\r\nTo: to@example.test\r\nSubject: relay exact\r\n"
        b"Message-ID: <exact.1@client.example>\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\n. \r\n.\tdot tab\r\ncaf\xc3\xa9 8bit\r\n"
        b"line with trailing spaces   \r\n\r\nlast line\r\n")


def test_relayed_message_arrives_exactly(ringmx_factory):
    with Sink() as sink:
        server = relay_to(ringmx_factory, sink)
        rcpts = ["one@example.test", "Two@Example.Test", "three@other.example"]
        qid = send(server, BODY, sender="Sender.Name@client.example", rcpts=rcpts)
        (msg,) = sink.wait_accepted(1)
        wait_empty(server)

        assert msg.sender == "Sender.Name@client.example"
        assert msg.rcpts == rcpts  # all of them, in one transaction
        assert len(sink.messages) == 1
        received, rest = split_received(msg.data)
        assert received.startswith(b"Received: from client.example ")
        assert f"id {qid}".encode() in received
        assert rest == BODY
        # dot-stuffed on the wire: every line starting with "." got one more
        assert b"\r\n..leading dot\r\n...two dots\r\n..\r\n.. \r\n..\tdot tab\r\n" in msg.wire
        assert msg.wire.endswith(b"last line\r\n.\r\n")

        stats = server.stats()
        assert stats["rcpts_delivered"] == 3
        assert stats["rcpts_deferred"] == 0 and stats["rcpts_bounced"] == 0
        assert stats["queue_messages"] == 0
        lines = outcome_lines(server, qid, "delivered")
        assert len(lines) == 3, lines
        assert all("relay=" in line and "code=250" in line and "attempt=1" in line
                   for line in lines)
        assert any("to=Two@Example.Test" in line for line in lines)


def test_received_header_matches_the_stored_one(ringmx_factory):
    """What the sink gets is what `ringmxctl show` had queued (our Received: first)."""
    with Sink(rcpt_policy=first_n(["451 4.3.0 later"])) as sink:
        server = relay_to(ringmx_factory, sink, queue={"retry": ["1h"], "max_lifetime": "1d"})
        qid = send(server, BODY)
        wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
        _, received, stored = show_message(server, qid)
        assert stored == BODY
        server.ctl("flush")
        (msg,) = sink.wait_accepted(1)
        assert msg.data == received.encode() + BODY


def test_delete_refused_during_a_transaction(ringmx_factory):
    release, entered = threading.Event(), threading.Event()

    def stall(txn):
        entered.set()
        release.wait(10)  # the message is in ringmx's transaction until we answer
        return None

    with Sink(data_policy=stall) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: busy\r\n\r\nbusy\r\n")
        assert entered.wait(10), "the message never reached the next hop"
        r = server.ctl("delete", qid, check=False)
        release.set()
        assert r.returncode != 0
        assert r.stderr.strip(), "a refusal says why"
        sink.wait_accepted(1)
        wait_empty(server)
        assert len(outcome_lines(server, qid, "delivered")) == 1


def test_temporary_failure_retried_then_delivered(ringmx_factory):
    with Sink(rcpt_policy=first_n(["451 4.3.0 try later", "451 4.3.0 still busy"])) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: retry\r\n\r\nretry me\r\n")
        (msg,) = sink.wait_accepted(1, timeout=20)
        wait_empty(server)
        deferred = outcome_lines(server, qid, "deferred")
        assert len(deferred) == 2, deferred
        assert "code=451" in deferred[0] and "attempt=1" in deferred[0]
        assert 'still busy' in deferred[1] and "attempt=2" in deferred[1]
        (done,) = outcome_lines(server, qid, "delivered")
        assert "attempt=3" in done
        assert len(sink.messages) == 1 and msg.rcpts == ["to@example.test"]
        # the retry intervals (1 s, then 2 s) were waited for
        t = [log_time(line) for line in deferred + [done]]
        assert t[1] - t[0] >= 0.9 and t[2] - t[1] >= 1.9, t
        stats = server.stats()
        assert stats["rcpts_deferred"] == 2 and stats["rcpts_delivered"] == 1


def test_temporary_failure_waits_for_the_retry_interval(ringmx_factory):
    """A deferred recipient is not retried before queue.retry says."""
    with Sink(rcpt_policy=first_n(["451 4.3.0 later"])) as sink:
        server = relay_to(ringmx_factory, sink, queue={"retry": ["3s"], "max_lifetime": "1m"})
        qid = send(server, b"Subject: wait\r\n\r\nwait\r\n")
        wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
        state = rcpt_state(server, qid)
        assert state["state"] in ("pending", "deferred"), state
        assert "451 4.3.0 later" in str(state)
        threading.Event().wait(1.5)
        assert sink.accepted() == []  # still waiting for its 3 s
        sink.wait_accepted(1, timeout=10)
        wait_empty(server)


def concurrency_run(factory, workers, max_conn, max_msgs, n=50):
    def slow_data(txn):
        threading.Event().wait(0.02)  # keep connections busy so the limit is reached
        return None

    with Sink(data_policy=slow_data) as sink:
        server = relay_to(factory, sink, workers=workers, outbound={
            "max_connections_per_destination": max_conn,
            "max_messages_per_connection": max_msgs})
        errors = []

        def client(k):
            try:
                for i in range(n // 10):
                    send(server, f"Subject: c{k}.{i}\r\n\r\nbody {k} {i}\r\n".encode(),
                         rcpts=[f"r{k}.{i}@example.test"])
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(repr(e))

        threads = [threading.Thread(target=client, args=(k,)) for k in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert errors == []
        got = sink.wait_accepted(n, timeout=30)
        wait_empty(server)
        assert sorted(m.rcpts[0] for m in got) == sorted(
            f"r{k}.{i}@example.test" for k in range(10) for i in range(n // 10))
        return sink


def test_max_messages_per_connection(ringmx_factory):
    sink = concurrency_run(ringmx_factory, workers=1, max_conn=2, max_msgs=3)
    per_conn = list(sink.txns_per_conn.values())
    assert max(per_conn) <= 3, per_conn
    assert sink.connections >= 50 // 3
    assert sink.max_concurrent <= 2


def test_max_connections_per_destination_one_worker(ringmx_factory):
    sink = concurrency_run(ringmx_factory, workers=1, max_conn=2, max_msgs=100)
    assert sink.max_concurrent <= 2, sink.max_concurrent
    # connections were reused rather than opened per message
    assert sink.connections < 50, sink.connections


def test_max_connections_per_destination_two_workers(ringmx_factory):
    sink = concurrency_run(ringmx_factory, workers=2, max_conn=2, max_msgs=100)
    assert sink.max_concurrent <= 2, sink.max_concurrent


def test_hold_release(ringmx_factory):
    with Sink(rcpt_policy=first_n(["451 4.3.0 later"])) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: hold\r\n\r\nhold me\r\n")
        wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
        server.ctl("hold", qid)
        (m,) = server.queue()
        assert m["state"] == "held", m
        threading.Event().wait(3.0)  # longer than the 1 s retry
        assert sink.accepted() == []
        assert len(outcome_lines(server, qid, "deferred")) == 1
        server.ctl("release", qid)
        assert all(m["state"] == "queued" for m in server.queue())  # or already gone
        sink.wait_accepted(1, timeout=10)
        wait_empty(server)


def test_flush_sends_deferred_now(ringmx_factory):
    with Sink(rcpt_policy=first_n(["451 4.3.0 later"])) as sink:
        server = relay_to(ringmx_factory, sink, queue={"retry": ["1h"], "max_lifetime": "1d"})
        qid = send(server, b"Subject: flush\r\n\r\nflush me\r\n")
        wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
        threading.Event().wait(1.0)
        assert sink.accepted() == []
        server.ctl("flush")
        sink.wait_accepted(1, timeout=5)
        wait_empty(server)
        assert "attempt=2" in outcome_lines(server, qid, "delivered")[0]


def test_delete_removes_without_bounce(ringmx_factory):
    with Sink(rcpt_policy=lambda txn, a: "451 4.3.0 later" if a.startswith("to@") else None) \
            as sink:
        server = relay_to(ringmx_factory, sink, queue={"retry": ["1h"], "max_lifetime": "1d"})
        qid = send(server, b"Subject: delete\r\n\r\ndelete me\r\n")
        wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
        server.ctl("delete", qid)
        assert server.queue() == []
        server.ctl("flush")
        threading.Event().wait(1.0)
        assert sink.accepted() == []  # no bounce to from@client.example either
        assert f"{qid} bounce" not in server.logtext()
        assert server.stats()["queue_messages"] == 0
        r = server.ctl("delete", qid, check=False)
        assert r.returncode != 0  # gone


def test_sink_down_deferred_then_delivered(ringmx_factory):
    port = free_port()
    server = ringmx_factory(routes={"*": f"[127.0.0.1]:{port}"},
                            queue={"retry": ["1h"], "max_lifetime": "1d"})
    qid = send(server, b"Subject: down\r\n\r\nsink down\r\n")
    (line,) = wait_until(lambda: outcome_lines(server, qid, "deferred"), 10, "a deferral")
    assert "code=451" in line and "4.4.1" in line
    assert re.search(r"[Cc]onnection refused", line), line
    state = rcpt_state(server, qid)
    assert "refused" in str(state).lower(), state
    with Sink(port=port) as sink:
        # the destination rests a few seconds after a refused connection; flush until it goes
        wait_until(lambda: server.ctl("flush") and sink.accepted(), 20, "delivery after flush")
        wait_empty(server)
    assert len(sink.accepted()) == 1
    assert server.stats()["rcpts_delivered"] == 1


def test_close_before_data_reply_is_redelivered(ringmx_factory):
    """No reply to the final dot: not delivered, so sent again later (at-least-once)."""
    with Sink(data_policy=first_n([CLOSE])) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: twice\r\n\r\nclosed before the reply\r\n")
        sink.wait_accepted(1, timeout=20)
        wait_empty(server)
        assert len(sink.messages) == 2  # the first copy was complete, but unacknowledged
        assert sink.messages[0].data == sink.messages[1].data
        (deferred,) = outcome_lines(server, qid, "deferred")
        assert "code=4" in deferred
        assert len(outcome_lines(server, qid, "delivered")) == 1


def test_close_mid_data_is_redelivered(ringmx_factory):
    with Sink(data_start_policy=first_n([CUT])) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: cut\r\n\r\n" + b"x" * 70 + b"\r\n" * 200)
        (msg,) = sink.wait_accepted(1, timeout=20)
        wait_empty(server)
        assert msg.data.endswith(b"x" * 70 + b"\r\n" * 200)
        (deferred,) = outcome_lines(server, qid, "deferred")
        assert "code=4" in deferred
        assert len(outcome_lines(server, qid, "delivered")) == 1


def test_close_mid_transaction_is_redelivered(ringmx_factory):
    with Sink(rcpt_policy=first_n([None, CLOSE])) as sink:
        # second RCPT of the first transaction: connection dropped mid-transaction
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: mid\r\n\r\nmid\r\n", rcpts=["a@example.test",
                                                                     "b@example.test"])
        (msg,) = sink.wait_accepted(1, timeout=20)
        wait_empty(server)
        assert msg.rcpts == ["a@example.test", "b@example.test"]
        assert len(outcome_lines(server, qid, "deferred")) == 2
        assert len(outcome_lines(server, qid, "delivered")) == 2


def test_250_then_close_is_delivered(ringmx_factory):
    """A 250 to DATA counts even if the remote hangs up before QUIT."""
    with Sink(data_policy=first_n([("250 2.0.0 taken", CLOSE)])) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: once\r\n\r\nonce\r\n")
        sink.wait_accepted(1)
        wait_empty(server)
        threading.Event().wait(1.5)  # a wrongly deferred copy would come back after 1 s
        assert len(sink.messages) == 1
        assert outcome_lines(server, qid, "deferred") == []
        (line,) = outcome_lines(server, qid, "delivered")
        assert "taken" in line
        assert server.stats()["rcpts_delivered"] == 1


def test_stop_cuts_a_stalled_delivery_short_and_keeps_the_message(ringmx_factory):
    """SIGTERM while the next hop sits on our DATA: after the grace period ringmx gives up
    the transaction, exits 0, and the message is still queued after the restart."""
    release, entered = threading.Event(), threading.Event()

    def stall(txn):
        entered.set()
        release.wait(30)  # the reply to the message never comes while ringmx runs
        return None

    with Sink(data_policy=stall) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, b"Subject: stalled\r\n\r\nstalled\r\n")
        assert entered.wait(10), "the message never reached the next hop"
        t0 = datetime.datetime.now()
        assert server.stop() == 0
        took = (datetime.datetime.now() - t0).total_seconds()
        assert took < 15, f"stop took {took:.1f} s with a stalled next hop"
        release.set()
        assert "shutting down" in server.logtext()
        server.start()
        assert [m["id"] for m in server.queue()] == [qid]
