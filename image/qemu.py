"""Boot a built amd64 image under QEMU (direct kernel boot) and look inside its partitions without mounting.

``python -m image.qemu build/image/tillbox-amd64.img`` boots it interactively on the terminal.
The tests use :func:`boot` (serial console to a file, the UI forwarded to a host port) and
the mtools/debugfs helpers to read the boot and data partitions afterwards.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from appliance.errors import TillboxError

#: The image's lab port: with ``tillbox.lab=1`` on the kernel command line, a socket proxy
#: forwards it to the daemon's UI on 127.0.0.1:8080 (the daemon itself stays loopback-only).
LAB_PORT = 8081
HEALTH_PATH = "/api/v1/health"


class QemuError(TillboxError):
    """QEMU could not boot the image, or the guest did not get where it should."""


@dataclass(frozen=True)
class Artifacts:
    """A built image and what ``image.build`` wrote beside it."""

    image: Path
    kernel: Path
    initrd: Path
    info: dict[str, Any]

    @classmethod
    def load(cls, image: Path) -> Artifacts:
        stem = image.with_suffix("")
        info_path = stem.with_name(stem.name + ".build.json")
        if not info_path.exists():
            raise QemuError(f"{info_path.name} is missing: build the image with image/build.sh")
        info = json.loads(info_path.read_text())
        return cls(image, stem.with_name(stem.name + ".vmlinuz"), stem.with_name(stem.name + ".initrd.img"), info)

    def partition(self, label: str) -> tuple[int, int]:
        """(byte offset, size) of a partition by label."""
        for p in self.info["partitions"]:
            if p["label"] == label:
                return int(p["offset"]), int(p["bytes"])
        raise KeyError(label)


def kvm_usable() -> bool:
    """True when KVM can run a stock guest kernel (not just when /dev/kvm exists).

    A nested PVM host (``kvm_pvm``) offers /dev/kvm but only runs PVM-patched guests, and an
    x86 host without vmx/svm has no hardware virtualisation; both fall back to TCG.
    """
    if not os.access("/dev/kvm", os.R_OK | os.W_OK) or Path("/sys/module/kvm_pvm").exists():
        return False
    if os.uname().machine in ("x86_64", "i686"):
        try:
            flags = Path("/proc/cpuinfo").read_text()
        except OSError:
            return False
        return " vmx" in flags or " svm" in flags
    return True


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def qemu_command(art: Artifacts, disk: Path, *, serial: str, host_port: int, kvm: bool, memory_mib: int = 2048,
                 monitor: str = "none", extra_cmdline: tuple[str, ...] = ()) -> list[str]:  # fmt: skip
    """The QEMU command line: virtio disk and net, user networking, a headless GPU.

    amd64 boots on the default PC machine; arm64 (the Pi image) on the generic ``virt`` machine
    with its serial console on ttyAMA0.
    """
    arm = art.info.get("arch") == "arm64"
    cmdline = " ".join([art.info["cmdline"], *(["console=ttyAMA0"] if arm else []), *extra_cmdline])
    accel = ["-accel", "kvm", "-cpu", "host"] if kvm else ["-accel", "tcg,thread=multi", "-cpu", "max"]
    machine = ["qemu-system-aarch64", "-M", "virt"] if arm else ["qemu-system-x86_64"]
    return [
        *machine, *accel, "-m", str(memory_mib), "-smp", "2", "-no-reboot",
        "-kernel", str(art.kernel), "-initrd", str(art.initrd), "-append", cmdline,
        "-drive", f"file={disk},format=raw,if=virtio,cache=unsafe",
        "-nic", f"user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:{host_port}-:{LAB_PORT}",
        "-device", "virtio-gpu-pci", "-display", "none", "-serial", serial, "-monitor", monitor,
    ]  # fmt: skip


@dataclass
class Guest:
    """A running QEMU guest."""

    proc: subprocess.Popen[bytes]
    serial_log: Path
    host_port: int
    monitor: Path | None = None
    started: float = field(default_factory=time.monotonic)

    @property
    def health_url(self) -> str:
        return f"http://127.0.0.1:{self.host_port}{HEALTH_PATH}"

    def console(self) -> str:
        """The serial console so far."""
        return self.serial_log.read_text(errors="replace") if self.serial_log.exists() else ""

    def wait_console(self, text: str, timeout: float, *, after: str | None = None) -> float:
        """Seconds since start when ``text`` appeared on the console (after ``after``, if given).

        QemuError on timeout or when QEMU exits.
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            console = self.console()
            if after is not None:
                console = console.partition(after)[2]
            if text in console:
                return time.monotonic() - self.started
            if self.proc.poll() is not None:
                raise QemuError(f"QEMU exited ({self.proc.returncode}) before {text!r} appeared")
            time.sleep(0.5)
        raise QemuError(f"{text!r} did not appear on the console within {timeout:.0f} s")

    def wait_healthy(self, timeout: float) -> tuple[float, dict[str, Any]]:
        """Poll the health endpoint through the port forward: (seconds since start, its JSON)."""
        deadline = time.monotonic() + timeout
        last = "no answer"
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise QemuError(f"QEMU exited ({self.proc.returncode}) before the daemon was healthy")
            try:
                with urllib.request.urlopen(self.health_url, timeout=3) as resp:  # noqa: S310 - a local URL
                    body = json.loads(resp.read() or b"{}")
                    if resp.status == 200:
                        return time.monotonic() - self.started, body
                    last = f"HTTP {resp.status}"
            except urllib.error.HTTPError as exc:
                last = f"HTTP {exc.code}"
            except (urllib.error.URLError, OSError, ValueError) as exc:
                last = str(exc)
            time.sleep(1)
        raise QemuError(f"{self.health_url} not healthy within {timeout:.0f} s (last: {last})")

    def powerdown(self) -> None:
        """Press the ACPI power button (logind shuts the guest down cleanly)."""
        import socket

        if self.monitor is None:
            raise QemuError("this guest has no monitor socket")
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(str(self.monitor))
            sock.sendall(b"system_powerdown\n")
            time.sleep(0.5)

    def stop(self, timeout: float = 60.0) -> None:
        """Wait for the guest to power off (it was asked to), else kill QEMU."""
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @contextlib.contextmanager
    def powered(self) -> Iterator[Guest]:
        """Power the guest off cleanly when the block ends; on an error kill it and show the console's end."""
        try:
            yield self
            self.powerdown()
            self.stop(timeout=120)
        except BaseException:
            self.proc.kill()
            self.proc.wait()
            sys.stderr.write(self.console()[-6000:])
            raise


def boot(art: Artifacts, disk: Path, serial_log: Path, *, kvm: bool | None = None,
         extra_cmdline: tuple[str, ...] = ()) -> Guest:  # fmt: skip
    """Start QEMU on ``disk`` (a copy of the image) with the lab port forwarded to a free host port."""
    exe = "qemu-system-aarch64" if art.info.get("arch") == "arm64" else "qemu-system-x86_64"
    if shutil.which(exe) is None:
        raise QemuError(f"{exe} is not installed (apt install qemu-system-x86 or qemu-system-arm)")
    port = free_port()
    use_kvm = kvm_usable() if kvm is None else kvm
    monitor = serial_log.with_suffix(".monitor")
    cmd = qemu_command(art, disk, serial=f"file:{serial_log}", host_port=port, kvm=use_kvm,
                       monitor=f"unix:{monitor},server=on,wait=off",
                       extra_cmdline=("tillbox.lab=1", *extra_cmdline))  # fmt: skip
    log: IO[bytes] = serial_log.with_suffix(".qemu.log").open("wb")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    return Guest(proc, serial_log, port, monitor)


# -- partitions, read and written without mounting -----------------------------------------------


def _mtools_env() -> dict[str, str]:
    return {**os.environ, "MTOOLS_SKIP_CHECK": "1"}


def fat_put(img: Path, offset: int, src: Path, name: str) -> None:
    """Copy a file onto the FAT partition at ``offset``."""
    subprocess.run(["mcopy", "-o", "-i", f"{img}@@{offset}", str(src), f"::{name}"], check=True,
                   env=_mtools_env(), capture_output=True)  # fmt: skip


def fat_get(img: Path, offset: int, name: str) -> bytes | None:
    """A file's bytes from the FAT partition, or None when it is not there."""
    result = subprocess.run(["mtype", "-i", f"{img}@@{offset}", f"::{name}"], env=_mtools_env(),
                            capture_output=True, check=False)  # fmt: skip
    return result.stdout if result.returncode == 0 else None


def fat_mkdir(img: Path, offset: int, *names: str) -> None:
    """Make directories on the FAT partition at ``offset`` (parents first)."""
    subprocess.run(["mmd", "-D", "s", "-i", f"{img}@@{offset}", *[f"::{n}" for n in names]], check=True,
                   env=_mtools_env(), capture_output=True)  # fmt: skip


def fat_del(img: Path, offset: int, name: str) -> None:
    """Delete a file from the FAT partition at ``offset`` (nothing when it is not there)."""
    if fat_get(img, offset, name) is not None:
        subprocess.run(["mdel", "-i", f"{img}@@{offset}", f"::{name}"], check=True, env=_mtools_env(),
                       capture_output=True)  # fmt: skip


def ext4_at(img: Path, offset: int) -> str:
    """The ext4 filesystem at ``offset`` in an image, as e2fsprogs tools open it (no copy, no loop device)."""
    return f"{img}?offset={offset}"


def ext4_readlink(fs: Path | str, path: str) -> str | None:
    """A symlink's target in an ext4 image, or None when ``path`` is not a symlink."""
    result = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    for line in result.stdout.splitlines():
        if line.startswith("Fast link dest:"):
            return line.split(":", 1)[1].strip().strip('"')
    return None


def ext4_ls(fs: Path | str, path: str) -> list[str]:
    """Names in a directory of an ext4 image (without . and ..)."""
    result = subprocess.run(["debugfs", "-R", f"ls -p {path}", str(fs)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    names = [line.split("/")[5] for line in result.stdout.splitlines() if line.count("/") >= 6]
    return sorted(n for n in names if n not in (".", ".."))


def ext4_rdump(fs: Path | str, path: str, dest: Path) -> Path:
    """Copy a directory out of an ext4 image into ``dest`` (modes and times kept); the copy's path."""
    dest.mkdir(parents=True, exist_ok=True)
    subprocess.run(["debugfs", "-R", f"rdump {path} {dest}", str(fs)], capture_output=True, check=True)
    out = dest / path.rstrip("/").rsplit("/", 1)[-1]
    if not out.is_dir():
        raise QemuError(f"debugfs could not copy {path} out of {fs}")
    return out


def ext4_put(fs: Path | str, src: Path, dest: str, mode: int = 0o644) -> None:
    """Write a new file ``dest`` (in an existing directory) into an ext4 image, owned by root."""
    directory, name = dest.rsplit("/", 1)
    script = "\n".join([f"cd {directory or '/'}", f"write {src} {name}", f"sif {name} mode 0{0o100000 | mode:o}",
                        f"sif {name} uid 0", f"sif {name} gid 0", ""])  # fmt: skip
    subprocess.run(["debugfs", "-w", "-f", "-", str(fs)], input=script, text=True, capture_output=True, check=True)
    if ext4_read(fs, dest) != src.read_bytes():
        raise QemuError(f"debugfs could not write {dest} into {fs}")


def fsck_clean(fs: Path | str) -> tuple[bool, str]:
    """Check an ext4 image without changing it (``e2fsck -fn``): (clean, the end of its report)."""
    result = subprocess.run(["e2fsck", "-fn", str(fs)], capture_output=True, text=True, check=False)
    return result.returncode == 0, (result.stdout + result.stderr)[-500:]


def extract_partition(img: Path, offset: int, size: int, out: Path) -> Path:
    """Copy one partition out of the image (to read it with debugfs); all-zero blocks stay holes."""
    chunk = 1 << 20
    zero = bytes(chunk)
    with img.open("rb") as fin, out.open("wb") as fout:
        fout.truncate(size)
        fin.seek(offset)
        pos = 0
        while pos < size:
            block = fin.read(min(size - pos, chunk))
            if not block:
                break
            if block != zero[: len(block)]:
                fout.seek(pos)
                fout.write(block)
            pos += len(block)
    return out


def contains(path: Path, needle: bytes, start: int = 0, end: int | None = None, chunk: int = 1 << 20) -> bool:
    """Whether ``needle`` occurs in ``path[start:end]``, reading only the allocated parts of a sparse file."""
    end = path.stat().st_size if end is None else end
    with path.open("rb") as fh:
        pos = start
        while pos < end:
            try:
                pos = os.lseek(fh.fileno(), pos, os.SEEK_DATA)
            except OSError:  # ENXIO: no data after pos
                return False
            hole = min(os.lseek(fh.fileno(), pos, os.SEEK_HOLE), end)
            while pos < hole:
                fh.seek(pos)
                # overlap the next chunk so a needle across the boundary is found
                if needle in fh.read(min(chunk, hole - pos) + len(needle) - 1)[: end - pos]:
                    return True
                pos += chunk
            pos = max(pos, hole)
    return False


def ext4_read(fs: Path | str, path: str) -> bytes | None:
    """A file from an ext4 filesystem image (after ``e2fsck -fy`` replays its journal), or None."""
    result = subprocess.run(["debugfs", "-R", f"cat {path}", str(fs)], capture_output=True, check=False)
    if result.returncode != 0 or b"File not found" in result.stderr:
        return None
    return result.stdout


def ext4_stat(fs: Path, path: str) -> dict[str, int] | None:
    """(mode, uid, gid) of a path in an ext4 image, or None when it does not exist."""
    result = subprocess.run(["debugfs", "-R", f"stat {path}", str(fs)], capture_output=True, text=True,
                            check=False)  # fmt: skip
    if "File not found" in result.stderr or "Inode:" not in result.stdout:
        return None
    words = result.stdout.replace(":", " ").split()
    mode = int(words[words.index("Mode") + 1], 8)
    uid = int(words[words.index("User") + 1])
    gid = int(words[words.index("Group") + 1])
    return {"mode": mode, "uid": uid, "gid": gid}


def fsck(fs: Path) -> None:
    """Replay the journal and check the filesystem (as the next boot would)."""
    result = subprocess.run(["e2fsck", "-fy", str(fs)], capture_output=True, text=True, check=False)
    if result.returncode > 1:  # 1 means errors were corrected
        raise QemuError(f"e2fsck {fs.name} exited {result.returncode}: {result.stdout[-500:]}")


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(prog="python -m image.qemu", description="boot an amd64 image on this terminal")
    parser.add_argument("image", type=Path)
    parser.add_argument("--snapshot", action="store_true", help="discard the guest's writes")
    parser.add_argument("--append", default="", help="more kernel command line")
    args = parser.parse_args(argv)
    art = Artifacts.load(args.image)
    port = free_port()
    cmd = qemu_command(art, args.image, serial="mon:stdio", host_port=port, kvm=kvm_usable(), monitor="none",
                       extra_cmdline=("tillbox.lab=1", *args.append.split()))  # fmt: skip
    if args.snapshot:
        cmd.append("-snapshot")
    print(f"UI forwarded to http://127.0.0.1:{port}/ (Ctrl-a x quits)", file=sys.stderr)
    return subprocess.run(cmd, check=False).returncode


if __name__ == "__main__":
    sys.exit(main())
