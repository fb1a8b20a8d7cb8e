"""The image recipe as data: packages, partition layout and the files the root gets. Pure, no I/O.

Everything here is a function of its arguments so the build (``image.build``) and the fast
tests read the same text. Layout of a built image (MBR, so the Pi 3 boot ROM can read it)::

    p1  FAT32  TB_BOOT  /boot/firmware    firmware, kernel, config.txt, cmdline.txt, provisioning file
    p2  ext4   TB_ROOT  /                 read-only Debian root with the appliance in /opt/tillbox
    p3  ext4   TB_DATA  /var/lib/tillbox  ledger, identity, config, sync outbox (the only persistent state)

p3 is the last partition: on the first boot on a larger card it grows to the card's end.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass

from appliance.errors import ConfigError
from appliance.provision import OS_LOCALES, SYSTEM_DIR, WIFI_INTERFACE

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
#: Where tillbox-settings.service writes what the read-only root's /etc links point at.
RUN_SETTINGS = "/run/tillbox-system"
#: On the boot partition: what a QEMU test leaves for tillbox-lab-update.service (update.tar, keys/).
LAB_DIR = "tillbox-lab"
#: The first lines of the venv's console scripts, instead of pip's ``#!/opt/tillbox/versions/<v>/bin/python``:
#: run the ``python`` beside the script's real path, so a version runs from whatever directory an
#: update unpacks it to (sh runs line 2; to Python lines 2-3 are a string).
RELOCATABLE_SHEBANG = """#!/bin/sh
'''exec' "$(dirname -- "$(realpath -- "$0")")/python" "$0" "$@"
' '''
"""
#: Fixed ids so the data partition's owner is the same on every image.
TILLBOX_UID = 901
KIOSK_UID = 902
GPIO_GID = 903

COMMON_PACKAGES = (
    "systemd", "systemd-sysv", "udev", "dbus", "libpam-systemd", "systemd-resolved", "systemd-timesyncd",
    "python3", "ca-certificates", "iproute2", "kmod", "e2fsprogs", "dosfstools", "zstd",
    "tzdata", "locales", "cloud-guest-utils",
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
    mask: tuple[str, ...] = ()  # units of this target's packages the appliance does not use


TARGETS = {
    "arm64": Target(
        "arm64",
        ("linux-image-arm64", "raspi-firmware", "firmware-brcm80211", "wireless-regdb", "wpasupplicant"),
        ("main", "non-free-firmware"),
        ("ttyS1,115200", "tty1"),
        raspi=True,
        qemu_user="qemu-aarch64",
        mask=("wpa_supplicant.service",),  # the D-Bus one (for NetworkManager); wpa_supplicant@wlan0 runs instead
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


def root_size(used_bytes: int, inodes: int, update: tuple[int, int] = (0, 0)) -> int:
    """Bytes for an ext4 holding ``used_bytes`` of files in ``inodes`` inodes, with room for fsck and the journal.

    ``update`` is (bytes, inodes) of one appliance version: an update unpacks the next version
    beside the running one, so the root keeps room for a second copy.
    """
    used_bytes, inodes = used_bytes + update[0], inodes + update[1]
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


def unit_escape_path(path: str) -> str:
    """``systemd-escape --path``: the unit name prefix systemd gives a path (``/dev/a-b`` -> ``dev-a\\x2db``)."""
    out = []
    for i, ch in enumerate(path.strip("/")):
        if ch == "/":
            out.append("-")
        elif (ch.isascii() and (ch.isalnum() or ch in ":_.")) and not (i == 0 and ch == "."):
            out.append(ch)
        else:
            out.append("".join(f"\\x{b:02x}" for b in ch.encode()))
    return "".join(out)


def data_device(disk_id: int = DISK_ID) -> str:
    """The data partition's device path (the initrd, the grow unit and /etc/fstab agree on it)."""
    return f"/dev/disk/by-partuuid/{partuuid(disk_id, 3)}"


def grow_data_script() -> str:
    """Grow the partition given as a device path to the end of its disk (growpart; no change when it is there)."""
    return textwrap.dedent("""\
        #!/bin/sh
        # tillbox: grow the data partition (the card's last) to the end of the card. growpart changes
        # nothing when it already ends there, so only a first boot on a larger card does any work;
        # systemd-growfs (x-systemd.growfs in /etc/fstab) then grows the mounted filesystem.
        set -eu
        part=$(readlink -f "$1")
        name=$(lsblk -ndo PKNAME "$part")
        number=$(cat "/sys/class/block/${part##*/}/partition")
        # Sectors after the partition: none worth a growpart run (seconds on a slow CPU) on most boots.
        end=$(( $(cat "/sys/class/block/${part##*/}/start") + $(cat "/sys/class/block/${part##*/}/size") ))
        [ $(( $(cat "/sys/class/block/$name/size") - end )) -ge 8192 ] || exit 0
        if out=$(growpart "/dev/$name" "$number" 2>&1); then
            echo "tillbox: data partition: $out"
        else
            case $out in NOCHANGE:*) exit 0 ;; esac
            echo "tillbox: cannot grow the data partition: $out" >&2
            exit 1
        fi
        """)


def grow_data_unit(disk_id: int = DISK_ID) -> str:
    """The oneshot that grows the mounted data partition, before systemd-growfs grows its filesystem.

    Online, as growpart is meant to run: on a partition that is not in use, sfdisk would tell the
    kernel by deleting and re-adding it, and systemd would take that for the device going away
    (failing its fsck and mount); on a mounted one that is refused, and ``partx --update``
    resizes it in place.
    """
    mount = unit_escape_path(DATA_DIR)
    return textwrap.dedent(f"""\
        # tillbox: grow the (mounted) data partition to the end of the card; systemd-growfs then
        # grows its filesystem (x-systemd.growfs in /etc/fstab).
        [Unit]
        Description=tillbox: grow the data partition to the end of the card
        DefaultDependencies=no
        RequiresMountsFor={DATA_DIR}
        Before=systemd-growfs@{mount}.service local-fs.target shutdown.target
        Conflicts=shutdown.target

        [Service]
        Type=oneshot
        RemainAfterExit=yes
        ExecStart=/usr/lib/tillbox/grow-data {data_device(disk_id)}
        StandardOutput=journal+console

        [Install]
        WantedBy=local-fs.target
        """)


def initramfs_machine_id(disk_id: int = DISK_ID) -> str:
    """An initramfs-tools local-bottom script: the stored machine id over the root's empty /etc/machine-id.

    The root is read-only, so systemd would make a new id each boot. tillbox-settings.service
    stores the first boot's id in DATA_DIR/system/machine-id; from the next boot on this
    script (klibc sh and mount) mounts the data partition read-only, reads the id, and
    bind-mounts a copy in /run over /etc/machine-id before systemd starts. Never fails the boot.
    """
    zero = "0" * 32
    return textwrap.dedent(f"""\
        #!/bin/sh
        # tillbox: hand systemd the machine id kept on the data partition (the root is read-only).
        PREREQ=""
        prereqs() {{ echo "$PREREQ"; }}
        case "$1" in
        prereqs) prereqs; exit 0 ;;
        esac
        dev={data_device(disk_id)}
        mnt=/tillbox-data
        udevadm settle --timeout=5 >/dev/null 2>&1
        [ -b "$dev" ] || exit 0
        mkdir -p "$mnt" || exit 0
        mount -t ext4 -o ro,nosuid,nodev,noexec "$dev" "$mnt" || exit 0
        id=
        if [ -f "$mnt/{SYSTEM_DIR}/machine-id" ]; then read -r id < "$mnt/{SYSTEM_DIR}/machine-id" || id=; fi
        umount "$mnt"
        case "$id" in
        {"?" * 32}) ;;
        *) exit 0 ;;
        esac
        case "$id" in *[!0-9a-f]*|{zero}) exit 0 ;; esac
        printf '%s\\n' "$id" > /run/machine-id || exit 0
        mount -o bind /run/machine-id "${{rootmnt:?}}/etc/machine-id"
        """)


def lab_report_script() -> str:
    """One console line of facts about this boot, for the QEMU tests (tillbox-lab-report.service)."""
    return textwrap.dedent(f"""\
        #!/bin/sh
        # tillbox lab report: facts about this boot on one console line, for the QEMU tests.
        # tillbox-lab-report.service runs it only with tillbox.lab=1 on the kernel command line.
        data=$(findmnt -no SOURCE {DATA_DIR})
        set -- $(stat -f -c '%b %S' {DATA_DIR})
        LANG=
        . /etc/locale.conf 2>/dev/null
        wpa={RUN_SETTINGS}/wpa_supplicant-{WIFI_INTERFACE}.conf
        echo "tillbox-lab-report:" \\
            "machine-id=$(cat /etc/machine-id)" \\
            "data-part-bytes=$(lsblk -bndo SIZE "$data")" \\
            "data-fs-bytes=$(($1 * $2))" \\
            "localtime=$(readlink -f /etc/localtime)" \\
            "tz=$(date +%Z)" \\
            "lang=$LANG" \\
            "monday=$(LC_ALL=$LANG date -d 2024-01-01 +%A)" \\
            "wifi-conf=$(stat -c %a:%U "$wpa" 2>/dev/null || echo none)" \\
            "environment=$(tr '\\n' ',' < {RUN_SETTINGS}/environment)" \\
            "end"
        """)


def lab_update_script() -> str:
    """Install the update bundle a QEMU test left on the boot partition (tillbox-lab-update.service).

    As a technician would, as root: ``tillbox update install`` from the running version. With
    ``apply-now`` beside the bundle it also restarts the daemon onto the new version and runs
    the health gate unit at once (with a short wait), instead of at the next boot.
    """
    return textwrap.dedent(f"""\
        #!/bin/sh
        # tillbox lab update: install {BOOT_DIR}/{LAB_DIR}/update.tar, trusting the keys in
        # {LAB_DIR}/keys; tillbox-lab-update.service runs it only in a VM with tillbox.lab=1.
        lab={BOOT_DIR}/{LAB_DIR}
        say() {{ echo "tillbox-lab-update: $*"; }}
        out=$({INSTALL_ROOT}/current/bin/tillbox update install "$lab/update.tar" --keys "$lab/keys" 2>&1)
        say "install rc=$? $out"
        if [ -e "$lab/apply-now" ]; then
            systemctl restart tillbox.service
            say "restart rc=$?"
            systemctl set-environment TILLBOX_GATE_WAIT=5
            systemctl start tillbox-update-gate.service
            say "gate rc=$?"
            systemctl unset-environment TILLBOX_GATE_WAIT
        fi
        say "done current=$(readlink {INSTALL_ROOT}/current)" \\
            "root=$(findmnt -no OPTIONS / | cut -d, -f1)" \\
            "state=$(tr -d ' \\n' < {INSTALL_ROOT}/state.json)"
        """)


def locale_gen() -> str:
    """/etc/locale.gen: the UTF-8 locales the image compiles (``locale`` in a provisioning file picks one)."""
    return "# tillbox: compiled into the image by locale-gen\n" + "".join(f"{x}.UTF-8 UTF-8\n" for x in OS_LOCALES)


def root_links(arch: str) -> dict[str, str]:
    """Symlinks in the read-only root: /etc files that point at what tillbox-settings.service writes at boot."""
    links = {
        "/etc/localtime": f"{RUN_SETTINGS}/localtime",
        "/etc/timezone": f"{RUN_SETTINGS}/timezone",
        "/etc/locale.conf": f"{RUN_SETTINGS}/locale.conf",
        "/etc/default/locale": f"{RUN_SETTINGS}/locale.conf",
    }
    if target(arch).raspi:
        wlan = WIFI_INTERFACE
        links[f"/etc/wpa_supplicant/wpa_supplicant-{wlan}.conf"] = f"{RUN_SETTINGS}/wpa_supplicant-{wlan}.conf"
        # wpa_supplicant starts when the Wi-Fi interface appears (a CM4 Lite may have none).
        links[f"/etc/systemd/system/sys-subsystem-net-devices-{wlan}.device.wants/wpa_supplicant@{wlan}.service"] = (
            "/lib/systemd/system/wpa_supplicant@.service"
        )
    return links


#: Units enabled in the image (the tillbox ones come from ``systemd/`` and ``image/units/``).
ENABLE = ("systemd-networkd.service", "systemd-resolved.service", "systemd-timesyncd.service",
          "tillbox.service", "tillbox-provision.service", "tillbox-kiosk.service", "tillbox-update-gate.service",
          "tillbox-settings.service", "tillbox-grow-data.service", "tillbox-lab-http.socket",
          "tillbox-lab-report.service", "tillbox-lab-update.service",
          "tillbox-update-apply.path", "tillbox-update-apply.timer")  # fmt: skip
#: Units that make no sense on a read-only appliance root.
MASK = ("systemd-firstboot.service", "apt-daily.timer", "apt-daily-upgrade.timer", "e2scrub_all.timer",
        "e2scrub_reap.service")  # fmt: skip


def root_files(arch: str, version: str, disk_id: int = DISK_ID) -> dict[str, File]:
    """Every text file the recipe writes into the root, by absolute path."""
    files = {
        "/etc/fstab": File(fstab(disk_id)),
        "/etc/hostname": File(HOSTNAME + "\n"),
        "/etc/hosts": File(f"127.0.0.1\tlocalhost\n127.0.1.1\t{HOSTNAME}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        "/etc/machine-id": File(""),  # the initrd mounts the stored one over it (initramfs_machine_id)
        "/etc/locale.gen": File(locale_gen()),
        "/etc/initramfs-tools/scripts/local-bottom/tillbox-machine-id": File(initramfs_machine_id(disk_id), 0o755),
        "/usr/lib/tillbox/grow-data": File(grow_data_script(), 0o755),
        "/usr/lib/tillbox/lab-report": File(lab_report_script(), 0o755),
        "/usr/lib/tillbox/lab-update": File(lab_update_script(), 0o755),
        "/etc/systemd/system/tillbox-grow-data.service": File(grow_data_unit(disk_id)),
        "/etc/systemd/journald.conf.d/tillbox.conf": File(journald_dropin()),
        "/usr/lib/sysusers.d/tillbox.conf": File(sysusers()),
        "/etc/tillbox/image-release": File(f"TILLBOX_VERSION={version}\nTILLBOX_ARCH={arch}\nDEBIAN_SUITE={SUITE}\n"),
        "/etc/tillbox/update-keys/README": File(
            "Trusted ed25519 public keys (*.pem) for `tillbox update install`. The image build puts the\n"
            "release key here (image/build.py --update-key).\n"
        ),
    }
    files.update({path: File(text) for path, text in networkd().items()})
    if target(arch).raspi:
        files[f"/etc/systemd/system/wpa_supplicant@{WIFI_INTERFACE}.service.d/tillbox.conf"] = File(
            "# tillbox: the network comes from the provisioning file, via tillbox-settings.service.\n[Unit]\n"
            f"ConditionPathExists={RUN_SETTINGS}/wpa_supplicant-{WIFI_INTERFACE}.conf\nAfter=tillbox-settings.service\n"
        )
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
