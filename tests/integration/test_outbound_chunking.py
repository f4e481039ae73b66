"""Outbound BDAT (RFC 3030): to a next hop with CHUNKING and PIPELINING, ringmx sends each
message unstuffed in one BDAT LAST chunk and keeps several transactions in flight on one
connection; a failure of one transaction touches only its own recipients, and a connection
lost with transactions in flight loses none of them."""
import threading

from conftest import wait_until
from sinks import CLOSE, Sink
from test_outbound import BODY, outcome_lines, relay_to, send, split_received, wait_empty

CHUNKING = ("PIPELINING", "8BITMIME", "SIZE 100000000", "ENHANCEDSTATUSCODES", "CHUNKING")
ONE_CONN = {"max_connections_per_destination": 1, "max_messages_per_connection": 1000}
LATER = {"retry": ["1h"], "max_lifetime": "1d"}


def test_bdat_message_arrives_exactly_unstuffed(ringmx_factory):
    with Sink(extensions=CHUNKING) as sink:
        server = relay_to(ringmx_factory, sink)
        qid = send(server, BODY, rcpts=["one@example.test", "two@other.example"])
        (msg,) = sink.wait_accepted(1)
        wait_empty(server)
        assert msg.verb == "BDAT"
        assert msg.rcpts == ["one@example.test", "two@other.example"]
        received, rest = split_received(msg.data)
        assert f"id {qid}".encode() in received
        assert rest == BODY  # byte for byte, the dot lines not stuffed
        assert b"\r\n.\r\n" in msg.wire and b"\r\n..leading" not in msg.wire
        assert "DATA" not in sink.verbs


def test_data_when_chunking_is_not_offered(ringmx_factory):
    with Sink() as sink:
        server = relay_to(ringmx_factory, sink)
        send(server, BODY)
        (msg,) = sink.wait_accepted(1)
        assert msg.verb == "DATA" and "BDAT" not in sink.verbs
        assert split_received(msg.data)[1] == BODY


def queue_then_flush(factory, sink, gate, n, **overrides):
    """n messages deferred while gate is set, then sent together by one flush."""
    queue = overrides.pop("queue", LATER)
    server = relay_to(factory, sink, queue=queue, outbound=ONE_CONN, workers=1, **overrides)
    qids = [send(server, f"Subject: m{i}\r\n\r\nmessage {i}\r\n".encode(),
                 rcpts=[f"r{i}@example.test"]) for i in range(n)]
    wait_until(lambda: all(outcome_lines(server, q, "deferred") for q in qids), 15,
               "every message deferred")
    gate.clear()
    server.ctl("flush")
    return server, qids


def test_transactions_pipelined_on_one_connection(ringmx_factory):
    gate = threading.Event()
    gate.set()
    with Sink(extensions=CHUNKING,
              rcpt_policy=lambda txn, a: "451 4.3.0 not yet" if gate.is_set() else None) as sink:
        server, qids = queue_then_flush(ringmx_factory, sink, gate, 40)
        got = sink.wait_accepted(40, timeout=20)
        wait_empty(server)
        assert sorted(m.rcpts[0] for m in got) == sorted(f"r{i}@example.test" for i in range(40))
        assert all(m.verb == "BDAT" for m in got)
        assert max(sink.txns_per_conn.values()) == 40  # all on the one connection
        # a transaction sent while another is in flight starts with RSET: proof of the window
        assert sink.verbs.count("RSET") > 0
        assert server.stats()["rcpts_delivered"] == 40


def test_failures_in_the_window_touch_only_their_transaction(ringmx_factory):
    gate = threading.Event()
    gate.set()
    tempfailed = set()

    def rcpt(txn, address):
        if gate.is_set():
            return "451 4.3.0 not yet"
        return "550 5.1.1 no such user" if address == "r3@example.test" else None

    def data(txn):
        if txn.rcpts == ["r5@example.test"] and not tempfailed:
            tempfailed.add(5)
            return "452 4.3.1 try later"
        return None

    with Sink(extensions=CHUNKING, rcpt_policy=rcpt, data_policy=data) as sink:
        server, qids = queue_then_flush(ringmx_factory, sink, gate, 10,
                                        queue={"retry": ["1s"], "max_lifetime": "1d"})
        wait_until(lambda: {m.rcpts[0] for m in sink.accepted()} >=
                   {f"r{i}@example.test" for i in range(10) if i != 3}, 20, "nine delivered")
        wait_empty(server)
        assert len(outcome_lines(server, qids[3], "bounced")) == 1
        (deferred,) = [line for line in outcome_lines(server, qids[5], "deferred")
                       if "4.3.1" in line]
        assert "try later" in deferred
        for i in (0, 1, 2, 4, 6, 7, 8, 9):
            assert len(outcome_lines(server, qids[i], "delivered")) == 1, i
        # the bounce for r3 went back to the sender's domain, through the same sink
        bounces = [m for m in sink.accepted() if m.sender == ""]
        assert len(bounces) == 1 and b"5.1.1" in bounces[0].data


def test_connection_lost_with_transactions_in_flight(ringmx_factory):
    gate = threading.Event()
    gate.set()
    closed = []

    def data(txn):
        if txn.rcpts == ["r4@example.test"] and not closed:
            closed.append(txn.conn)
            return CLOSE
        return None

    with Sink(extensions=CHUNKING, data_policy=data,
              rcpt_policy=lambda txn, a: "451 4.3.0 not yet" if gate.is_set() else None) as sink:
        server, qids = queue_then_flush(ringmx_factory, sink, gate, 20,
                                        queue={"retry": ["1s"], "max_lifetime": "1d"})
        wait_until(lambda: {m.rcpts[0] for m in sink.accepted()} >=
                   {f"r{i}@example.test" for i in range(20)}, 20, "all twenty delivered")
        wait_empty(server)
        assert closed
        # no reply to r4: deferred with the lost connection, and delivered later
        assert any("4.4.2" in line for line in outcome_lines(server, qids[4], "deferred"))
        assert server.stats()["rcpts_delivered"] == 20
        # a message acknowledged before the close is never sent twice
        for i in range(4):
            assert len([m for m in sink.accepted() if m.rcpts == [f"r{i}@example.test"]]) == 1


def test_ringmx_to_ringmx_over_bdat(ringmx_factory):
    """Two ringmx in a row: the second offers CHUNKING and PIPELINING, so the first sends it
    pipelined BDAT transactions on one connection; every message arrives unchanged."""
    with Sink() as sink:
        second = ringmx_factory(sub="second", routes={"*": sink.route}, queue=LATER,
                                relay_domains=["example.test"])
        first = ringmx_factory(sub="first", routes={"*": f"[127.0.0.1]:{second.port}"},
                               queue=LATER, outbound=ONE_CONN, workers=1)
        bodies = {f"r{i}@example.test": f"Subject: chain {i}\r\n\r\n.{i}\r\n".encode()
                  for i in range(30)}
        for rcpt, body in bodies.items():
            send(first, body, rcpts=[rcpt])
        got = sink.wait_accepted(30, timeout=20)
        wait_empty(first)
        wait_empty(second)
        for m in got:
            _, rest = split_received(m.data)
            _, rest = split_received(rest)  # the first ringmx's Received: header
            assert rest == bodies[m.rcpts[0]]
        assert second.stats()["messages_accepted"] == 30
