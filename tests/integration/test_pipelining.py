"""PIPELINING under pressure: more pipelined commands than the reply buffer holds are
all answered, in order, and the session stays usable."""
import socket


def read_lines(f, count):
    lines = []
    for _ in range(count):
        line = f.readline()
        assert line.endswith(b"\r\n"), "closed after %d of %d reply lines" % (len(lines), count)
        lines.append(line)
    return lines


def ehlo(sock, f, name):
    read_lines(f, 1)
    sock.sendall(b"EHLO " + name + b"\r\n")
    while not read_lines(f, 1)[0].startswith(b"250 "):
        pass


def test_flood_of_pipelined_commands_all_answered(ringmx):
    n = 20000	# about 20 bytes of reply each: several times the engine's output buffer
    with socket.create_connection(("127.0.0.1", ringmx.port), timeout=60) as s:
        f = s.makefile("rb")
        ehlo(s, f, b"flood.test")
        s.sendall(b"NOOP\r\n" * n + b"QUIT\r\n")
        noops = read_lines(f, n + 1)
    assert all(l.startswith(b"250 2.0.0") for l in noops[:n]), noops[:3]
    assert noops[n].startswith(b"221 ")


def test_pipelined_transaction_with_many_recipients(ringmx_factory):
    server = ringmx_factory(limits={"max_recipients": 1000})
    rcpts = [f"user{i}@example.test" for i in range(1000)]
    cmds = b"MAIL FROM:<s@sender.test>\r\n" + b"".join(
        f"RCPT TO:<{r}>\r\n".encode() for r in rcpts) + b"DATA\r\n"
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        f = s.makefile("rb")
        ehlo(s, f, b"many.test")
        s.sendall(cmds)
        replies = read_lines(f, 1002)
        assert replies[0].startswith(b"250")
        assert all(r.startswith(b"250 2.1.5") for r in replies[1:1001])
        assert replies[1001].startswith(b"354")
        s.sendall(b"Subject: many\r\n\r\nbody\r\n.\r\n")
        final = read_lines(f, 1)[0]
        assert final.startswith(b"250 2.0.0 Ok: queued as ")
    [msg] = server.queue()
    assert [r["address"] for r in msg["recipients"]] == rcpts
