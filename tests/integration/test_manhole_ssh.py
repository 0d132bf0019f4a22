"""
The SSH manhole reached with OpenSSH's C{ssh}: the interactive prompt on a
pty (C{ssh -tt}), one-shot commands, a wrong key refused and logged, and a
host key kept across restarts.  Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

import pytest
from helpers import need, waitFor

pytestmark = pytest.mark.integration


def freePort() -> int:
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    return port


def tcpListening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def keygen(path: Path, kind: str = "ed25519") -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", kind, "-N", "", "-f", str(path)],
                   check=True, timeout=30)
    return path


class Manhole:
    """
    A switch with a manhole, and an ssh command line for it.
    """

    def __init__(self, vswitch, shortdir: Path, hostKey: Path | None = None) -> None:
        need("ssh", "ssh-keygen")
        self.key = shortdir / "id_ed25519"
        if not self.key.exists():
            keygen(self.key)
            (shortdir / "authorized_keys").write_bytes(Path(f"{self.key}.pub").read_bytes())
        self.port = freePort()
        self.hostKey = hostKey or shortdir / "host_key"
        self.switch = vswitch(
            "--manhole", f"tcp:{self.port}:interface=127.0.0.1",
            "--manhole-keys", str(shortdir / "authorized_keys"),
            "--manhole-host-key", str(self.hostKey),
        )
        waitFor(lambda: tcpListening(self.port), what="the manhole")

    def ssh(self, *args: str, key: Path | None = None, knownHosts: str = "/dev/null",
            strict: str = "no", stdin: bytes | None = None) -> subprocess.CompletedProcess:
        argv = [
            "ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
            "-o", f"StrictHostKeyChecking={strict}", "-o", f"UserKnownHostsFile={knownHosts}",
            "-o", "LogLevel=ERROR", "-i", str(key or self.key), "-p", str(self.port),
            "operator@127.0.0.1", *args,
        ]
        return subprocess.run(argv, input=stdin, capture_output=True, timeout=30)


def test_interactivePromptOverSshTT(vswitch, shortdir) -> None:
    """ssh -tt gets the Python prompt with switch in it; Ctrl-D leaves."""
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh(
        "-tt", stdin=b'print("numPorts=%d" % switch.numPorts)\r'
        b'print("ops=" + type(ops).__name__)\r\x04'
    )
    output = done.stdout.decode(errors="replace")
    assert done.returncode == 0, done.stderr
    assert "numPorts=32" in output and "ops=SwitchOperations" in output, output
    assert "vtwisted manhole" in output


def test_endOfInputClosesThePrompt(vswitch, shortdir) -> None:
    """ssh -tt whose input ends (no Ctrl-D) leaves the prompt with status 0."""
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("-tt", stdin=b"switch.hub\r")
    assert done.returncode == 0 and b"False" in done.stdout


def test_oneShotCommand(vswitch, shortdir) -> None:
    """ssh HOST 'expression' prints its value; an exception gives exit status 1."""
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("ops.info().numPorts, len(ops.vlans())")
    assert (done.returncode, done.stdout) == (0, b"(32, 1)\r\n"), done.stderr
    done = manhole.ssh("ops.createVlan(10); print(ops.vlans(10)[0].vid)")
    assert (done.returncode, done.stdout) == (0, b"10\r\n")
    done = manhole.ssh("ops.removeVlan(99)")
    assert done.returncode == 1 and b"SwitchError" in done.stdout
    # ssh says goodbye (a disconnect message) at each exit: no error.
    assert "#error]" not in manhole.switch.logText(), manhole.switch.logText()


def test_wrongKeyIsRefusedAndLogged(vswitch, shortdir) -> None:
    """A key not in authorized_keys is refused, and the log says so."""
    manhole = Manhole(vswitch, shortdir)
    intruder = keygen(shortdir / "intruder")
    done = manhole.ssh("switch.numPorts", key=intruder)
    assert done.returncode == 255 and b"Permission denied" in done.stderr
    waitFor(lambda: "manhole: refused publickey login of 'operator'" in manhole.switch.logText(),
            what="the refusal in the log")
    assert "is not in" in manhole.switch.logText()


def test_aTruncatedKeyLineLetsTheOthersIn(vswitch, shortdir) -> None:
    """
    An authorized_keys file with a line cut short (a bad paste) before the
    operator's key: the switch starts, logs the line, and ssh logs in.
    """
    keygen(shortdir / "id_ed25519")
    good = Path(f"{shortdir / 'id_ed25519'}.pub").read_bytes()
    (shortdir / "authorized_keys").write_bytes(good[:30] + b"\n" + good)
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("switch.numPorts")
    assert (done.returncode, done.stdout) == (0, b"32\r\n"), done.stderr
    assert "line 1: not a key" in manhole.switch.logText()


def test_hostKeyIsKeptAcrossRestarts(vswitch, processes, shortdir) -> None:
    """The host key made at the first start is reused: pinned clients still connect."""
    first = Manhole(vswitch, shortdir)
    knownHosts = shortdir / "known_hosts"
    assert first.ssh("1", knownHosts=str(knownHosts), strict="accept-new").returncode == 0
    key = first.hostKey.read_bytes()
    processes.stop(first.switch.process)
    second = Manhole(vswitch, shortdir, hostKey=first.hostKey)
    known = knownHosts.read_text().replace(f"[127.0.0.1]:{first.port}",
                                           f"[127.0.0.1]:{second.port}")
    knownHosts.write_text(known)
    done = second.ssh("2", knownHosts=str(knownHosts), strict="yes")
    assert (done.returncode, done.stdout) == (0, b"2\r\n"), done.stderr
    assert second.hostKey.read_bytes() == key


@pytest.mark.parametrize("kind", ["ecdsa", "rsa"])
def test_otherKeyTypesLogIn(vswitch, shortdir, kind) -> None:
    """
    ECDSA and RSA keys log in too: OpenSSH 9 signs with rsa-sha2-512 or
    -256 only if the server lists them in its server-sig-algs (ssh-rsa,
    SHA-1, it refuses), so the manhole must list what it accepts.
    """
    manhole = Manhole(vswitch, shortdir)
    key = keygen(shortdir / f"id_{kind}", kind)
    with open(shortdir / "authorized_keys", "ab") as keysFile:
        keysFile.write(Path(f"{key}.pub").read_bytes())
    done = manhole.ssh("switch.numPorts", key=key)
    assert (done.returncode, done.stdout) == (0, b"32\r\n"), done.stderr


def test_exitEndsTheSessionWithItsStatus(vswitch, shortdir) -> None:
    """
    exit() typed at the prompt or sent as the command ends the session like
    Ctrl-D, with the status given (not a dropped connection, a session that
    never ends, or a traceback in the log), and the switch goes on.
    """
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("print(1); exit(3)")
    assert (done.returncode, done.stdout) == (3, b"1\r\n"), done.stderr
    assert manhole.ssh("exit()").returncode == 0
    done = manhole.ssh("-tt", stdin=b"exit()\r")
    assert done.returncode == 0, done.stderr
    assert b"closed by remote host" not in done.stderr
    assert manhole.ssh("switch.numPorts").stdout == b"32\r\n"
    assert "Traceback" not in manhole.switch.logText()


def test_keyFileRemarksAreLoggedOncePerChange(vswitch, shortdir) -> None:
    """
    An authorized_keys line with an option the manhole cannot honour is logged when the file is read
    first, not again at every login (OpenSSH checks a key twice per login,
    and refused logins come by the thousand); an edit is read and judged again.
    """
    keygen(shortdir / "id_ed25519")
    good = Path(f"{shortdir / 'id_ed25519'}.pub").read_bytes()
    other = keygen(shortdir / "other").with_suffix(".pub").read_bytes()
    restricted = b'command="ops.ports()" ' + other
    keysFile = shortdir / "authorized_keys"
    keysFile.write_bytes(b"# operators\n\n" + restricted + b"\n  \n" + good)
    manhole = Manhole(vswitch, shortdir)
    remark = "line 3: option 'command' is not supported"
    atStart = manhole.switch.logText().count(remark)
    assert atStart >= 1
    for _ in range(3):
        assert manhole.ssh("1").returncode == 0
    assert manhole.switch.logText().count(remark) == atStart
    keysFile.write_bytes(restricted + good)
    assert manhole.ssh("1").returncode == 0
    waitFor(lambda: "line 1: option 'command'" in manhole.switch.logText(), what="the new remark")


def test_welcomeLineStaysOnScreen(vswitch, shortdir) -> None:
    """The line saying what the prompt holds is not wiped when the screen is drawn."""
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("-tt", stdin=b"\x04")
    assert done.returncode == 0, done.stderr
    assert b"vtwisted manhole" in done.stdout.rpartition(b"\x1b[2J")[2], done.stdout


def test_forwardingIsRefusedInOneLine(vswitch, shortdir) -> None:
    """
    ssh -W (or -L) asks for a TCP channel: the manhole refuses it, and logs
    one line, not a traceback.
    """
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("-W", "127.0.0.1:9", stdin=b"")
    assert done.returncode == 255 and b"forwarding failed" in done.stderr, done.stderr
    waitFor(lambda: "refused a direct-tcpip channel" in manhole.switch.logText(),
            what="the refusal in the log")
    assert "Traceback" not in manhole.switch.logText()


def test_passwordsWhenGiven(vswitch, shortdir) -> None:
    """
    With --manhole-passwords a password logs in; a wrong one is refused, and
    the log says why.
    """
    need("ssh")
    passwords = shortdir / "passwords"
    passwords.write_text("operator:secret\n")
    passwords.chmod(0o600)
    askpass = shortdir / "askpass"
    askpass.write_text("#!/bin/sh\necho \"$PASSWORD\"\n")
    askpass.chmod(0o700)
    port = freePort()
    switch = vswitch("--manhole", str(port), "--manhole-passwords", str(passwords),
                     "--manhole-host-key", str(shortdir / "host_key"))
    waitFor(lambda: tcpListening(port), what="the manhole")

    def login(password: str) -> subprocess.CompletedProcess:
        argv = ["ssh", "-F", "/dev/null", "-o", "PubkeyAuthentication=no",
                "-o", "NumberOfPasswordPrompts=1", "-o", "StrictHostKeyChecking=no",
                "-o", "UserKnownHostsFile=/dev/null", "-o", "LogLevel=ERROR", "-p", str(port),
                "operator@127.0.0.1", "switch.numPorts"]
        env = dict(os.environ, SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force",
                   PASSWORD=password)
        return subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=30)

    done = login("secret")
    assert (done.returncode, done.stdout) == (0, b"32\r\n"), done.stderr
    assert login("guess").returncode == 255
    waitFor(lambda: "refused password login of 'operator'" in switch.logText(),
            what="the refusal")
    assert "login of 'operator' from" in switch.logText()
    assert "wrong user name or password" in switch.logText()


def test_aMalformedMessageBeforeLoginIsOneLine(vswitch, shortdir) -> None:
    """
    A client whose key exchange message is cut short (a scanner, a broken
    client) is disconnected with one line in the log, not a traceback, and
    ssh logs in afterwards.
    """
    manhole = Manhole(vswitch, shortdir)
    with socket.create_connection(("127.0.0.1", manhole.port), timeout=5) as probe:
        probe.sendall(b"SSH-2.0-probe\r\n")
        # length 12, padding 10, payload: KEXINIT and one byte of its cookie.
        probe.sendall(b"\x00\x00\x00\x0c\x0a\x14" + b"\x00" * 11)
        waitFor(lambda: ": malformed SSH message 20 (" in manhole.switch.logText(),
                what="the malformed message in the log")
    assert "Traceback" not in manhole.switch.logText()
    assert manhole.ssh("switch.numPorts").stdout == b"32\r\n"


def test_keyOptionsAreEnforced(vswitch, shortdir) -> None:
    """
    from= and expiry-time= are enforced against ssh's real address and the
    time now, the options that restrict nothing the manhole serves are
    accepted, and a line with command= is refused (a warning names it)
    rather than given the prompt.
    """
    keygen(shortdir / "id_ed25519")
    lines = {
        "near": 'restrict,from="127.0.0.0/8",expiry-time="20991231Z"',
        "far": 'from="10.1.2.3"',
        "notme": 'from="!127.0.0.1,*"',
        "old": 'expiry-time="20000101"',
        "command": 'command="switch.numPorts"',
    }
    text = b""
    for name, options in lines.items():
        key = keygen(shortdir / name)
        text += options.encode() + b" " + Path(f"{key}.pub").read_bytes()
    (shortdir / "authorized_keys").write_bytes(text)
    manhole = Manhole(vswitch, shortdir)
    done = manhole.ssh("switch.numPorts", key=shortdir / "near")
    assert (done.returncode, done.stdout) == (0, b"32\r\n"), done.stderr
    done = manhole.ssh("-tt", key=shortdir / "near", stdin=b"switch.hub\r\x04")
    assert done.returncode == 0 and b"False" in done.stdout, done.stderr
    for name in ("far", "notme", "old", "command"):
        done = manhole.ssh("switch.numPorts", key=shortdir / name)
        assert done.returncode == 255 and b"Permission denied" in done.stderr, name
    log = manhole.switch.logText()
    assert 'line 2: from="10.1.2.3" does not allow 127.0.0.1' in log, log
    assert "line 5: option 'command' is not supported by the manhole; line refused" in log


def test_refusalsFromOnePeerAreLoggedOnce(vswitch, shortdir) -> None:
    """
    A peer refused again and again (a scanner, a script with the wrong key)
    gets one line in the log, not one per attempt; the others are counted.
    """
    manhole = Manhole(vswitch, shortdir)
    intruder = keygen(shortdir / "intruder")
    for _ in range(4):
        assert manhole.ssh("1", key=intruder).returncode == 255
    assert manhole.ssh("1").returncode == 0
    waitFor(lambda: "'operator' logged in from" in manhole.switch.logText(),
            what="the login in the log")
    assert manhole.switch.logText().count("refused publickey login") == 1


def test_aTruncatedHostKeyStopsStartupWithWhatToDo(vswitch, shortdir) -> None:
    """
    A host key file cut short stops the switch with one line naming the
    file and what to do, not a traceback.
    """
    need("ssh-keygen")
    hostKey = keygen(shortdir / "cut")
    hostKey.write_bytes(hostKey.read_bytes()[:200])
    keygen(shortdir / "id_ed25519")
    switch = vswitch("--manhole", str(freePort()), "--manhole-keys",
                     str(shortdir / "id_ed25519.pub"), "--manhole-host-key", str(hostKey),
                     wait=False)
    switch.process.wait(timeout=30)
    log = switch.logText()
    assert f"--manhole-host-key {hostKey}: not a usable private key" in log, log
    assert "move it away" in log and "Traceback" not in log
