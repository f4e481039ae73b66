"""Every 250 to DATA is on disk: kill -9, restart, torn and corrupt journals."""
import glob
import os
import random
import struct
import threading

from conftest import show_message, smtp_client, wait_until
from sinks import Sink
from test_smtp import queued_id

REC_MAGIC = b"RMXR"
SEG_HEADER_LEN = 32
REC_HEADER_LEN = 24


def send(server, n, rcpt="u@example.test", sender="a@client.example"):
    """One message over a fresh session; returns (queue id, the bytes sent)."""
    body = f"Subject: durable {n}\r\nX-Seq: {n}\r\n\r\n.dot line {n}\r\n{'x' * (n % 97)}\r\n"
    body = body.encode()
    with smtp_client(server) as s:
        s.ehlo("client.example")
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        return queued_id(s.data(body)), body


def restart(server):
    server.stop()
    return server.start()


def segments(server):
    """Every live journal segment, per worker directory, oldest first."""
    found = {}
    for path in sorted(glob.glob(os.path.join(server.spool, "*", "seg-*.log"))):
        found.setdefault(os.path.dirname(path), []).append(path)
    return found


REC_MESSAGE = 1  # journal.h JOURNAL_REC_MESSAGE; deferral records follow each message here


def record_end(off, length):
    """Where the record at off with a payload of length ends: header, payload, padding to 8."""
    return off + (REC_HEADER_LEN + length + 7) // 8 * 8


def record_offsets(path, rec_type=None):
    """(offset, payload length) of each record (of rec_type, if given) of a segment."""
    data = open(path, "rb").read()
    off, out = SEG_HEADER_LEN, []
    while off + REC_HEADER_LEN <= len(data) and data[off:off + 4] == REC_MAGIC:
        (kind,) = struct.unpack_from("<H", data, off + 4)
        (length,) = struct.unpack_from("<I", data, off + 8)
        if rec_type is None or kind == rec_type:
            out.append((off, length))
        off = record_end(off, length)
    return out


def write_torn(path, data):
    """Writes data where the next batch would have gone: right after the last record, over
    the zeros the journal writes ahead of small batches."""
    records = record_offsets(path)
    off, length = records[-1] if records else (SEG_HEADER_LEN - REC_HEADER_LEN, 0)
    with open(path, "r+b") as f:
        f.seek(record_end(off, length))
        f.write(data)


def test_kill9_right_after_250(ringmx_factory):
    server = ringmx_factory(workers=1)
    qid, body = send(server, 1)
    server.kill9()
    server.start()
    (m,) = server.queue()
    assert m["id"] == qid
    assert m["sender"] == "a@client.example"
    assert [r["address"] for r in m["recipients"]] == ["u@example.test"]
    assert m["client"] == {"addr": "127.0.0.1", "helo": "client.example", "protocol": "ESMTP",
                           "tls": "", "auth": ""}
    _, received, stored = show_message(server, qid)
    assert stored == body
    assert f"id {qid}" in received


def test_kill9_many_concurrent_messages(ringmx_factory):
    server = ringmx_factory(workers=4)
    threads_n, per_thread = 20, 25
    sent, errors = {}, []
    lock = threading.Lock()

    def client(t):
        try:
            mine = {}
            with smtp_client(server, timeout=30) as s:
                s.ehlo(f"t{t}.example")
                for k in range(per_thread):
                    n = t * per_thread + k
                    body = f"Subject: {n}\r\n\r\nmessage {n}\r\n".encode()
                    assert s.mail(f"t{t}@client.example")[0] == 250
                    assert s.rcpt(f"r{n}@example.test")[0] == 250
                    mine[queued_id(s.data(body))] = body
            with lock:
                sent.update(mine)
        except Exception as e:  # collected and asserted below
            with lock:
                errors.append(f"thread {t}: {e!r}")

    threads = [threading.Thread(target=client, args=(t,)) for t in range(threads_n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    server.kill9()
    assert not any(t.is_alive() for t in threads)
    assert errors == []
    assert len(sent) == threads_n * per_thread

    server.start()
    queue = {m["id"]: m for m in server.queue()}
    missing = sorted(set(sent) - set(queue))
    assert missing == [], f"{len(missing)} acknowledged messages lost"
    assert len(queue) == len(sent)
    for qid in random.Random(2).sample(sorted(sent), 15):
        assert show_message(server, qid)[2] == sent[qid]


def test_torn_tail_cut_and_messages_kept(ringmx_factory):
    server = ringmx_factory(workers=1)
    sent = dict(send(server, n) for n in range(3))
    server.stop()
    ((wdir, segs),) = segments(server).items()
    garbage = bytes(random.Random(7).randrange(256) for _ in range(77))
    write_torn(segs[-1], garbage)

    server.start()
    assert f"torn tail cut: {len(garbage)} bytes" in server.logtext()
    assert sorted(m["id"] for m in server.queue()) == sorted(sent)
    for qid, body in sent.items():
        assert show_message(server, qid)[2] == body
    # the journal keeps working after the cut, and the cut is not needed again
    qid, body = send(server, 10)
    sent[qid] = body
    server.stop()
    log_before = server.logtext().count("torn tail")
    server.start()
    assert server.logtext().count("torn tail") == log_before
    assert sorted(m["id"] for m in server.queue()) == sorted(sent)


def test_torn_partial_record_cut(ringmx_factory):
    """A half-written record (a valid header, the payload cut short) is a torn tail."""
    server = ringmx_factory(workers=1)
    sent = dict(send(server, n) for n in range(2))
    server.stop()
    ((_, segs),) = segments(server).items()
    data = open(segs[-1], "rb").read()
    off, length = record_offsets(segs[-1])[-1]
    partial = data[off:off + REC_HEADER_LEN + length // 2]
    write_torn(segs[-1], partial)

    server.start()
    assert f"torn tail cut: {len(partial)} bytes" in server.logtext()
    assert sorted(m["id"] for m in server.queue()) == sorted(sent)


def test_corrupt_record_quarantines_segment(ringmx_factory):
    server = ringmx_factory(workers=1)
    sent = dict(send(server, n) for n in range(3))
    server.stop()
    ((wdir, segs),) = segments(server).items()
    records = record_offsets(segs[-1], REC_MESSAGE)
    assert len(records) == 3
    off, length = records[0]
    with open(segs[-1], "r+b") as f:  # flip one payload byte of the first message
        f.seek(off + REC_HEADER_LEN + length // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))

    server.start()
    log = server.logtext()
    assert "quarantined as" in log, log
    assert os.path.exists(segs[-1] + ".corrupt")
    survivors = sorted(m["id"] for m in server.queue())
    assert survivors == sorted(sent)[1:], "the two intact messages are recovered"
    qid, _ = send(server, 20)  # and the server takes mail
    restart(server)
    assert sorted(m["id"] for m in server.queue()) == sorted(survivors + [qid])


def test_queue_ids_unique_across_restarts(ringmx_factory):
    server = ringmx_factory(workers=2)
    ids = []
    for round_ in range(3):
        ids += [send(server, round_ * 10 + n)[0] for n in range(4)]
        server.kill9() if round_ % 2 else server.stop()
        server.start()
    assert len(set(ids)) == len(ids)
    assert sorted(m["id"] for m in server.queue()) == sorted(ids)


def test_sync_none_warns_at_start(ringmx_factory):
    server = ringmx_factory(queue={"sync": "none"})
    warning = [line for line in server.logtext().splitlines() if "sync" in line]
    assert warning and "warning" in warning[0], server.logtext()
    qid, _ = send(server, 1)
    assert [m["id"] for m in server.queue()] == [qid]


def test_sync_always_is_silent(ringmx):
    assert "queue.sync" not in ringmx.logtext()


def test_segments_deleted_and_a_deferred_message_compacted_forward(ringmx_factory):
    """Segments of delivered mail are deleted; a message deferred for long is written again
    at the head, so its old segment goes too, and after kill -9 it is still queued."""
    with Sink() as sink:
        server = ringmx_factory(workers=1, routes={"stuck.test": "[127.0.0.1]:9",
                                                   "*": sink.route},
                                queue={"segment_size": "64K", "retry": ["1h"],
                                       "max_lifetime": "1d"})
        stuck, body = send(server, 1, rcpt="u@stuck.test")
        wait_until(lambda: "refused" in str(server.queue()[0]["recipients"][0]).lower(), 10,
                   "the deferral")
        bulk = b"Subject: bulk\r\n\r\n" + (b"y" * 76 + b"\r\n") * 26
        with smtp_client(server) as s:
            s.ehlo("client.example")
            for i in range(300):
                s.sendmail("a@client.example", [f"r{i}@example.test"], bulk)
        sink.wait_accepted(300, timeout=30)
        (seg_dir,) = segments(server)
        wait_until(lambda: [m["id"] for m in server.queue()] == [stuck], 15, "the bulk gone")
        # a message lagging COMPACT_LAG_SEGMENTS (4) behind the head is written forward
        wait_until(lambda: len(segments(server)[seg_dir]) <= 5, 15, "old segments deleted")
        left = segments(server)[seg_dir]
        assert int(os.path.basename(left[-1])[4:20], 16) >= 8  # the bulk took many segments
        assert not os.path.exists(os.path.join(seg_dir, "seg-0000000000000001.log"))
        server.kill9()
        server.start()
        (m,) = server.queue()
        assert m["id"] == stuck and m["recipients"][0]["state"] == "pending"
        assert "refused" in str(m["recipients"][0]).lower()  # its last error came along
        assert show_message(server, stuck)[2] == body
