"""The image recipe as data: packages, partition layout and the files the root gets. Pure, no I/O.

Everything here is a function of its arguments so the build (``image.build``) and the fast
tests read the same text. Layout of a built image (MBR, so the Pi 3 boot ROM can read it)::

    p1  FAT32  TB_BOOT  /boot/firmware    firmware, kernel, config.txt, cmdline.txt, provisioning file
    p2  ext4   TB_ROOT  /                 read-only Debian root with the appliance in /opt/tillbox
    p3  ext4   TB_DATA  /var/lib/tillbox  ledger, identity, config, sync outbox (the only persistent state)
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from appliance.errors import ConfigError

SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"
SECTOR = 512
MIB = 1024 * 1024
ALIGN_MIB = 4  # SD cards erase in 4 MiB blocks
INSTALL_ROOT = "/opt/tillbox"
DATA_DIR = "/var/lib/tillbox"
BOOT_DIR = "/boot/firmware"
PROVISION_FILE = "tillbox-provision.toml"
HOSTNAME = "tillbox"
#: The MBR disk identifier; partitions are found by PARTUUID ``<disk id>-<nn>``.
DISK_ID = 0x7B11B0C5
#: Fixed ids so the data partition's owner is the same on every image.
TILLBOX_UID = 901
KIOSK_UID = 902
GPIO_GID = 903

COMMON_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd", "systemd-resolved", "systemd-timesyncd",
    "python3", "ca-certificates", "iproute2", "kmod", "e2fsprogs", "dosfstools", "zstd",
    "cage", "chromium", "xwayland", "libgl1-mesa-dri", "fonts-dejavu-core",
)  # fmt: skip


@dataclass(frozen=True)
class Target:
    """What differs between the Raspberry Pi image and the amd64 test image."""

    arch: str
    packages: tuple[str, ...]
    components: tuple[str, ...]
    consoles: tuple[str, ...]
    raspi: bool
    qemu_user: str | None  # the qemu-user binary a non-native build host needs


TARGETS = {
    "arm64": Target(
        "arm64",
        ("linux-image-arm64", "raspi-firmware", "firmware-brcm80211", "wireless-regdb", "wpasupplicant"),
        ("main", "non-free-firmware"),
        ("ttyS1,115200", "tty1"),
        raspi=True,
        qemu_user="qemu-aarch64",
    ),
    # The last console is /dev/console: the screen on the Pi, the serial port under QEMU.
    "amd64": Target(
        "amd64", ("linux-image-amd64",), ("main",), ("tty1", "ttyS0,115200"), raspi=False, qemu_user="qemu-x86_64"
    ),
}


def target(arch: str) -> Target:
    """The target for a Debian architecture name."""
    try:
        return TARGETS[arch]
    except KeyError:
        raise ConfigError(f"unknown image architecture {arch!r}; choose one of {', '.join(sorted(TARGETS))}") from None


def packages(arch: str) -> list[str]:
    """Every package the root gets (mmdebstrap ``--include``), sorted."""
    return sorted({*COMMON_PACKAGES, *target(arch).packages})


# -- partitions ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Partition:
    """One MBR partition, in sectors."""

    number: int
    label: str
    mbr_type: str
    start: int
    size: int
    mountpoint: str

    @property
    def offset(self) -> int:
        """Byte offset in the image."""
        return self.start * SECTOR

    @property
    def bytes(self) -> int:
        return self.size * SECTOR


@dataclass(frozen=True)
class Layout:
    """The partition table of an image."""

    partitions: tuple[Partition, ...]
    disk_id: int = DISK_ID

    @property
    def total_bytes(self) -> int:
        """The image file size: the last partition's end, plus the alignment tail."""
        end = max(p.start + p.size for p in self.partitions) * SECTOR
        return _align(end + 1) if end % (ALIGN_MIB * MIB) else end

    def by_label(self, label: str) -> Partition:
        for p in self.partitions:
            if p.label == label:
                return p
        raise KeyError(label)


def _align(n_bytes: int) -> int:
    unit = ALIGN_MIB * MIB
    return -(-n_bytes // unit) * unit


def root_size(used_bytes: int, inodes: int) -> int:
    """Bytes for an ext4 holding ``used_bytes`` of files in ``inodes`` inodes, with room for fsck and the journal."""
    overhead = inodes * 256 + 64 * MIB  # inode tables, journal, reserved blocks
    return _align(int(used_bytes * 1.10) + overhead)


def layout(root_bytes: int, *, boot_mib: int = 256, data_mib: int = 512, disk_id: int = DISK_ID) -> Layout:
    """Boot, root and data partitions, each aligned to 4 MiB; the first starts at 4 MiB."""
    if boot_mib < 64 or data_mib < 64:
        raise ConfigError("the boot and data partitions need at least 64 MiB each")
    sizes = [("TB_BOOT", "c", boot_mib * MIB, BOOT_DIR), ("TB_ROOT", "83", _align(root_bytes), "/"),
             ("TB_DATA", "83", data_mib * MIB, DATA_DIR)]  # fmt: skip
    parts: list[Partition] = []
    start = ALIGN_MIB * MIB
    for number, (label, kind, size, mount) in enumerate(sizes, 1):
        size = _align(size)
        parts.append(Partition(number, label, kind, start // SECTOR, size // SECTOR, mount))
        start += size
    return Layout(tuple(parts), disk_id)


def sfdisk_script(lay: Layout) -> str:
    """Input for ``sfdisk IMAGE``: an MBR label with a fixed disk id; p1 is the bootable FAT."""
    lines = ["label: dos", f"label-id: 0x{lay.disk_id:08x}", "unit: sectors", f"sector-size: {SECTOR}", ""]
    for p in lay.partitions:
        boot = ", bootable" if p.number == 1 else ""
        lines.append(f"start={p.start}, size={p.size}, type={p.mbr_type}{boot}")
    return "\n".join(lines) + "\n"


def partuuid(disk_id: int, number: int) -> str:
    """The PARTUUID Linux gives MBR partition ``number``."""
    return f"{disk_id:08x}-{number:02d}"


# -- files in the root ---------------------------------------------------------------------------


@dataclass(frozen=True)
class File:
    """A file the recipe writes into the root."""

    content: str
    mode: int = 0o644


def fstab(disk_id: int = DISK_ID) -> str:
    """Read-only root; the data partition at /var/lib/tillbox; volatile state on tmpfs."""
    dev = {n: f"PARTUUID={partuuid(disk_id, n)}" for n in (1, 2, 3)}
    rows = [
        (dev[2], "/", "ext4", "ro,noatime,errors=remount-ro", "0", "1"),
        (dev[1], BOOT_DIR, "vfat", "rw,noatime,umask=0077,flush,nosuid,nodev,noexec", "0", "2"),
        (dev[3], DATA_DIR, "ext4", "rw,noatime,nosuid,nodev,noexec,x-systemd.growfs", "0", "2"),
        ("tmpfs", "/tmp", "tmpfs", "mode=1777,nosuid,nodev,size=128M", "0", "0"),  # noqa: S108 - a mount point
        ("tmpfs", "/var/tmp", "tmpfs", "mode=1777,nosuid,nodev,size=32M", "0", "0"),  # noqa: S108
        ("tmpfs", "/var/log", "tmpfs", "mode=0755,nosuid,nodev,noexec,size=48M", "0", "0"),
        ("tmpfs", "/var/lib/systemd", "tmpfs", "mode=0755,nosuid,nodev,size=8M", "0", "0"),
    ]
    head = "# tillbox: the root is read-only; only /var/lib/tillbox (the data partition) persists.\n"
    return head + "".join("\t".join(r) + "\n" for r in rows)


def journald_dropin() -> str:
    """journald keeps the journal in RAM, capped, so logging never wears or fills the SD card."""
    return textwrap.dedent("""\
        # tillbox: a volatile, size-capped journal (the root is read-only; the SD card is spared).
        [Journal]
        Storage=volatile
        RuntimeMaxUse=32M
        RuntimeMaxFileSize=8M
        RuntimeKeepFree=16M
        SystemMaxUse=64M
        MaxLevelStore=info
        ForwardToSyslog=no
        """)


def cmdline(arch: str, disk_id: int = DISK_ID, extra: tuple[str, ...] = ()) -> str:
    """The kernel command line (the Pi's cmdline.txt, or QEMU's ``-append``): one line."""
    t = target(arch)
    args = [f"console={c}" for c in t.consoles]
    args += [f"root=PARTUUID={partuuid(disk_id, 2)}", "rootfstype=ext4", "ro", "rootwait", "fsck.repair=yes",
             "net.ifnames=0", "quiet"]  # fmt: skip
    if t.raspi:
        args.append("cma=128M")  # contiguous memory for the GPU that draws the kiosk
    return " ".join([*args, *extra]) + "\n"


def config_txt(kernel: str, initrd: str) -> str:
    """The Pi firmware's config.txt: 64-bit, Debian's upstream kernel and device trees; Pi 3, 4, 400, CM4."""
    return textwrap.dedent(f"""\
        # tillbox: Raspberry Pi 3, 4, 400 and CM4 booting Debian's arm64 kernel (raspi-firmware).
        arm_64bit=1
        upstream_kernel=1
        kernel={kernel}
        initramfs {initrd} followkernel
        enable_uart=1
        disable_splash=1
        disable_overscan=1
        avoid_warnings=1

        [pi4]
        # Pi 4, 400 and CM4: both HDMI outputs available to the kiosk
        max_framebuffers=2

        [all]
        """)


def sysusers() -> str:
    """sysusers.d: ``tillbox`` (the daemon, with its device groups) and ``kiosk`` (the screen)."""
    return textwrap.dedent(f"""\
        # tillbox users. The daemon owns the devices and the data partition; the kiosk only draws.
        g gpio {GPIO_GID}
        u tillbox {TILLBOX_UID} "tillbox till daemon" {DATA_DIR} /usr/sbin/nologin
        m tillbox input
        m tillbox dialout
        m tillbox plugdev
        m tillbox gpio
        u kiosk {KIOSK_UID} "tillbox kiosk screen" /run/tillbox-kiosk /usr/sbin/nologin
        m kiosk video
        m kiosk render
        m kiosk input
        """)


def networkd() -> dict[str, str]:
    """systemd-networkd: DHCP on wired and wireless; boot waits for any one link, briefly."""
    wired = "[Match]\nName=eth* en*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nRouteMetric=100\n"
    wifi = "[Match]\nName=wlan* wl*\n\n[Network]\nDHCP=yes\n\n[DHCPv4]\nRouteMetric=600\n"
    wait = "[Service]\nExecStart=\nExecStart=/lib/systemd/systemd-networkd-wait-online --any --timeout=30\n"
    return {
        "/etc/systemd/network/20-wired.network": wired,
        "/etc/systemd/network/30-wifi.network": wifi,
        "/etc/systemd/system/systemd-networkd-wait-online.service.d/tillbox.conf": wait,
    }


#: Units enabled in the image (the tillbox ones come from ``systemd/``).
ENABLE = ("systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service",
          "tillbox.service", "tillbox-provision.service", "tillbox-kiosk.service", "tillbox-update-gate.service",
          "tillbox-lab-http.socket")  # fmt: skip
#: Units that make no sense on a read-only appliance root.
MASK = ("systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
        "e2scrub_reap.service")  # fmt: skip


def root_files(arch: str, version: str, disk_id: int = DISK_ID) -> dict[str, File]:
    """Every text file the recipe writes into the root, by absolute path."""
    files = {
        "/etc/fstab": File(fstab(disk_id)),
        "/etc/hostname": File(HOSTNAME + "\n"),
        "/etc/hosts": File(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        "/etc/machine-id": File(""),  # per boot: the read-only root cannot keep one
        "/etc/default/locale": File("LANG=C.UTF-8\n"),
        "/etc/systemd/journald.conf.d/tillbox.conf": File(journald_dropin()),
        "/usr/lib/sysusers.d/tillbox.conf": File(sysusers()),
        "/etc/tillbox/image-release": File(f"TILLBOX_VERSION={version}\nTILLBOX_ARCH={arch}\nDEBIAN_SUITE={SUITE}\n"),
        "/etc/tillbox/update-keys/README": File(
            "Trusted ed25519 public keys (*.pem) for `tillbox update install`. The image build puts the\n"
            "release key here (image/build.py --update-key).\n"
        ),
    }
    files.update({path: File(text) for path, text in networkd().items()})
    return files


def boot_files(arch: str, kernel: str, initrd: str, disk_id: int = DISK_ID) -> dict[str, File]:
    """Files the recipe writes onto the FAT boot partition (besides the firmware and kernel)."""
    files = {
        "README.txt": File(
            "tillbox boot partition.\r\n"
            f"Provision a till: tillbox provision write ... --out {PROVISION_FILE} and copy it here.\r\n"
        ),
    }
    if target(arch).raspi:
        files["config.txt"] = File(config_txt(kernel, initrd))
        files["cmdline.txt"] = File(cmdline(arch, disk_id))
    return files


def mmdebstrap_args(arch: str, root: str, *, suite: str = SUITE, mirror: str = MIRROR,
                    customize_hook: str, apt_cache: str | None = None) -> list[str]:  # fmt: skip
    """The mmdebstrap command line: a minimal apt root, no recommends, no docs or man pages.

    ``apt_cache`` is a host directory of .deb files kept between builds (developer speed-up).
    """
    t = target(arch)
    cache: list[str] = []
    if apt_cache:
        cache = ["--skip=download/empty", "--skip=essential/unlink",
                 '--setup-hook=mkdir -p "$1"/var/cache/apt/archives',
                 f"--setup-hook=sync-in {apt_cache} /var/cache/apt/archives/"]  # fmt: skip
    # Installing packages would make the initrd several times (minutes each under qemu-user):
    # divert update-initramfs to a no-op until the customize hook makes it once.
    no_initrd = [
        '--essential-hook=chroot "$1" dpkg-divert --quiet --local --rename --add /usr/sbin/update-initramfs',
        '--essential-hook=printf "#!/bin/sh\\nexit 0\\n" > "$1/usr/sbin/update-initramfs" && '
        'chmod 755 "$1/usr/sbin/update-initramfs"',
    ]
    return [
        "mmdebstrap", "--mode=root", "--variant=apt", f"--architectures={arch}",
        f"--components={','.join(t.components)}", f"--include={','.join(packages(arch))}",
        "--aptopt=APT::Install-Recommends \"false\"",
        "--dpkgopt=path-exclude=/usr/share/man/*", "--dpkgopt=path-exclude=/usr/share/doc/*",
        "--dpkgopt=path-include=/usr/share/doc/*/copyright", "--dpkgopt=path-exclude=/usr/share/info/*",
        "--dpkgopt=path-exclude=/usr/share/locale/*", "--dpkgopt=path-include=/usr/share/locale/locale.alias",
        *cache, *no_initrd,
        f"--customize-hook={customize_hook}",
        *([f"--customize-hook=sync-out /var/cache/apt/archives {apt_cache}"] if apt_cache else []),
        suite, root, mirror,
    ]  # fmt: skip
