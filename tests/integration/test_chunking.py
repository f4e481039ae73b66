"""CHUNKING (RFC 3030) inbound: BDAT messages are taken byte for byte, relayed exactly
(our Received: header first), pipelined with other commands, refused with their octets
still read, and durable once the final 250 is out."""
from conftest import RawSmtp, free_port, show_message, smtp_client
from sinks import Sink
from test_outbound import SHORT_QUEUE, relay_to, split_received
from test_smtp import queued_id

# Everything DATA would treat specially: dots, an end-of-data line, commands, 8-bit.
BODY = (b"From: from@client.example\r\nTo: to@example.test\r\nSubject: chunked\r\n\r\n"
        b".leading dot\r\n..two dots\r\n.\r\n\r\n.\r\nQUIT\r\nRSET\r\nMAIL FROM:<evil@x.example>\r\n"
        b"caf\xc3\xa9 8bit\r\nlast line\r\n")


def session(server, source="127.0.0.1"):
    raw = RawSmtp(server, source=source)
    assert raw.reply()[0] == 220
    code, text = raw.cmd("EHLO client.example")
    assert code == 250 and "CHUNKING" in [line[4:] for line in text.split("\n")], text
    return raw


def bdat(data, last=False):
    return b"BDAT %d%s\r\n" % (len(data), b" LAST" if last else b"") + data


def chunks(body, sizes):
    """body cut into pieces of the given sizes, then the rest as the LAST chunk."""
    out, at = [], 0
    for n in sizes:
        out.append(bdat(body[at:at + n]))
        at += n
    out.append(bdat(body[at:], last=True))
    return b"".join(out)


def replies(raw, n):
    return [raw.reply() for _ in range(n)]


def test_ehlo_advertises_chunking(ringmx):
    with smtp_client(ringmx) as s:
        s.ehlo("client.example")
        assert s.has_extn("chunking")


def test_bdat_message_relayed_exactly(ringmx_factory):
    with Sink() as sink:
        server = relay_to(ringmx_factory, sink)
        raw = session(server)
        raw.send(b"MAIL FROM:<from@client.example> BODY=8BITMIME\r\nRCPT TO:<to@example.test>\r\n")
        assert [c for c, _ in replies(raw, 2)] == [250, 250]
        # cut inside a CRLF, inside a ".\r\n" line, and right after "QUIT"
        at = [BODY.index(b"\r\n") + 1, BODY.index(b"\r\n.\r\n") + 3, BODY.index(b"QUIT") + 4]
        cuts = [at[0], at[1] - at[0], at[2] - at[1]]
        raw.send(chunks(BODY, cuts))
        got = replies(raw, 4)
        assert [t for _, t in got[:3]] == [f"250 2.0.0 {n} octets received" for n in cuts]
        qid = queued_id(got[3])
        assert raw.cmd("QUIT")[0] == 221
        (msg,) = sink.wait_accepted(1)
        received, rest = split_received(msg.data)
        assert rest == BODY
        assert received.startswith(b"Received: from client.example ")
        assert f"with ESMTP id {qid}".encode() in received
        assert msg.sender == "from@client.example" and msg.rcpts == ["to@example.test"]
        # relayed with DATA: dot-stuffed on the wire
        assert b"\r\n..leading dot\r\n...two dots\r\n..\r\n\r\n..\r\nQUIT\r\n" in msg.wire


def test_pipelined_transactions_on_one_connection(ringmx_factory):
    """MAIL, RCPT, BDAT..., BDAT LAST, MAIL... in one write; replies in order; the
    content without a final CRLF gets one."""
    bodies = [b"Subject: one\r\n\r\nfirst\r\n", b"Subject: two\r\n\r\nsecond, no CRLF",
              b"Subject: three\r\n\r\n" + (b"x" * 78 + b"\r\n") * 1300]
    with Sink() as sink:
        server = relay_to(ringmx_factory, sink)
        raw = session(server)
        txn = b"MAIL FROM:<a@client.example>\r\nRCPT TO:<to@example.test>\r\n"
        raw.send(txn + bdat(bodies[0], last=True) +
                 txn + chunks(bodies[1], [5, 0, 7]) +
                 txn + chunks(bodies[2], [1, 65536]) + b"QUIT\r\n")
        got = replies(raw, 3 + 6 + 5 + 1)
        codes = [c for c, _ in got]
        assert codes == [250] * 14 + [221], got
        qids = [queued_id(got[i]) for i in (2, 8, 13)]
        assert len(set(qids)) == 3
        msgs = sink.wait_accepted(3)
    by_id = {}
    for m in msgs:
        received, rest = split_received(m.data)
        by_id[next(q for q in qids if f"id {q}".encode() in received)] = rest
    assert [by_id[q] for q in qids] == [bodies[0], bodies[1] + b"\r\n", bodies[2]]


def test_refused_bdat_octets_are_read_not_run(ringmx_factory):
    server = ringmx_factory(limits={"max_errors": 100})
    evil = b"MAIL FROM:<evil@x.example>\r\nRCPT TO:<victim@example.test>\r\n"
    raw = session(server, source="127.0.0.2")  # untrusted: other domains are refused
    # no MAIL: 503, and the commands inside the chunk are content, dropped
    raw.send(bdat(evil + bdat(b"x", last=True), last=True) + b"NOOP\r\n")
    assert [c for c, _ in replies(raw, 2)] == [503, 250]
    # no accepted recipient: 554, and LAST ends the transaction so MAIL is not nested
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@other.example>\r\n" +
             bdat(evil, last=True) + b"MAIL FROM:<a@client.example>\r\n")
    got = replies(raw, 4)
    assert [c for c, _ in got] == [250, 554, 554, 250], got
    assert got[2][1].startswith("554 5.5.1")
    # DATA and RCPT after a BDAT: 503; the transaction goes on to be stored
    raw.send(b"RCPT TO:<u@example.test>\r\n" + bdat(b"Subject: a\r\n") + b"DATA\r\n" +
             b"RCPT TO:<v@example.test>\r\n" + bdat(b"\r\nbody\r\n", last=True))
    got = replies(raw, 5)
    assert [c for c, _ in got[:4]] == [250, 250, 503, 503], got
    assert got[2][1].startswith("503 5.5.1")
    qid = queued_id(got[4])
    # after the message: BDAT has no transaction; RSET between chunks drops the content
    raw.send(bdat(b"late", last=True) + b"MAIL FROM:<a@client.example>\r\n"
             b"RCPT TO:<u@example.test>\r\n" + bdat(b"dropped") + b"RSET\r\n" +
             bdat(b"more", last=True) + b"QUIT\r\n")
    assert [c for c, _ in replies(raw, 7)] == [503, 250, 250, 250, 250, 503, 221]
    (m,) = server.queue()
    assert m["id"] == qid and [r["address"] for r in m["recipients"]] == ["u@example.test"]
    assert show_message(server, qid)[2] == b"Subject: a\r\n\r\nbody\r\n"


def test_bdat_over_the_size_limit(ringmx_factory):
    limit = 4000
    server = ringmx_factory(limits={"max_message_size": limit})
    raw = session(server)
    txn = b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n"
    # over it in two chunks: the first is answered, LAST gets 552, the session goes on
    raw.send(txn + chunks(b"y" * (limit + 1), [limit - 10]) + b"NOOP\r\n")
    got = replies(raw, 5)
    assert [c for c, _ in got] == [250, 250, 250, 552, 250], got
    assert got[3][1].startswith("552 5.3.4")
    # a declared size far over it: its octets are still read and dropped
    huge = 8 * 1024 * 1024
    raw.send(txn + b"BDAT %d LAST\r\n" % huge)
    assert [c for c, _ in replies(raw, 2)] == [250, 250]
    for _ in range(huge // 65536):
        raw.send(b"MAIL FROM:<x@y>\r\n".ljust(65536, b"z"))
    raw.send(b"NOOP\r\n")
    got = replies(raw, 2)
    assert [c for c, _ in got] == [552, 250], got
    # exactly at the limit, final CRLF included: taken
    raw.send(txn + bdat(b"z" * (limit - 2) + b"\r\n", last=True))
    assert [c for c, _ in replies(raw, 2)] == [250, 250]
    qid = queued_id(raw.reply())
    assert [m["id"] for m in server.queue()] == [qid]


def test_unreadable_bdat_size_closes(ringmx):
    raw = session(ringmx)
    raw.send(b"BDAT 12x LAST\r\nRSET\r\nNOOP\r\n")
    code, text = raw.reply()
    assert code == 501 and text.startswith("501 5.5.4"), text
    code, text = raw.reply()
    assert code == 421, text
    assert raw.closed()


def test_bare_newlines_in_chunks(ringmx_factory):
    server = ringmx_factory()
    raw = session(server)
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n" +
             bdat(b"Subject: bare\n\nline\r") + bdat(b"\nbare cr\rend\r", last=True))
    got = replies(raw, 4)
    assert [c for c, _ in got[:3]] == [250, 250, 250]
    qid = queued_id(got[3])
    assert show_message(server, qid)[2] == b"Subject: bare\r\n\r\nline\r\nbare cr\r\nend\r\n"

    strict = ringmx_factory(sub="strict", limits={"bare_newline": "reject"})
    raw = session(strict)
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n" +
             bdat(b"Subject: bare\n\nline\r") + bdat(b"\nok", last=True) + b"NOOP\r\n")
    got = replies(raw, 5)
    assert [c for c, _ in got] == [250, 250, 250, 550, 250], got
    assert got[3][1].startswith("550 5.5.2")
    # a CRLF cut between two chunks is not bare
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n" +
             bdat(b"Subject: fine\r") + bdat(b"\n\r\nok", last=True))
    got = replies(raw, 4)
    qid = queued_id(got[3])
    assert show_message(strict, qid)[2] == b"Subject: fine\r\n\r\nok\r\n"


def test_hop_limit_applies_to_bdat(ringmx_factory):
    server = ringmx_factory(limits={"max_hops": 3})
    raw = session(server)
    hops = b"Received: from a by b; Thu, 1 Jan 2026 00:00:00 +0000\r\n" * 3
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n" +
             bdat(hops) + bdat(b"Subject: loop\r\n\r\nx\r\n", last=True))
    got = replies(raw, 4)
    assert [c for c, _ in got] == [250, 250, 250, 554], got
    assert got[3][1].startswith("554 5.4.6")
    assert server.queue() == []


def test_kill9_right_after_bdat_250_then_delivered(ringmx_factory):
    port = free_port()
    server = ringmx_factory(workers=1, routes={"*": f"[127.0.0.1]:{port}"}, queue=SHORT_QUEUE)
    raw = session(server)
    raw.send(b"MAIL FROM:<a@client.example>\r\nRCPT TO:<u@example.test>\r\n" +
             chunks(BODY, [100]))
    got = replies(raw, 4)
    qid = queued_id(got[3])
    server.kill9()
    raw.close()
    server.start()
    with Sink(port=port) as sink:
        (msg,) = sink.wait_accepted(1, timeout=30)
    received, rest = split_received(msg.data)
    assert rest == BODY
    assert f"id {qid}".encode() in received
