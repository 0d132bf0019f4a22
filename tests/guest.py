"""
Tiny Linux guests under QEMU (TCG), for tests of real QEMU networking.

The image
=========
L{guestImage} returns C{(kernel, initramfs)} from a cache directory,
C{$VTWISTED_GUEST_CACHE} or C{/var/tmp/vtwisted-guest}, building it on first
use (5-10 s, once per machine; about 70 MB on disk):

  - C{apt-cache depends linux-image-amd64} names the versioned Debian kernel
    package (C{linux-image-6.1.0-N-amd64}); C{apt-get download} fetches it
    into a temporary directory and C{dpkg -x} unpacks it.
  - The kernel is Debian's C{vmlinuz}, decompressed here to the plain ELF
    C{vmlinux} inside it, which QEMU boots through its PVH entry note: this
    saves the ~3 s the kernel's own xz decompressor takes under TCG (a
    kernel without that note is kept compressed).
  - The modules a guest needs for networking (virtio_pci, virtio_net, e1000
    and what they depend on, read from each module's C{.modinfo} section
    since the package ships no C{modules.dep}) are copied in load order;
    compressed ones (C{.ko.xz}) are decompressed with L{lzma}, because
    busybox's insmod takes plain ELF only.
  - The initramfs is an uncompressed newc cpio archive, written here in
    Python: C{/bin/busybox} from Debian's C{busybox-static} with a symlink
    per applet, C{/dev/console}, the modules, and an C{/init} script that
    mounts proc/sys/dev, loads the modules, brings C{lo} up, runs
    C{/script.sh} between C{VTW-BEGIN} and C{VTW-END rc=N} markers on the
    serial console, and powers off.

The cache holds one finished image under a versioned name, written under a
lock and renamed into place, so concurrent test processes share one build.

The per-run script
==================
Linux unpacks every cpio archive concatenated in the initramfs, later ones
over earlier ones. L{startGuest} therefore writes, for each guest, the
cached base archive (2.8 MB) followed by a tiny archive holding only
C{/script.sh} and C{/etc/hostname}, and boots that: no per-test rebuild, no
kernel command line quoting. A guest reaches its script about 2 s after QEMU
starts (TCG, one vCPU, 256 MiB, C{-nodefaults}, no option ROM).

Each guest's serial console goes to a file; L{Guest.wait} polls it for the
end marker (or QEMU's exit) and returns the script's output and status.

Guests get addresses in a private test /24 and talk only to each other or
to namespaces the test made; nothing here routes anywhere else.
"""

from __future__ import annotations

import atexit
import fcntl
import itertools
import lzma
import os
import re
import shutil
import struct
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from helpers import Processes, need, unavailable

#: Bump to rebuild every cached image (changes to the init script, modules).
IMAGE_VERSION = 1

#: Modules loaded at boot, with their dependencies resolved at build time.
WANTED_MODULES = ("virtio_pci", "virtio_net", "e1000")

#: Kernel command line: serial console, few messages, QEMU exits on panic.
KERNEL_APPEND = (
    "console=ttyS0 quiet loglevel=3 panic=-1 oops=panic mitigations=off nokaslr "
    "i8042.noaux i8042.nomux i8042.nopnp i8042.nokbd tsc=reliable no_timer_check "
    "random.trust_cpu=on"
)

INIT_SCRIPT = """\
#!/bin/sh
export PATH=/bin:/sbin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
exec </dev/console >/dev/console 2>&1
while read module; do
    insmod /lib/modules/$module || echo "VTW-WARN insmod $module failed"
done </etc/modules.load
hostname -F /etc/hostname
ip link set lo up
echo VTW-BEGIN
sh /script.sh 2>&1
echo "VTW-END rc=$?"
poweroff -f
"""

END = re.compile(r"VTW-END rc=(\d+)\n")


def cacheDirectory() -> Path:
    return Path(os.environ.get("VTWISTED_GUEST_CACHE", "/var/tmp/vtwisted-guest"))


# --- cpio -----------------------------------------------------------------


class Cpio:
    """
    A newc ("070701") cpio archive, as the kernel's initramfs unpacker reads.
    """

    def __init__(self) -> None:
        self.chunks: list[bytes] = []
        self.inode = 1

    def _entry(
        self, name: str, mode: int, data: bytes = b"", rdev: tuple[int, int] = (0, 0)
    ) -> None:
        encoded = name.encode() + b"\0"
        fields = (
            self.inode, mode, 0, 0, 1, 0, len(data), 0, 0, rdev[0], rdev[1], len(encoded), 0,
        )
        self.inode += 1
        header = b"070701" + b"".join(b"%08X" % field for field in fields)
        self.chunks.append(_pad4(header + encoded))
        self.chunks.append(_pad4(data))

    def directory(self, name: str) -> None:
        self._entry(name, 0o040755)

    def file(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._entry(name, 0o100000 | mode, data)

    def symlink(self, name: str, target: str) -> None:
        self._entry(name, 0o120777, target.encode())

    def charDevice(self, name: str, major: int, minor: int, mode: int = 0o600) -> None:
        self._entry(name, 0o020000 | mode, rdev=(major, minor))

    def bytes(self) -> bytes:
        trailer = Cpio()
        trailer.inode = 0
        trailer._entry("TRAILER!!!", 0)
        return b"".join(self.chunks + trailer.chunks)


def _pad4(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 4)


# --- kernel modules ---------------------------------------------------------


def moduleInfo(image: bytes) -> dict[str, str]:
    """
    The C{key=value} strings of a kernel module's C{.modinfo} section.
    """
    if image[:4] != b"\x7fELF" or image[4] != 2 or image[5] != 1:
        raise ValueError("not a little-endian ELF64 module")
    (shoff,) = struct.unpack_from("<Q", image, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from("<HHH", image, 0x3A)
    headers = [struct.unpack_from("<IIQQQQ", image, shoff + i * shentsize) for i in range(shnum)]
    names = headers[shstrndx][4]
    info: dict[str, str] = {}
    for nameOffset, _type, _flags, _addr, offset, size in headers:
        start = names + nameOffset
        if image[start : image.index(b"\0", start)] != b".modinfo":
            continue
        for item in image[offset : offset + size].split(b"\0"):
            key, sep, value = item.decode(errors="replace").partition("=")
            if sep:
                info.setdefault(key, value)
    return info


def readModule(path: Path) -> bytes:
    data = path.read_bytes()
    if path.name.endswith(".xz"):
        return lzma.decompress(data)
    if path.name.endswith(".zst"):
        raise ValueError(f"zstd-compressed module {path.name} is not supported")
    return data


def _moduleName(path: Path) -> str:
    return path.name.split(".ko")[0].replace("-", "_")


def resolveModules(moduleRoot: Path, wanted: tuple[str, ...]) -> list[tuple[str, bytes]]:
    """
    C{wanted} and their dependencies, as (name, plain ELF) in load order;
    modules built into the kernel are left out.
    """
    builtin = set()
    builtinList = moduleRoot / "modules.builtin"
    if builtinList.exists():
        builtin = {_moduleName(Path(line)) for line in builtinList.read_text().split()}
    files = {_moduleName(p): p for p in moduleRoot.rglob("*.ko*")}
    ordered: list[tuple[str, bytes]] = []
    seen: set[str] = set()

    def visit(name: str) -> None:
        name = name.replace("-", "_")
        if name in seen or name in builtin:
            return
        seen.add(name)
        if name not in files:
            raise LookupError(f"kernel module {name} not found under {moduleRoot}")
        image = readModule(files[name])
        for dependency in filter(None, moduleInfo(image).get("depends", "").split(",")):
            visit(dependency)
        ordered.append((name, image))

    for name in wanted:
        visit(name)
    return ordered


# --- the kernel -----------------------------------------------------------------


def _hasPvhEntry(elf: bytes) -> bool:
    """
    True if C{elf} is an x86-64 vmlinux with a Xen PVH entry note, which
    QEMU needs to boot an uncompressed kernel.
    """
    if elf[:4] != b"\x7fELF" or elf[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", elf, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", elf, 0x36)
    for i in range(phnum):
        kind, _flags, offset, _vaddr, _paddr, size = struct.unpack_from(
            "<IIQQQQ", elf, phoff + i * phentsize
        )
        if kind != 4:  # PT_NOTE
            continue
        position, end = offset, offset + size
        while position + 12 <= end:
            namesz, descsz, noteType = struct.unpack_from("<III", elf, position)
            name = elf[position + 12 : position + 12 + namesz].rstrip(b"\0")
            if name == b"Xen" and noteType == 18:  # XEN_ELFNOTE_PHYS32_ENTRY
                return True
            position += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
    return False


def bootableKernel(vmlinuz: bytes) -> bytes:
    """
    The uncompressed vmlinux inside C{vmlinuz} if QEMU can boot it through
    its PVH entry, else C{vmlinuz} itself. Under TCG the kernel's own
    decompressor costs about 3 s per boot; Python's lzma does it once.
    """
    start = vmlinuz.find(b"\xfd7zXZ\x00")
    if start < 0:
        return vmlinuz
    try:
        elf = lzma.LZMADecompressor().decompress(vmlinuz[start:])
    except lzma.LZMAError:
        return vmlinuz
    return elf if _hasPvhEntry(elf) else vmlinuz


# --- building the image -------------------------------------------------------


def _isStatic(binary: Path) -> bool:
    """
    True if C{binary} is an ELF64 executable with no program interpreter.
    """
    data = binary.read_bytes()
    if data[:4] != b"\x7fELF" or data[4] != 2:
        return False
    (phoff,) = struct.unpack_from("<Q", data, 0x20)
    phentsize, phnum = struct.unpack_from("<HH", data, 0x36)
    return all(
        struct.unpack_from("<I", data, phoff + i * phentsize)[0] != 3  # PT_INTERP
        for i in range(phnum)
    )


def _kernelPackage() -> str:
    result = subprocess.run(
        ["apt-cache", "depends", "linux-image-amd64"], capture_output=True, text=True
    )
    for line in result.stdout.splitlines():
        match = re.match(r"\s*Depends:\s*(linux-image-\S+-amd64)\s*$", line)
        if match:
            return match.group(1)
    unavailable(
        "cannot resolve the Debian kernel package linux-image-amd64 "
        f"(run apt-get update?): {result.stderr.strip()}"
    )
    raise AssertionError("unreachable")


def buildImage(target: Path) -> None:
    """
    Download Debian's kernel and write C{target}/kernel and C{target}/initrd.
    """
    busybox = Path("/bin/busybox")
    if not busybox.exists() or not _isStatic(busybox):
        unavailable("a static /bin/busybox is needed (Debian package busybox-static)")
    need("apt-get", "apt-cache", "dpkg")
    package = _kernelPackage()
    with tempfile.TemporaryDirectory(prefix="vtw-kernel-", dir=target.parent) as scratch:
        work = Path(scratch)
        os.chmod(work, 0o755)  # apt's _apt user may write its partial download
        download = subprocess.run(
            ["apt-get", "download", "-q", package], cwd=work, capture_output=True, text=True
        )
        debs = list(work.glob("*.deb"))
        if download.returncode != 0 or not debs:
            unavailable(f"cannot download {package}: {download.stderr.strip()}")
        unpacked = work / "root"
        subprocess.run(["dpkg", "-x", str(debs[0]), str(unpacked)], check=True)
        (vmlinuz,) = unpacked.glob("boot/vmlinuz-*")
        (moduleRoot,) = (p for p in (unpacked / "lib/modules").iterdir() if p.is_dir())
        modules = resolveModules(moduleRoot, WANTED_MODULES)

        archive = Cpio()
        for directory in ("bin", "sbin", "dev", "etc", "proc", "sys", "tmp", "root",
                          "lib", "lib/modules"):
            archive.directory(directory)
        archive.charDevice("dev/console", 5, 1)
        archive.charDevice("dev/null", 1, 3, 0o666)
        archive.file("bin/busybox", busybox.read_bytes(), 0o755)
        applets = subprocess.run(
            [str(busybox), "--list"], check=True, capture_output=True, text=True
        ).stdout.split()
        for applet in applets:
            if applet != "busybox":
                archive.symlink(f"bin/{applet}", "busybox")
        archive.file("init", INIT_SCRIPT.encode(), 0o755)
        archive.file("etc/modules.load", "".join(f"{n}.ko\n" for n, _ in modules).encode())
        for name, image in modules:
            archive.file(f"lib/modules/{name}.ko", image)
        archive.file("etc/kernel-package", f"{package}\n".encode())

        (target / "kernel").write_bytes(bootableKernel(vmlinuz.read_bytes()))
        (target / "initrd").write_bytes(archive.bytes())
        (target / "package").write_text(f"{package}\n")


def guestImage() -> tuple[Path, Path]:
    """
    The cached guest (kernel, base initramfs), built on first use.
    """
    need("qemu-system-x86_64")
    cache = cacheDirectory()
    final = cache / f"image-v{IMAGE_VERSION}"
    kernel, initrd = final / "kernel", final / "initrd"
    if kernel.exists() and initrd.exists():
        return kernel, initrd
    cache.mkdir(parents=True, exist_ok=True)
    with open(cache / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (kernel.exists() and initrd.exists()):
            building = Path(tempfile.mkdtemp(prefix=".build-", dir=cache))
            try:
                buildImage(building)
                os.chmod(building, 0o755)
                building.rename(final)
            finally:
                shutil.rmtree(building, ignore_errors=True)
    return kernel, initrd


# --- running guests ---------------------------------------------------------------


@dataclass
class GuestResult:
    """
    What a guest's script printed and its exit status.
    """

    rc: int
    output: str
    console: str
    seconds: float


class Guest:
    """
    A running QEMU guest; its serial console is written to C{self.serial}.
    """

    def __init__(
        self, processes: Processes, process: subprocess.Popen[bytes], serial: Path,
        name: str,
    ) -> None:
        self.processes = processes
        self.process = process
        self.serial = serial
        self.stderr = serial.with_suffix(".stderr")
        self.name = name
        self.started = time.monotonic()

    def console(self) -> str:
        """
        Everything on the serial console so far.
        """
        try:
            raw = self.serial.read_bytes()
        except FileNotFoundError:
            return ""
        return raw.replace(b"\r\n", b"\n").decode(errors="replace")

    def sawLine(self, text: str) -> bool:
        """
        True once the console has a line containing C{text}.
        """
        return any(text in line for line in self.console().splitlines())

    def finished(self) -> bool:
        """
        True once QEMU exited or the script printed its end marker.
        """
        return self.process.poll() is not None or END.search(self.console()) is not None

    def diagnostics(self) -> str:
        stderr = self.stderr.read_text(errors="replace") if self.stderr.exists() else ""
        return (
            f"--- guest {self.name} console ({self.serial}) ---\n{self.console()}\n"
            f"--- guest {self.name} QEMU stderr (rc {self.process.poll()}) ---\n{stderr}"
        )

    def wait(self, timeout: float = 60.0) -> GuestResult:
        """
        Wait for the script to finish and QEMU to exit; fail with the console
        log after C{timeout} seconds or if QEMU dies without the end marker.
        """
        deadline = self.started + timeout
        while time.monotonic() < deadline and not self.finished():
            time.sleep(0.05)
        console = self.console()
        match = END.search(console)
        if match is None:
            alive = self.process.poll() is None
            self.processes.stop(self.process)
            why = f"did not finish within {timeout:g} s" if alive else "QEMU exited early"
            raise AssertionError(f"guest {self.name} {why}\n{self.diagnostics()}")
        if self.process.poll() is None:
            # The script is done; give poweroff a moment, then stop QEMU.
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.processes.stop(self.process)
        begin = console.find("VTW-BEGIN\n")
        output = console[begin + len("VTW-BEGIN\n") : match.start()] if begin >= 0 else ""
        return GuestResult(
            int(match.group(1)), output, console, time.monotonic() - self.started
        )


def _netdevId(netdevArgs: list[str]) -> str:
    for option, value in itertools.pairwise(netdevArgs):
        if option == "-netdev":
            match = re.search(r"(?:^|,)id=([^,]+)", value)
            if match:
                return match.group(1)
    raise ValueError(f"no -netdev ...,id=ID in {netdevArgs}")


def guestCommand(
    netdevArgs: list[str],
    script: str,
    mac: str,
    *,
    directory: Path | None = None,
    name: str = "guest",
    nic: str = "virtio-net-pci",
    memory: int = 256,
    extraArgs: list[str] | None = None,
) -> tuple[list[str], Path]:
    """
    The QEMU command line of a guest whose NIC (C{nic}, with C{mac}) is
    attached to the netdev that C{netdevArgs} define (e.g. C{["-netdev",
    "vde,id=n0,sock=DIR"]}), running C{script} with busybox C{sh}; and the
    file its serial console is written to.
    """
    kernel, baseInitrd = guestImage()
    if directory is None:
        directory = Path(tempfile.mkdtemp(prefix="vtwg", dir="/tmp"))
        atexit.register(shutil.rmtree, directory, True)
    directory.mkdir(parents=True, exist_ok=True)
    overlay = Cpio()
    overlay.file("script.sh", script.encode(), 0o755)
    overlay.file("etc/hostname", f"{name}\n".encode())
    initrd = directory / f"{name}.initrd"
    with open(initrd, "wb") as out, open(baseInitrd, "rb") as base:
        shutil.copyfileobj(base, out)
        out.write(overlay.bytes())
    serial = directory / f"{name}.console"
    serial.write_bytes(b"")
    argv = [
        "qemu-system-x86_64",
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-accel", "tcg", "-m", str(memory), "-smp", "1",
        "-kernel", str(kernel), "-initrd", str(initrd),
        "-append", KERNEL_APPEND,
        "-serial", f"file:{serial}", "-monitor", "none",
        *netdevArgs,
        "-device", f"{nic},netdev={_netdevId(netdevArgs)},mac={mac},romfile=",
        *(extraArgs or []),
    ]
    return argv, serial


def startGuest(
    processes: Processes,
    netdevArgs: list[str],
    script: str,
    mac: str,
    *,
    directory: Path | None = None,
    name: str = "guest",
    nic: str = "virtio-net-pci",
    memory: int = 256,
    extraArgs: list[str] | None = None,
    wrapper: list[str] | None = None,
) -> Guest:
    """
    Boot a guest (see L{guestCommand}); C{wrapper} goes before QEMU's
    command (C{ip netns exec NS}). Returns at once; call L{Guest.wait}.
    """
    argv, serial = guestCommand(netdevArgs, script, mac, directory=directory, name=name,
                                nic=nic, memory=memory, extraArgs=extraArgs)
    with open(serial.with_suffix(".stderr"), "wb") as stderr:
        process = processes.start([*(wrapper or []), *argv], stdin=subprocess.DEVNULL,
                                  stderr=stderr)
    return Guest(processes, process, serial, name)


def waitAll(guests: list[Guest], timeout: float = 60.0) -> list[GuestResult]:
    """
    L{Guest.wait} for each guest; a failure also shows the other consoles.
    """
    results = []
    for guest in guests:
        try:
            results.append(guest.wait(timeout))
        except AssertionError as failure:
            others = "\n".join(g.diagnostics() for g in guests if g is not guest)
            raise AssertionError(f"{failure}\n{others}") from None
    return results


def assertGuestPings(processes: Processes, netdevArgs: list[str], address: str, target: str,
                     mac: str, *, directory: Path, name: str,
                     wrapper: list[str] | None = None) -> None:
    """
    Boot a guest on C{netdevArgs}, give its NIC C{address} (with prefix)
    and have it ping C{target} three times: all three must answer.
    """
    guest = startGuest(
        processes, netdevArgs,
        f"ip link set eth0 up\nip addr add {address} dev eth0\nping -c 3 -W 5 {target}\n",
        mac, directory=directory, name=name, wrapper=wrapper)
    result = guest.wait(timeout=90)
    assert result.rc == 0, result.output + guest.diagnostics()
    assert "3 packets received" in result.output, result.output


def assertGuestGotTheTransfer(guest: Guest, pings: subprocess.CompletedProcess[str],
                              sent: subprocess.CompletedProcess[str],
                              timeout: float = 120.0) -> GuestResult:
    """
    Wait for C{guest}, whose script reports C{got SIZE SHA256} for what it
    received, and check that the C{pings} from the host side answered and
    that the guest got exactly what the sender (C{sent}, which prints
    C{SIZE SHA256}) sent.
    """
    result = guest.wait(timeout)
    print(f"--- {guest.name}: {result.seconds:.1f} s ---\n{result.output}")
    assert pings.returncode == 0, pings.stdout + pings.stderr
    assert sent.returncode == 0, sent.stderr
    assert result.rc == 0, guest.diagnostics()
    assert f"got {sent.stdout.strip()}" in result.output, guest.diagnostics()
    return result


def outageScript(address: str, peer: str) -> str:
    """
    A guest script for a network that goes away and comes back: as
    C{address}/24, ping C{peer} every 0.2 s and print C{VTW-UP} when it
    first answers, C{VTW-DOWN} when it stops, and C{VTW-BACK} (and exit 0)
    when it answers again; exit 1 after 80 s.
    """
    return f"""\
ip addr add {address}/24 dev eth0
ip link set eth0 up
n=0; state=0
while [ $n -lt 400 ]; do
    if ping -c 1 -W 1 {peer} >/dev/null 2>&1; then
        [ $state = 0 ] && {{ echo VTW-UP; state=1; }}
        [ $state = 2 ] && {{ echo VTW-BACK; exit 0; }}
    else
        [ $state = 1 ] && {{ echo VTW-DOWN; state=2; }}
    fi
    n=$((n + 1)); sleep 0.2
done
exit 1
"""
