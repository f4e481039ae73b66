"""A private Postfix MTA for integration tests: a real Postfix (master, smtpd, cleanup, qmgr,
smtp) with its own config, queue and data directories under a temporary directory, smtpd on
127.0.0.1:<free port> only, and every message relayed to one next hop on loopback.

The system instance is left alone: /etc/postfix is only read (the install scripts are copied
from it), port 25 is never bound. The master daemon must start as root; it drops to the
postfix user for its children. Tuned for tests, not for safety margins: no DNS, no flow
control, retries after a second, but fsync stays on (Postfix syncs each queue file before
its 250, which is what a destination that loses nothing means).
"""
import glob
import os
import pwd
import re
import shutil
import signal
import subprocess
import tempfile
import time

from benchlib import free_port, wait_listen

POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
ETC = "/etc/postfix"
CONCURRENCY = 20  # parallel deliveries to the next hop (Postfix's default limit too)
# copied into the private config dir: `postfix start` runs these from there
INSTALL_FILES = ("postfix-files", "postfix-script", "post-install", "dynamicmaps.cf",
                 "postfix-files.d", "dynamicmaps.cf.d")

MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup     unix  n - n 60 1 pickup
cleanup    unix  n - n -  0 cleanup
qmgr       unix  n - n 300 1 qmgr
rewrite    unix  - - n -  - trivial-rewrite
bounce     unix  - - n -  0 bounce
defer      unix  - - n -  0 bounce
trace      unix  - - n -  0 bounce
verify     unix  - - n -  1 verify
flush      unix  n - n 1000? 0 flush
proxymap   unix  - - n -  - proxymap
proxywrite unix  - - n -  1 proxymap
smtp       unix  - - n -  - smtp
relay      unix  - - n -  - smtp
showq      unix  n - n -  - showq
error      unix  - - n -  - error
retry      unix  - - n -  - error
discard    unix  - - n -  - discard
anvil      unix  - - n -  1 anvil
scache     unix  - - n -  1 scache
postlog    unix-dgram n - n - 1 postlogd
tlsmgr     unix  - - n 1000? 1 tlsmgr
"""


def unavailable():
    """Why a private Postfix cannot run here, or None when it can."""
    if os.geteuid() != 0:
        return "a private Postfix needs root (its master daemon starts as root)"
    for path in (POSTFIX, POSTCONF, os.path.join(ETC, "postfix-script")):
        if not os.access(path, os.R_OK):
            return f"Postfix is not installed ({path} missing; tools/install-deps.sh test)"
    try:
        pwd.getpwnam("postfix")
    except KeyError:
        return "Postfix is not installed (no 'postfix' user)"
    return None


class PostfixMTA:
    """One private Postfix relaying mail for relay_domain (and anything from 127.0.0.0/8) to
    [127.0.0.1]:nexthop_port. start() it, stop() it (always: it kills by PID whatever the
    instance still runs and removes its directory, keeping the maillog in keep_dir).
    main_cf: more main.cf settings, or overrides (e.g. smtpd_tls_* for TLS tests)."""

    def __init__(self, relay_domain, nexthop_port, keep_dir=None, main_cf=None):
        self.port = free_port()
        self.keep_dir = keep_dir
        self.work = tempfile.mkdtemp(prefix="ringmx-postfix.")
        os.chmod(self.work, 0o755)  # the postfix user walks down to its queue and data dirs
        self.conf = os.path.join(self.work, "etc")
        self.queue_dir = os.path.join(self.work, "spool")
        self.maillog = os.path.join(self.work, "maillog")
        data = os.path.join(self.work, "lib")
        for d in (self.conf, self.queue_dir, data):
            os.mkdir(d)
        os.chown(data, pwd.getpwnam("postfix").pw_uid, -1)
        self.proc = None
        self.master = None
        self._configure(relay_domain, nexthop_port, data, main_cf or {})

    def _configure(self, relay_domain, nexthop_port, data, extra):
        for name in INSTALL_FILES:
            src = os.path.join(ETC, name)
            if os.path.isdir(src):
                shutil.copytree(src, os.path.join(self.conf, name))
            elif os.path.exists(src):
                shutil.copy2(src, self.conf)
        main_cf = {
            "compatibility_level": "3.6",
            "queue_directory": self.queue_dir,
            "data_directory": data,
            "meta_directory": self.conf,
            "maillog_file": self.maillog,
            "maillog_file_prefixes": self.work,
            "syslog_name": "ringmx-test-postfix",
            "myhostname": "postfix.ringmx.test",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            # a relay and nothing else: no local delivery at all
            "mydestination": "",
            "local_recipient_maps": "",
            "local_transport": "error:5.1.1 local delivery disabled",
            "alias_maps": "",
            "alias_database": "",
            "biff": "no",
            "mynetworks": "127.0.0.0/8",
            "relay_domains": relay_domain,
            "smtpd_relay_restrictions": "permit_mynetworks, reject_unauth_destination",
            "relayhost": f"[127.0.0.1]:{nexthop_port}",
            # no DNS anywhere: the bracketed relayhost is resolved with the hosts file
            "smtpd_peername_lookup": "no",
            "smtp_dns_support_level": "disabled",
            "smtp_host_lookup": "native",
            "smtpd_tls_security_level": "none",
            "smtp_tls_security_level": "none",
            # fast turnaround: no inbound throttling, deferred mail retried within seconds
            "in_flow_delay": "0",
            "queue_run_delay": "1s",
            "minimal_backoff_time": "1s",
            "maximal_backoff_time": "2s",
            "smtp_connect_timeout": "5s",
            "delay_warning_time": "0",
            "default_destination_concurrency_limit": str(CONCURRENCY),
            "initial_destination_concurrency": str(CONCURRENCY),
            "smtp_connection_cache_on_demand": "yes",
            "smtpd_client_connection_count_limit": "0",
            "smtpd_client_connection_rate_limit": "0",
            "smtpd_client_message_rate_limit": "0",
        }
        main_cf.update(extra)
        with open(os.path.join(self.conf, "main.cf"), "w") as f:
            f.writelines(f"{k} = {v}\n" for k, v in main_cf.items())
        with open(os.path.join(self.conf, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        # postconf warns about unknown or misspelt parameters: a typo here is a test bug
        r = subprocess.run([POSTCONF, "-c", self.conf, "-n"], capture_output=True, text=True)
        assert r.returncode == 0 and r.stderr == "", r.stderr

    def start(self, timeout=30.0):
        """Runs `postfix start-fg` (the master stays our grandchild, not a daemon) and waits
        until smtpd listens."""
        self.out = open(os.path.join(self.work, "start.log"), "wb")
        self.proc = subprocess.Popen([POSTFIX, "-c", self.conf, "start-fg"],
                                     stdin=subprocess.DEVNULL, stdout=self.out,
                                     stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            self.master = self.master or self._master_pid()
            if self.master and wait_listen(self.port, 0.2):
                return self
            assert self.proc.poll() is None, f"postfix exited: {self.tail()}"
            assert time.monotonic() < deadline, f"postfix never listened: {self.tail()}"
            time.sleep(0.05)

    def _master_pid(self):
        try:
            with open(os.path.join(self.queue_dir, "pid", "master.pid")) as f:
                return int(f.read().strip() or 0) or None
        except (OSError, ValueError):
            return None

    def processes(self):
        """PIDs of every process of this instance (master and children, also any a dead
        master left behind): the ones whose MAIL_CONFIG is our config dir."""
        mark = f"MAIL_CONFIG={self.conf}\0".encode()
        pids = []
        for environ in glob.glob("/proc/[0-9]*/environ"):
            try:
                with open(environ, "rb") as f:
                    if mark in f.read() + b"\0":
                        pids.append(int(environ.split("/")[2]))
            except OSError:
                continue  # exited meanwhile
        return [p for p in pids if p != os.getpid()]

    def queued(self):
        """How many messages the instance still holds (queue files not yet delivered)."""
        return sum(len(files) for sub in ("maildrop", "incoming", "active", "deferred", "hold")
                   for _, _, files in os.walk(os.path.join(self.queue_dir, sub)))

    def log(self):
        """The instance's maillog so far."""
        with open(self.maillog, errors="replace") as f:
            return f.read()

    def message_ids(self):
        """The Message-IDs Postfix's cleanup logged, i.e. of every message it queued."""
        return set(re.findall(r" message-id=(<[^>\s]*>)", self.log()))

    def tail(self, lines=20):
        text = ""
        for path in (os.path.join(self.work, "start.log"), self.maillog):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += "".join(f.readlines()[-lines:])
        return text

    def stop(self):
        """Emergency shutdown (SIGTERM to the master, which passes it on), then SIGKILL by PID
        for anything of the instance still running; removes the instance's directory."""
        if self.master and self.proc and self.proc.poll() is None:
            os.kill(self.master, signal.SIGTERM)
        if self.proc:
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            self.out.close()
        deadline = time.monotonic() + 5
        while self.processes() and time.monotonic() < deadline:
            time.sleep(0.1)  # children finish the signal on their own
        for pid in self.processes():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        if self.keep_dir and os.path.exists(self.maillog):
            shutil.copy(self.maillog, os.path.join(self.keep_dir, "postfix-maillog"))
        shutil.rmtree(self.work, ignore_errors=True)
        self.proc = None
