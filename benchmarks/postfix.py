"""A private Postfix instance for the bench: a real MTA that accepts everything and keeps nothing.

Its config, queue and data directories live in one temporary directory; `postfix -c DIR
start` and `postfix -c DIR stop` touch that instance alone, never a system Postfix. smtpd
listens on 127.0.0.1:PORT only, offers neither AUTH nor STARTTLS, relays for 127.0.0.0/8
and hands every message to the discard transport. Logs go to DIR/maillog (postlogd).

    python -m benchmarks.postfix   # start one, print its port and settings, stop it
"""

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import psutil

POSTFIX = Path("/usr/sbin/postfix")

MAIN_CF = """\
compatibility_level = 3.6
queue_directory = {root}/queue
data_directory = {root}/data
maillog_file = {root}/maillog
maillog_file_prefixes = {root}
syslog_name = postfix-emailq-bench
myhostname = emailq-bench.localdomain
inet_interfaces = loopback-only
inet_protocols = ipv4
mydestination =
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
local_recipient_maps =
alias_maps =
alias_database =
default_transport = discard
relay_transport = discard
local_transport = discard
smtpd_tls_security_level = none
smtpd_sasl_auth_enable = no
biff = no
"""

# Debian's master.cf without chroot (no copied /etc files to keep up) and without the
# inet smtp service on port 25: smtpd listens on the bench's port alone.
MASTER_CF = """\
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n - n 60    1 pickup
cleanup   unix  n - n -     0 cleanup
qmgr      unix  n - n 300   1 qmgr
rewrite   unix  - - n -     - trivial-rewrite
bounce    unix  - - n -     0 bounce
defer     unix  - - n -     0 bounce
trace     unix  - - n -     0 bounce
verify    unix  - - n -     1 verify
flush     unix  n - n 1000? 0 flush
proxymap  unix  - - n -     - proxymap
showq     unix  n - n -     - showq
error     unix  - - n -     - error
retry     unix  - - n -     - error
discard   unix  - - n -     - discard
anvil     unix  - - n -     1 anvil
scache    unix  - - n -     1 scache
postlog   unix-dgram n - n - 1 postlogd
"""


class Postfix:
    """A private instance in a temporary directory of its own, on 127.0.0.1:``port``."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.root = Path(tempfile.mkdtemp(prefix="emailq-postfix-"))
        self.config = self.root / "etc"
        self.log = self.root / "maillog"
        self.error = ""
        self._counted, self._read_to = 0, 0  # messages seen in the log, up to this byte

    def start(self) -> bool:
        """Start it and wait until smtpd answers; False (``error`` says why) if it cannot."""
        if not POSTFIX.exists():
            return self._failed(f"{POSTFIX} not found (scripts/bench-deps.sh installs it)")
        self.config.mkdir()
        (self.root / "queue").mkdir()  # `postfix start` creates what goes inside
        self.root.chmod(0o755)  # the master opens its lock file as the postfix user
        (self.config / "main.cf").write_text(MAIN_CF.format(root=self.root))
        (self.config / "master.cf").write_text(MASTER_CF.format(port=self.port))
        started = self._postfix("start")
        if started.returncode != 0:
            said = (started.stdout + started.stderr + self._log_text()).splitlines()
            fatal = [line.split(": ", 1)[-1] for line in said if "fatal:" in line]
            return self._failed("; ".join(fatal) or "postfix start failed")
        if not self._wait(lambda: self._banner() is not None, 30):
            return self._failed(f"smtpd did not answer on 127.0.0.1:{self.port}")
        return True

    def _failed(self, error: str) -> bool:
        self.error = error
        self.stop()
        return False

    def stop(self) -> None:
        """Stop the instance, wait until its master process has gone, remove its directory."""
        pid_file = self.root / "queue" / "pid" / "master.pid"
        pid = pid_file.read_text().strip() if pid_file.exists() else ""
        if pid:
            self._postfix("stop")
            self._wait(lambda: not _alive(int(pid)), 30)
        shutil.rmtree(self.root, ignore_errors=True)

    def accepted(self) -> int:
        """Messages taken into the queue so far, one qmgr ``from=`` line each in the log."""
        if not self.log.exists():
            return 0
        with self.log.open("rb") as log:
            log.seek(self._read_to)
            new = log.read()
        whole = new[: new.rfind(b"\n") + 1]  # a line still being written waits for next time
        self._read_to += len(whole)
        self._counted += sum(
            1 for line in whole.splitlines() if b"/qmgr[" in line and b": from=<" in line
        )
        return self._counted

    def wait_accepted(self, n: int, timeout: float = 30) -> None:
        """Wait until the log shows ``n`` messages queued; TimeoutError if it never does."""
        if not self._wait(lambda: self.accepted() >= n, timeout):
            raise TimeoutError(f"Postfix's log shows {self.accepted()} messages queued, not {n}")

    def version(self) -> str:
        """Postfix's version, e.g. ``3.7.11``."""
        shown = subprocess.run(
            [str(POSTFIX.with_name("postconf")), "-c", str(self.config), "-h", "mail_version"],
            capture_output=True, text=True,
        )  # fmt: skip
        return shown.stdout.strip()

    def _log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def _postfix(self, action: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [str(POSTFIX), "-c", str(self.config), action], capture_output=True, text=True
        )

    def _banner(self) -> bytes | None:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                return sock.recv(512) or None
        except OSError:
            return None

    @staticmethod
    def _wait(ready, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while not ready():
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


if __name__ == "__main__":
    from benchmarks.run import free_port

    postfix = Postfix(free_port())
    try:
        if postfix.start():
            print(f"Postfix {postfix.version()} on 127.0.0.1:{postfix.port}: {postfix._banner()!r}")
        else:
            print(f"Postfix did not start: {postfix.error}")
    finally:
        postfix.stop()
