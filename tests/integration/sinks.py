"""A recording SMTP sink for outbound tests: a small threaded server on loopback that keeps
every message exactly as it arrived (the wire bytes and the dot-unstuffed DATA, or the BDAT
chunks when CHUNKING is among its extensions), counts
connections, concurrent connections and transactions per connection, and answers RCPT and
DATA as a test's policy says (including closing the connection at chosen moments).

With tls=(certificate, key) it offers STARTTLS (Python's ssl, one context per sink, so a
client can resume its session on a later connection) and records each connection's TLS
version, suite, resumption and SNI; starttls_policy makes the STARTTLS step misbehave
(GARBAGE, INJECT) for the client-side robustness tests.

It is written on bare sockets rather than aiosmtpd so that the bytes on the wire and the
exact moment of a close stay under the test's control.
"""
import socket
import socketserver
import ssl
import threading
import time
from dataclasses import dataclass, field

CLOSE = "close"  # a policy's answer: drop the connection instead of replying
CUT = "cut"  # data_start_policy's answer: 354, then drop the connection mid-message
LINE_MAX = 4096
GARBAGE = "garbage"  # starttls_policy: 220, then bytes that are no TLS record, then close
INJECT = "inject"  # starttls_policy: "220 go" and a forged "250" in one write, then TLS


@dataclass
class Message:
    sender: str
    rcpts: list
    data: bytes  # DATA after dot-unstuffing, with CRLFs, without the final ".\r\n"
    wire: bytes  # DATA exactly as received, up to and including ".\r\n" (BDAT: the chunks)
    conn: int  # which connection (1, 2, ...) carried it
    reply: str = ""  # what the sink answered to DATA or BDAT LAST
    verb: str = "DATA"  # or "BDAT"
    tls: str = ""  # the TLS version it came over ("TLSv1.3"), "" for plaintext


@dataclass
class Txn:
    """The transaction in progress, handed to the policies."""
    sink: "Sink"
    conn: int
    sender: str = ""
    rcpts: list = field(default_factory=list)
    chunks: list = field(default_factory=list)  # BDAT octets so far


class _Handler(socketserver.StreamRequestHandler):
    timeout = 30

    def handle(self):
        sink = self.server.sink
        self.tls = None  # the connection's TLS record in sink.tls_sessions, once secured
        conn = sink._opened(self.request)
        try:
            self._session(sink, conn)
        except (OSError, EOFError):
            pass
        finally:
            sink._closed(self.request)

    def _send(self, line):
        self.wfile.write(line.encode() + b"\r\n")

    def _line(self):
        line = self.rfile.readline(LINE_MAX)
        if not line:
            raise EOFError
        return line

    def _session(self, sink, conn):
        self._send(f"220 {sink.name} ESMTP sink")
        txn = None
        while True:
            raw = self._line()
            line = raw.rstrip(b"\r\n").decode(errors="replace")
            verb = line[:4].upper()
            with sink.lock:
                sink.verbs.append(verb)
            if verb in ("EHLO", "HELO"):
                txn = None
                ext = sink.extensions if verb == "EHLO" else []
                if verb == "EHLO" and sink.tls_context and self.tls is None:
                    ext = ext + ["STARTTLS"]
                lines = [sink.name] + list(ext)  # RFC 5321 §4.1.1.1: the domain first
                for e in lines[:-1]:
                    self._send(f"250-{e}")
                self._send(f"250 {lines[-1]}")
            elif verb == "MAIL":
                txn = Txn(sink, conn, sender=_path(line))
                self._send("250 2.1.0 ok")
            elif verb == "RCPT" and txn is not None:
                reply = sink.rcpt_policy(txn, _path(line)) or "250 2.1.5 ok"
                if reply == CLOSE:
                    return
                if reply.startswith("2"):
                    txn.rcpts.append(_path(line))
                self._send(reply)
            elif verb == "DATA" and txn is not None:
                if not txn.rcpts:
                    self._send("554 5.5.1 no valid recipients")
                    continue
                start = sink.data_start_policy(txn) or "354 go ahead"
                if start == CUT:
                    self._send("354 go ahead")
                    self._line()  # part of the message, then the connection drops
                    return
                self._send(start)
                if not start.startswith("354"):
                    continue
                if not self._data(sink, txn):
                    return
                txn = None
            elif verb == "BDAT" and "CHUNKING" in sink.extensions:
                if not self._bdat(sink, txn, line):
                    return
                if line.upper().endswith(" LAST"):
                    txn = None
            elif line.upper() == "STARTTLS" and sink.tls_context and self.tls is None:
                if not self._starttls(sink, conn):
                    return
                txn = None  # RFC 3207 §4.2: everything known before is forgotten
            elif verb == "RSET":
                txn = None
                self._send("250 2.0.0 ok")
            elif verb == "NOOP":
                self._send("250 2.0.0 ok")
            elif verb == "QUIT":
                sink._closed(self.request)  # the client is done: its slot is free now
                self._send("221 2.0.0 bye")
                return
            else:
                self._send("503 5.5.1 bad sequence")

    def _starttls(self, sink, conn):
        """The server side of STARTTLS as starttls_policy says; False when the connection
        is to be dropped."""
        policy = sink.starttls_policy
        if policy == GARBAGE:
            self.wfile.write(b"220 2.0.0 go ahead\r\n")
            self.wfile.write(b"this is no TLS record\r\n" * 8)
            with sink.lock:
                sink.tls_failures += 1
            return False
        self.wfile.write(b"220 2.0.0 go\r\n250 forged\r\n" if policy == INJECT
                         else b"220 2.0.0 ready to start TLS\r\n")
        raw = self.request
        try:
            tls = sink.tls_context.wrap_socket(raw, server_side=True)
        except (OSError, ValueError):
            with sink.lock:
                sink.tls_failures += 1
            return False
        self.request = tls
        with sink.lock:
            sink.socks.discard(raw)
            sink.socks.add(tls)
            self.tls = {"conn": conn, "version": tls.version(), "cipher": tls.cipher()[0],
                        "resumed": tls.session_reused, "sni": getattr(tls, "sni", None)}
            sink.tls_sessions.append(self.tls)
        self.rfile = tls.makefile("rb")
        self.wfile = socketserver._SocketWriter(tls)
        return True

    def _data(self, sink, txn):
        """Reads one message; False when the policy closes the connection."""
        wire, data = [], []
        while True:
            raw = self._line()
            wire.append(raw)
            if raw == b".\r\n":
                break
            data.append(raw[1:] if raw.startswith(b".") else raw)
        return self._message(sink, txn, b"".join(data), b"".join(wire), "DATA")

    def _message(self, sink, txn, data, wire, verb):
        """A complete message, answered as data_policy says; False when it closes."""
        reply = sink.data_policy(txn) or "250 2.0.0 ok: stored"
        after = False
        if isinstance(reply, tuple):  # (reply, CLOSE): answer, then hang up at once
            reply, after = reply[0], reply[1] == CLOSE
        msg = Message(txn.sender, list(txn.rcpts), data, wire, txn.conn,
                      reply if reply != CLOSE else "", verb,
                      self.tls["version"] if self.tls else "")
        sink._stored(msg, counted=reply != CLOSE and reply.startswith("2"))
        if reply == CLOSE:
            return False
        self._send(reply)
        return not after


    def _bdat(self, sink, txn, line):
        """RFC 3030: the octets are read whatever the reply; False when the policy closes."""
        words = line.split()
        size = int(words[1]) if len(words) >= 2 and words[1].isdigit() else -1
        if size < 0:
            self._send("501 5.5.4 BDAT size")
            return True
        chunk = self.rfile.read(size)
        if len(chunk) < size:
            raise EOFError
        if txn is None:
            self._send("503 5.5.1 no MAIL")
            return True
        if not txn.rcpts:
            self._send("554 5.5.1 no valid recipients")
            return True
        txn.chunks.append(chunk)
        if len(words) < 3:
            self._send(f"250 2.0.0 {size} octets")
            return True
        data = b"".join(txn.chunks)
        return self._message(sink, txn, data, data, "BDAT")


def _path(line):
    """The address between < and > of a MAIL/RCPT command ("" for <>)."""
    start, end = line.find("<"), line.find(">")
    return line[start + 1:end] if 0 <= start < end else ""


class _Server(socketserver.ThreadingTCPServer):
    allow_reuse_address = True
    daemon_threads = True
    request_queue_size = 128


class Sink:
    """Start with start(), stop with stop() (or use it as a context manager).

    rcpt_policy(txn, address) and data_policy(txn) return a reply line, None for the
    default 250, CLOSE to drop the connection without a reply, or for DATA
    (reply, CLOSE) to answer and then drop the connection. data_start_policy(txn) answers
    the DATA command itself: None for 354, a refusal, or CUT.

    tls=(certificate, key) offers STARTTLS with that pair; starttls_policy is None (a plain
    handshake), GARBAGE or INJECT.
    """

    def __init__(self, port=0, rcpt_policy=None, data_policy=None, data_start_policy=None,
                 name="sink.test",
                 extensions=("PIPELINING", "8BITMIME", "SIZE 100000000", "ENHANCEDSTATUSCODES"),
                 tls=None, starttls_policy=None):
        self.port = port
        self.name = name
        self.extensions = list(extensions)
        self.tls_context = tls_server_context(*tls) if tls else None
        self.starttls_policy = starttls_policy
        self.tls_sessions = []  # per secured connection: conn, version, cipher, resumed, sni
        self.tls_failures = 0  # STARTTLS given but no TLS session came of it
        self.rcpt_policy = rcpt_policy or (lambda txn, address: None)
        self.data_policy = data_policy or (lambda txn: None)
        self.data_start_policy = data_start_policy or (lambda txn: None)
        self.lock = threading.Lock()
        self.messages = []  # every complete DATA, including refused ones (see accepted())
        self.connections = 0
        self.concurrent = 0
        self.max_concurrent = 0
        self.txns_per_conn = {}  # connection number -> messages answered 2xx on it
        self.verbs = []  # every command's verb, in arrival order
        self.socks = set()
        self.server = None
        self.thread = None

    def start(self):
        self.server = _Server(("127.0.0.1", self.port), _Handler)
        self.server.sink = self
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        return self

    def stop(self):
        if self.server is None:
            return
        self.server.shutdown()
        self.server.server_close()
        with self.lock:
            for s in list(self.socks):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
        self.thread.join(5)
        self.server = None

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    @property
    def route(self):
        return f"[127.0.0.1]:{self.port}"

    def accepted(self):
        """The messages answered 2xx, in arrival order."""
        with self.lock:
            return [m for m in self.messages if m.reply.startswith("2")]

    def wait_accepted(self, n, timeout=15.0):
        """Waits until at least n messages were accepted; returns them."""
        deadline = time.monotonic() + timeout
        while True:
            got = self.accepted()
            if len(got) >= n:
                return got
            assert time.monotonic() < deadline, f"sink has {len(got)} of {n} messages"
            time.sleep(0.05)

    def _opened(self, sock):
        with self.lock:
            self.connections += 1
            self.concurrent += 1
            self.max_concurrent = max(self.max_concurrent, self.concurrent)
            self.socks.add(sock)
            self.txns_per_conn[self.connections] = 0
            return self.connections

    def _closed(self, sock):
        with self.lock:
            if sock in self.socks:
                self.concurrent -= 1
                self.socks.discard(sock)

    def _stored(self, msg, counted):
        with self.lock:
            self.messages.append(msg)
            if counted:
                self.txns_per_conn[msg.conn] += 1


def tls_server_context(certificate, key):
    """A TLS 1.2+ server context for certificate/key that records the client's SNI on the
    connection (as its .sni)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(certificate, key)

    def note_sni(sock, name, _ctx):
        sock.sni = name
    ctx.sni_callback = note_sni
    return ctx


def first_n(codes):
    """A policy answering with codes[0], codes[1], ... on successive calls, then None (250)."""
    lock, left = threading.Lock(), list(codes)

    def policy(*_args):
        with lock:
            return left.pop(0) if left else None
    return policy
