"""The image recipe: generated files, partition layout, the lock, and small real filesystems (no full build)."""

from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from appliance.errors import ConfigError
from image import build, qemu, recipe

ROOT = Path(__file__).resolve().parent.parent
MIB = recipe.MIB


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read(ROOT / "systemd" / name)
    return parser


def _fstab_rows(text: str) -> dict[str, list[str]]:
    rows = [line.split() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    return {r[1]: r for r in rows}


# -- generated files ------------------------------------------------------------------------------


def test_fstab_mounts_root_read_only_and_the_data_partition_at_the_state_directory() -> None:
    rows = _fstab_rows(recipe.fstab(0x12345678))
    assert all(len(r) == 6 for r in rows.values())
    root, boot, data = rows["/"], rows["/boot/firmware"], rows["/var/lib/tillbox"]
    assert root[0] == "PARTUUID=12345678-02" and root[2] == "ext4"
    assert "ro" in root[3].split(",") and "rw" not in root[3].split(",")
    assert boot[0] == "PARTUUID=12345678-01" and boot[2] == "vfat"
    assert "umask=0077" in boot[3].split(","), "the provisioning token on FAT must be readable by root only"
    assert data[0] == "PARTUUID=12345678-03" and data[2] == "ext4" and "rw" in data[3].split(",")
    assert data[5] == "2", "the data partition is checked at boot"
    # the daemon's StateDirectory is the data partition: the unit and the fstab agree
    assert _unit("tillbox.service")["Service"]["StateDirectory"] == "tillbox"
    # everything else that must be writable on a read-only root is on tmpfs
    for path in ("/tmp", "/var/tmp", "/var/log", "/var/lib/systemd"):
        assert rows[path][2] == "tmpfs", path
    # LogsDirectory=tillbox needs a writable /var/log
    assert _unit("tillbox.service")["Service"]["LogsDirectory"] == "tillbox"


def test_journald_is_volatile_and_size_capped() -> None:
    conf = configparser.ConfigParser()
    conf.read_string(recipe.journald_dropin())
    journal = conf["Journal"]
    assert journal["Storage"] == "volatile"

    def mib(value: str) -> int:
        number, unit = re.fullmatch(r"(\d+)([KMG])", value).groups()  # type: ignore[union-attr]
        return int(number) * {"K": 1, "M": 1024, "G": 1024 * 1024}[unit] // 1024

    assert 0 < mib(journal["RuntimeMaxUse"]) <= 64
    assert mib(journal["RuntimeMaxFileSize"]) <= mib(journal["RuntimeMaxUse"])


@pytest.mark.parametrize(("arch", "last_console"), [("arm64", "tty1"), ("amd64", "ttyS0,115200")])
def test_kernel_command_line(arch: str, last_console: str) -> None:
    line = recipe.cmdline(arch, 0xABCDEF01)
    assert line.endswith("\n") and line.count("\n") == 1, "cmdline.txt must be one line"
    args = line.split()
    assert "root=PARTUUID=abcdef01-02" in args and "ro" in args and "rootwait" in args
    consoles = [a.removeprefix("console=") for a in args if a.startswith("console=")]
    assert consoles[-1] == last_console, "the last console= is /dev/console (screen on the Pi, serial in QEMU)"
    assert recipe.cmdline(arch, 1, extra=("tillbox.lab=1",)).split()[-1] == "tillbox.lab=1"


def test_config_txt_boots_the_debian_kernel_in_64_bit() -> None:
    text = recipe.config_txt("vmlinuz-6.1.0-9-arm64", "initrd.img-6.1.0-9-arm64")
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")]
    assert "arm_64bit=1" in lines and "upstream_kernel=1" in lines
    assert "kernel=vmlinuz-6.1.0-9-arm64" in lines
    assert "initramfs initrd.img-6.1.0-9-arm64 followkernel" in lines
    assert lines[-1] == "[all]", "board sections must not leak into settings appended later"


def test_boot_partition_files_per_architecture() -> None:
    pi = recipe.boot_files("arm64", "vmlinuz-x", "initrd.img-x")
    assert {"config.txt", "cmdline.txt", "README.txt"} <= set(pi)
    assert pi["cmdline.txt"].content == recipe.cmdline("arm64")
    assert "kernel=vmlinuz-x" in pi["config.txt"].content
    pc = recipe.boot_files("amd64", "vmlinuz-x", "initrd.img-x")
    assert "config.txt" not in pc and "cmdline.txt" not in pc


def _sysusers() -> tuple[dict[str, int | None], dict[str, set[str]], dict[str, int]]:
    users: dict[str, int | None] = {}
    groups: dict[str, int] = {}
    members: dict[str, set[str]] = {}
    for line in recipe.sysusers().splitlines():
        if not line or line.startswith("#"):
            continue
        kind, name, rest = line.split(None, 2)
        ident = rest.split()[0]
        if kind == "u":
            users[name] = int(ident)
        elif kind == "g":
            groups[name] = int(ident)
        elif kind == "m":
            members.setdefault(name, set()).add(ident)
    return users, members, groups


#: Groups every Debian root has (base-passwd, or systemd's basic.conf).
DEBIAN_GROUPS = {"input", "dialout", "plugdev", "video", "render", "audio", "tty"}


def test_users_have_the_groups_their_units_ask_for() -> None:
    users, members, groups = _sysusers()
    assert users == {"tillbox": recipe.TILLBOX_UID, "kiosk": recipe.KIOSK_UID}
    for unit, user in (("tillbox.service", "tillbox"), ("tillbox-kiosk.service", "kiosk")):
        service = _unit(unit)["Service"]
        assert service["User"] == user
        wanted = set(service["SupplementaryGroups"].split())
        assert wanted <= members[user], f"{unit}: {user} lacks {wanted - members[user]}"
        for group in wanted:
            assert group in groups or group in DEBIAN_GROUPS, f"nothing creates group {group}"
    assert "gpio" in groups, "Debian has no gpio group; the image creates it"
    assert len({*users.values(), *groups.values()}) == 3, "fixed ids must not collide"


def test_udev_rules_name_users_and_groups_the_image_has() -> None:
    users, _, groups = _sysusers()
    known = {*users, *groups, *DEBIAN_GROUPS, "root"}
    for rules in (ROOT / "systemd").glob("*.rules"):
        for key, name in re.findall(r'\b(GROUP|OWNER)="([^"]+)"', rules.read_text()):
            assert name in known, f"{rules.name}: {key}={name!r} does not exist in the image"


def test_root_files_cover_the_appliance_settings() -> None:
    files = recipe.root_files("arm64", "1.2.3")
    assert files["/etc/fstab"].content == recipe.fstab()
    assert files["/etc/systemd/journald.conf.d/tillbox.conf"].content == recipe.journald_dropin()
    assert files["/usr/lib/sysusers.d/tillbox.conf"].content == recipe.sysusers()
    assert files["/etc/machine-id"].content == "", "empty in the image: the initrd mounts the stored id over it"
    assert "TILLBOX_VERSION=1.2.3" in files["/etc/tillbox/image-release"].content
    wait = files["/etc/systemd/system/systemd-networkd-wait-online.service.d/tillbox.conf"].content
    assert "--any" in wait, "boot must not wait for every link (a Pi may have only Wi-Fi)"
    assert all(path.startswith("/") for path in files)


def test_enabled_units_exist() -> None:
    ours = {p.name for p in (ROOT / "systemd").iterdir()} | {p.name for p in (ROOT / "image" / "units").iterdir()}
    ours |= {Path(path).name for path in recipe.root_files("amd64", "1") if path.startswith("/etc/systemd/system/")}
    for unit in recipe.ENABLE:
        assert unit in ours or unit.startswith("systemd-"), unit
    assert {"tillbox.service", "tillbox-provision.service", "tillbox-kiosk.service"} <= set(recipe.ENABLE)
    assert not set(recipe.ENABLE) & set(recipe.MASK)


def test_lab_access_is_off_unless_the_kernel_command_line_asks() -> None:
    sock = configparser.ConfigParser(strict=False)
    sock.read(ROOT / "image" / "units" / "tillbox-lab-http.socket")
    assert sock["Unit"]["ConditionKernelCommandLine"] == "tillbox.lab=1"
    assert sock["Socket"]["ListenStream"] == str(qemu.LAB_PORT)
    assert "tillbox.lab=1" not in recipe.cmdline("arm64")


def test_install_units_copies_units_and_rules(tmp_path: Path) -> None:
    installed = build.install_units(tmp_path)
    assert "tillbox.service" in installed and "tillbox-lab-http.socket" in installed
    unit = tmp_path / "usr/lib/systemd/system/tillbox.service"
    assert unit.read_text() == (ROOT / "systemd" / "tillbox.service").read_text()
    for rules in (ROOT / "systemd").glob("*.rules"):
        assert (tmp_path / "usr/lib/udev/rules.d" / rules.name).is_file()


def test_unknown_architecture_is_a_clear_error() -> None:
    with pytest.raises(ConfigError, match="unknown image architecture 'riscv64'"):
        recipe.packages("riscv64")


def test_packages_and_mmdebstrap_arguments() -> None:
    pi = recipe.packages("arm64")
    assert {"linux-image-arm64", "raspi-firmware", "cage", "chromium", "python3"} <= set(pi)
    assert "linux-image-amd64" in recipe.packages("amd64") and "raspi-firmware" not in recipe.packages("amd64")
    args = recipe.mmdebstrap_args("arm64", "ROOT", customize_hook="HOOK")
    assert args[-3:] == [recipe.SUITE, "ROOT", recipe.MIRROR]
    assert "--components=main,non-free-firmware" in args  # raspi-firmware lives there
    assert "--customize-hook=HOOK" in args and "--architectures=arm64" in args
    divert = [a for a in args if a.startswith("--essential-hook=") and "update-initramfs" in a]
    assert len(divert) == 2, "the initrd is made once, by the customize hook, not by every package"
    assert all(args.index(d) < args.index("--customize-hook=HOOK") for d in divert)
    cached = recipe.mmdebstrap_args("amd64", "R", customize_hook="H", apt_cache="/c")
    assert cached.index("--customize-hook=H") < cached.index("--customize-hook=sync-out /var/cache/apt/archives /c")


# -- system settings, machine id, data partition growth -------------------------------------------


@pytest.mark.parametrize("path", ["/dev/disk/by-partuuid/7b11b0c5-03", "/var/lib/tillbox", "/a/.b/c d/ü", "/.x"])
def test_unit_names_are_escaped_as_systemd_does(path: str) -> None:
    if shutil.which("systemd-escape") is None:
        pytest.skip("systemd-escape is not installed")
    want = subprocess.run(["systemd-escape", "--path", path], capture_output=True, text=True, check=True).stdout
    assert recipe.unit_escape_path(path) == want.strip()


def test_etc_links_point_at_what_the_settings_step_writes(tmp_path: Path) -> None:
    """Every /etc link of the read-only root resolves once tillbox-settings.service has run."""
    from appliance import provision

    run = tmp_path / recipe.RUN_SETTINGS.lstrip("/")
    wifi = provision.WifiNetwork("shop", "ab" * 32, "DE")
    provision.render_settings(provision.SystemSettings("Europe/Berlin", "de_DE", wifi), run, tmp_path / "zoneinfo")
    for arch in ("amd64", "arm64"):
        for link, dest in recipe.root_links(arch).items():
            assert dest.startswith("/"), link
            if dest.startswith(recipe.RUN_SETTINGS + "/"):
                assert (tmp_path / dest.lstrip("/")).is_symlink() or (tmp_path / dest.lstrip("/")).is_file(), link
    links = recipe.root_links("arm64")
    assert links["/etc/localtime"] == f"{recipe.RUN_SETTINGS}/localtime"
    assert "/etc/wpa_supplicant/wpa_supplicant-wlan0.conf" in links
    assert not any("wpa_supplicant" in link for link in recipe.root_links("amd64")), "no Wi-Fi in the QEMU image"
    wants = [d for link, d in links.items() if ".device.wants/" in link]
    assert wants == ["/lib/systemd/system/wpa_supplicant@.service"], "started by the interface, not by the boot"


def test_pi_wifi_units() -> None:
    files = recipe.root_files("arm64", "1")
    dropin = configparser.ConfigParser()
    dropin.read_string(files["/etc/systemd/system/wpa_supplicant@wlan0.service.d/tillbox.conf"].content)
    assert dropin["Unit"]["ConditionPathExists"] == f"{recipe.RUN_SETTINGS}/wpa_supplicant-wlan0.conf"
    assert "tillbox-settings.service" in dropin["Unit"]["After"]
    assert "wpa_supplicant.service" in recipe.target("arm64").mask, "the D-Bus supplicant would compete for wlan0"
    assert not any("wpa_supplicant" in path for path in recipe.root_files("amd64", "1"))
    assert "wpasupplicant" in recipe.packages("arm64")


def test_locales_timezones_and_growpart_are_in_the_image() -> None:
    from appliance.provision import OS_LOCALES

    gen = [line.split() for line in recipe.locale_gen().splitlines() if line and not line.startswith("#")]
    assert gen == [[f"{loc}.UTF-8", "UTF-8"] for loc in OS_LOCALES]
    assert "en_US" in OS_LOCALES and "de_DE" in OS_LOCALES
    assert recipe.root_files("amd64", "1")["/etc/locale.gen"].content == recipe.locale_gen()
    for arch in ("amd64", "arm64"):
        assert {"tzdata", "locales", "cloud-guest-utils"} <= set(recipe.packages(arch))


def test_grow_unit_runs_on_the_mounted_data_partition_before_its_filesystem_grows() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.read_string(recipe.grow_data_unit(0x12345678))
    data = _fstab_rows(recipe.fstab(0x12345678))["/var/lib/tillbox"]
    device = data[0].replace("PARTUUID=", "/dev/disk/by-partuuid/")
    assert device == recipe.data_device(0x12345678)
    assert unit["Service"]["ExecStart"] == f"/usr/lib/tillbox/grow-data {device}"
    # Mounted, so the kernel resizes the partition in place instead of removing and re-adding it
    # (which systemd would take for the device going away, failing the mount).
    assert unit["Unit"]["RequiresMountsFor"] == data[1]
    assert "BindsTo" not in unit["Unit"] and unit["Unit"]["DefaultDependencies"] == "no"
    assert "systemd-growfs@var-lib-tillbox.service" in unit["Unit"]["Before"].split()
    assert "x-systemd.growfs" in data[3].split(","), "systemd-growfs grows the filesystem after the partition"
    files = recipe.root_files("arm64", "1", 0x12345678)
    assert files["/etc/systemd/system/tillbox-grow-data.service"].content == recipe.grow_data_unit(0x12345678)
    assert files["/usr/lib/tillbox/grow-data"].mode == 0o755
    assert "tillbox-grow-data.service" in recipe.ENABLE and "tillbox-settings.service" in recipe.ENABLE


@pytest.mark.parametrize("name", ["initramfs_machine_id", "grow_data_script", "lab_report_script", "lab_update_script"])
def test_shell_scripts_parse(name: str, tmp_path: Path) -> None:
    script = tmp_path / name
    script.write_text(getattr(recipe, name)())
    out = subprocess.run(["sh", "-n", str(script)], capture_output=True, text=True, check=False)
    assert out.returncode == 0, out.stderr
    assert script.read_text().startswith("#!/bin/sh\n")


def test_initramfs_hook_reads_the_id_the_settings_step_stores() -> None:
    from appliance import provision

    text = recipe.initramfs_machine_id(0xCAFEF00D)
    files = recipe.root_files("amd64", "1", 0xCAFEF00D)
    hook = files["/etc/initramfs-tools/scripts/local-bottom/tillbox-machine-id"]
    assert hook.content == text and hook.mode == 0o755
    assert "dev=/dev/disk/by-partuuid/cafef00d-03\n" in text, "the data partition, as /etc/fstab names it"
    assert f'"$mnt/{provision.SYSTEM_DIR}/{provision.MACHINE_ID_FILE}"' in text
    assert "-o ro," in text, "the initrd never writes to the data partition"
    assert text.rstrip().endswith('mount -o bind /run/machine-id "${rootmnt:?}/etc/machine-id"')
    # every step that can fail ends the script quietly: the boot must never stop here
    assert "set -e" not in text


def test_lab_report_runs_only_in_the_lab() -> None:
    unit = configparser.ConfigParser(strict=False)
    unit.read(ROOT / "image" / "units" / "tillbox-lab-report.service")
    assert unit["Unit"]["ConditionKernelCommandLine"] == "tillbox.lab=1"
    assert unit["Service"]["ExecStart"] == "/usr/lib/tillbox/lab-report"
    assert "tillbox-lab-report.service" in recipe.ENABLE


def test_lab_update_runs_only_in_a_virtual_machine_in_the_lab() -> None:
    unit = configparser.ConfigParser(strict=False)
    unit.read(ROOT / "image" / "units" / "tillbox-lab-update.service")
    assert unit["Unit"]["ConditionKernelCommandLine"] == "tillbox.lab=1"
    assert unit["Unit"]["ConditionVirtualization"] == "vm", "a Pi is never a VM: the unit cannot run on a till"
    assert unit["Service"]["ExecStart"] == "/usr/lib/tillbox/lab-update"
    assert "tillbox-update-gate.service" in unit["Unit"]["After"].split()
    assert recipe.root_files("arm64", "1")["/usr/lib/tillbox/lab-update"].mode == 0o755
    assert "tillbox-lab-update.service" in recipe.ENABLE


def test_fetched_updates_are_applied_by_root_when_ready_and_every_10_minutes(tmp_path: Path) -> None:
    units = {}
    for suffix in ("path", "timer", "service"):
        unit = configparser.ConfigParser(strict=False, interpolation=None)
        unit.optionxform = str  # type: ignore[assignment,method-assign]
        unit.read(ROOT / "image" / "units" / f"tillbox-update-apply.{suffix}")
        units[suffix] = unit
    ready = f"{recipe.DATA_DIR}/updates/ready"
    assert units["path"]["Path"]["PathChanged"] == ready
    assert units["path"]["Path"]["Unit"] == units["timer"]["Timer"]["Unit"] == "tillbox-update-apply.service"
    assert units["timer"]["Timer"]["OnCalendar"] == "*:0/10"
    service = units["service"]
    assert service["Unit"]["ConditionDirectoryNotEmpty"] == ready, "nothing to do while nothing is ready"
    assert service["Service"]["User"] == "root" and service["Service"]["Type"] == "oneshot"
    assert service["Service"]["ExecStart"].split()[1:] == ["update", "apply-ready", "--data-dir", recipe.DATA_DIR]
    for key in ("NoNewPrivileges", "ProtectHome", "PrivateTmp"):  # as the gate unit, which also remounts the root
        assert service["Service"][key] == "yes", key
    assert {"tillbox-update-apply.path", "tillbox-update-apply.timer"} <= set(recipe.ENABLE)
    assert "tillbox-update-apply.service" in build.install_units(tmp_path)
    if shutil.which("systemd-analyze"):
        for suffix in units:
            name = f"tillbox-update-apply.{suffix}"
            text = (ROOT / "image" / "units" / name).read_text().replace(f"{recipe.INSTALL_ROOT}/current/bin/tillbox",
                                                                          "/bin/sh")  # fmt: skip
            (tmp_path / name).write_text(text)
        out = subprocess.run(["systemd-analyze", "verify", *(str(tmp_path / f"tillbox-update-apply.{s}")
                                                             for s in units)],
                             capture_output=True, text=True, check=False)  # fmt: skip
        assert [ln for ln in (out.stdout + out.stderr).splitlines() if "tillbox-update-apply" in ln] == []


def test_update_gate_unit_judges_a_version_whose_daemon_fails() -> None:
    unit = _unit("tillbox-update-gate.service")
    assert "Requires" not in unit["Unit"], "a dependency failure would skip the gate, and the rollback with it"
    assert unit["Unit"]["Wants"] == unit["Unit"]["After"] == "tillbox.service"
    assert unit["Service"]["User"] == "root", "the gate remounts the read-only root to record its verdict"
    command = unit["Service"]["ExecStart"]
    # the known-good version judges a new one; systemd unescapes $$ for the shell
    assert command.index("/opt/tillbox/previous/bin/tillbox") < command.index("/opt/tillbox/current/bin/tillbox")
    assert "$$bin" in command and "|| /bin/systemctl restart tillbox.service" in command


def test_venv_scripts_run_the_python_beside_their_real_path(tmp_path: Path) -> None:
    """An update unpacks a venv to versions/<version>: its scripts must not name the build's path."""
    import sys

    venv = tmp_path / "versions" / "2.0.0"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    built = "/opt/tillbox/versions/1.0.0"  # where pip installed it
    hello = "import sys\nprint(sys.executable, sys.argv[1:])\n"
    (venv / "bin" / "hello").write_text(f"#!{built}/bin/python\n# -*- coding: utf-8 -*-\n{hello}")
    (venv / "bin" / "hello").chmod(0o755)
    (venv / "bin" / "other").write_text("#!/bin/sh\necho other\n")
    (venv / "bin" / "activate").write_text(f"VIRTUAL_ENV={built}\n")
    assert build.make_relocatable(venv, built) == ["hello"]
    assert not (venv / "bin" / "activate").exists()
    assert (venv / "bin" / "other").read_text() == "#!/bin/sh\necho other\n"
    (tmp_path / "current").symlink_to("versions/2.0.0")
    out = subprocess.run([str(tmp_path / "current" / "bin" / "hello"), "a b", "c"], capture_output=True, text=True,
                         check=True).stdout  # fmt: skip
    assert out == f"{venv / 'bin' / 'python'} ['a b', 'c']\n"


def test_provision_write_takes_every_wifi_field(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from appliance import cli, provision

    out = tmp_path / recipe.PROVISION_FILE
    base = ["provision", "write", "--store", "s1", "--device", "d1", "--broker", "mqtt://hub:1883", "--token", "t" * 20,
            "--out", str(out)]  # fmt: skip
    assert cli.main([*base, "--wifi-ssid", "shop", "--wifi-psk", "passphrase", "--wifi-country", "DE"]) == 0
    assert provision.load(out).wifi == {"ssid": "shop", "psk": "passphrase", "country": "DE"}
    assert cli.main([*base, "--wifi-ssid", "open shop"]) == 0
    assert provision.load(out).wifi == {"ssid": "open shop", "psk": ""}
    out.unlink()
    capsys.readouterr()
    assert cli.main([*base, "--wifi-ssid", "shop", "--wifi-psk", "passphrase", "--wifi-country", "de"]) != 0
    assert "country must be a two-letter ISO 3166 code" in capsys.readouterr().err
    assert cli.main([*base, "--wifi-country", "DE"]) != 0
    assert "need --wifi-ssid" in capsys.readouterr().err
    assert not out.exists(), "nothing is written from bad options"


# -- the Pi boot files against the partition layout -----------------------------------------------


def _pi_boot_dir(tmp_path: Path, disk_id: int = recipe.DISK_ID) -> Path:
    boot = tmp_path / "boot"
    boot.mkdir(parents=True)
    kernel, initrd = "vmlinuz-6.1.0-9-arm64", "initrd.img-6.1.0-9-arm64"
    for name, file in recipe.boot_files("arm64", kernel, initrd, disk_id).items():
        (boot / name).write_text(file.content)
    for name in {kernel, initrd, *(f for files in build.PI_BOARDS.values() for f in files)}:
        (boot / name).write_bytes(b"x")
    return boot


def test_pi_boot_files_agree_with_the_partition_layout() -> None:
    lay = recipe.layout(300 * MIB)
    root = lay.by_label("TB_ROOT")
    assert root.mountpoint == "/"
    cmdline = recipe.cmdline("arm64").split()
    assert f"root=PARTUUID={recipe.partuuid(recipe.DISK_ID, root.number)}" in cmdline
    assert _fstab_rows(recipe.fstab())["/"][0] == f"PARTUUID={recipe.partuuid(recipe.DISK_ID, root.number)}"
    boot = lay.by_label("TB_BOOT")
    assert boot.number == 1 and boot.mbr_type == "c", "the firmware reads the first partition, FAT32 (LBA)"
    assert lay.by_label("TB_DATA").number == len(lay.partitions), "the data partition is last, so it can grow"
    config = recipe.config_txt("vmlinuz-6.1.0-9-arm64", "initrd.img-6.1.0-9-arm64")
    assert config.index("arm_64bit=1") < config.index("[pi4]"), "64-bit for every board, not only the Pi 4"


def test_pi_boot_check_passes_a_consistent_boot_partition(tmp_path: Path) -> None:
    assert build.pi_boot_problems(_pi_boot_dir(tmp_path), recipe.DISK_ID) == []


def test_pi_boot_check_names_each_inconsistency(tmp_path: Path) -> None:
    boot = _pi_boot_dir(tmp_path)
    (boot / "initrd.img-6.1.0-9-arm64").unlink()
    (boot / "bcm2711-rpi-400.dtb").unlink()
    (boot / "config.txt").write_text((boot / "config.txt").read_text().replace("arm_64bit=1\n", ""))
    problems = build.pi_boot_problems(boot, recipe.DISK_ID)
    assert "config.txt does not set arm_64bit=1" in problems
    assert "config.txt names initrd.img-6.1.0-9-arm64, which is not on the boot partition" in problems
    assert "Pi 400 needs bcm2711-rpi-400.dtb" in problems
    assert len(problems) == 3
    other = build.pi_boot_problems(_pi_boot_dir(tmp_path / "b", 0x0BADCAFE), recipe.DISK_ID)
    assert other == [f"cmdline.txt has root=PARTUUID=0badcafe-02, not root=PARTUUID={recipe.DISK_ID:08x}-02"]
    (boot / "cmdline.txt").write_text(recipe.cmdline("arm64") + "second line\n")
    assert "cmdline.txt must be exactly one line" in build.pi_boot_problems(boot, recipe.DISK_ID)


# -- partition layout -----------------------------------------------------------------------------


@given(root=st.integers(1, 8 * 1024**3), boot=st.integers(64, 1024), data=st.integers(64, 8192))
def test_partitions_are_aligned_contiguous_and_ordered(root: int, boot: int, data: int) -> None:
    lay = recipe.layout(root, boot_mib=boot, data_mib=data)
    align = recipe.ALIGN_MIB * MIB
    labels = [p.label for p in lay.partitions]
    assert labels == ["TB_BOOT", "TB_ROOT", "TB_DATA"]
    assert lay.partitions[0].offset == align
    for a, b in zip(lay.partitions, lay.partitions[1:], strict=False):
        assert a.offset + a.bytes == b.offset
    for p in lay.partitions:
        assert p.offset % align == 0 and p.bytes % align == 0
    assert lay.by_label("TB_ROOT").bytes >= root
    assert boot * MIB <= lay.by_label("TB_BOOT").bytes < boot * MIB + align
    assert lay.total_bytes == lay.partitions[-1].offset + lay.partitions[-1].bytes


def test_root_size_leaves_room_and_grows_with_the_tree() -> None:
    small = recipe.root_size(100 * MIB, 10_000)
    assert small > 100 * MIB
    assert recipe.root_size(200 * MIB, 10_000) > small
    assert recipe.root_size(100 * MIB, 100_000) > small
    # room for a second appliance version, which an update unpacks beside the running one
    assert recipe.root_size(100 * MIB, 10_000, (50 * MIB, 5_000)) >= small + 50 * MIB


def test_layout_rejects_tiny_partitions() -> None:
    with pytest.raises(ConfigError, match="at least 64 MiB"):
        recipe.layout(MIB, boot_mib=8)


def test_sfdisk_script_names_the_fixed_disk_id_and_a_bootable_fat() -> None:
    lay = recipe.layout(300 * MIB, disk_id=0xCAFEF00D)
    script = recipe.sfdisk_script(lay)
    assert "label: dos" in script and "label-id: 0xcafef00d" in script
    rows = [line for line in script.splitlines() if line.startswith("start=")]
    assert rows[0].endswith("type=c, bootable")
    assert [int(r.split("start=")[1].split(",")[0]) for r in rows] == [p.start for p in lay.partitions]


def _need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (apt install fdisk e2fsprogs dosfstools mtools)")


def test_a_tiny_image_has_the_partition_table_and_filesystems(tmp_path: Path) -> None:
    """The build's own steps on a fake root: FAT + ext4 from directories, MBR, no mounts."""
    _need("sfdisk", "mkfs.ext4", "mkfs.vfat", "mcopy", "mtype", "debugfs")
    root, boot, data = tmp_path / "root", tmp_path / "boot", tmp_path / "data"
    (root / "etc").mkdir(parents=True)
    (root / "etc/fstab").write_text(recipe.fstab())
    boot.mkdir()
    (boot / "cmdline.txt").write_text(recipe.cmdline("arm64"))
    data.mkdir(mode=0o700)
    lay = recipe.layout(recipe.root_size(*build.tree_usage(root)), boot_mib=64, data_mib=64)
    fs = {label: tmp_path / f"{label}.fs" for label in ("TB_BOOT", "TB_ROOT", "TB_DATA")}
    build.make_vfat(boot, fs["TB_BOOT"], lay.by_label("TB_BOOT").bytes, "TB_BOOT", 1)
    build.make_ext4(root, fs["TB_ROOT"], lay.by_label("TB_ROOT").bytes, "TB_ROOT", 1)
    uid = recipe.TILLBOX_UID
    build.make_ext4(data, fs["TB_DATA"], lay.by_label("TB_DATA").bytes, "TB_DATA", 1, owner=(uid, uid))
    img = tmp_path / "tiny.img"
    build.assemble(img, lay, fs)

    assert img.stat().st_size == lay.total_bytes
    assert img.stat().st_blocks * 512 < img.stat().st_size, "the image is written sparse"
    table = json.loads(subprocess.run(["sfdisk", "--json", str(img)], capture_output=True, check=True).stdout)
    table = table["partitiontable"]
    assert table["label"] == "dos" and int(table["id"], 16) == recipe.DISK_ID
    got = [(p["start"], p["size"], p["type"]) for p in table["partitions"]]
    assert got == [(p.start, p.size, p.mbr_type) for p in lay.partitions]
    assert table["partitions"][0].get("bootable") is True

    boot_off = lay.by_label("TB_BOOT").offset
    assert qemu.fat_get(img, boot_off, "cmdline.txt") == recipe.cmdline("arm64").encode()
    qemu.fat_put(img, boot_off, root / "etc/fstab", "tillbox-provision.toml")
    assert qemu.fat_get(img, boot_off, "tillbox-provision.toml") == recipe.fstab().encode()
    assert qemu.fat_get(img, boot_off, "missing.txt") is None

    part = lay.by_label("TB_ROOT")
    root_fs = qemu.extract_partition(img, part.offset, part.bytes, tmp_path / "root.out")
    assert qemu.ext4_read(root_fs, "/etc/fstab") == recipe.fstab().encode()
    assert qemu.ext4_read(root_fs, "/etc/nothing") is None
    part = lay.by_label("TB_DATA")
    data_fs = qemu.extract_partition(img, part.offset, part.bytes, tmp_path / "data.out")
    qemu.fsck(data_fs)
    top = qemu.ext4_stat(data_fs, "/")
    assert top == {"mode": 0o700, "uid": uid, "gid": uid}, "the data partition belongs to the daemon alone"


def test_mounts_under_finds_leftover_mounts_in_the_work_tree(tmp_path: Path) -> None:
    table = tmp_path / "mounts"
    table.write_text("proc /w/root/proc proc ro 0 0\nsys /w/rootfs sysfs ro 0 0\n/dev/vda / ext4 rw 0 0\n"
                     "tmpfs /w/root/my\\040dir tmpfs rw 0 0\n")  # fmt: skip
    assert build.mounts_under(Path("/w/root"), table) == ["/w/root/proc", "/w/root/my dir"]
    assert build.mounts_under(Path("/elsewhere"), table) == []


def test_tree_usage_counts_hard_links_once(tmp_path: Path) -> None:
    (tmp_path / "a").write_bytes(bytes(10_000))
    one = build.tree_usage(tmp_path)
    assert one == (12_288, 1), "apparent size in 4 KiB blocks, one inode"
    os.link(tmp_path / "a", tmp_path / "b")
    assert build.tree_usage(tmp_path) == one
    (tmp_path / "c").write_bytes(b"x")
    assert build.tree_usage(tmp_path) == (12_288 + 4096, 2)


def test_write_sparse_copies_data_and_skips_zero_blocks(tmp_path: Path) -> None:
    src, dest = tmp_path / "src", tmp_path / "dest"
    payload = os.urandom(1000) + bytes(3 * 4096) + b"tail"
    src.write_bytes(payload)
    dest.write_bytes(b"\xff" * 20000)
    build.write_sparse(src, dest, 500, chunk=4096)
    out = dest.read_bytes()
    assert out[:500] == b"\xff" * 500
    assert out[500 + 1000 : 500 + 4096] == bytes(4096 - 1000)  # zeros inside a data block are written
    assert out[500 + 4096 : 500 + 3 * 4096] == b"\xff" * (2 * 4096), "all-zero blocks are skipped, not written"
    assert out[500 + len(payload) - 4 : 500 + len(payload)] == b"tail"


def test_extract_partition_keeps_holes_and_contains_reads_only_data(tmp_path: Path) -> None:
    img = tmp_path / "card.img"
    with img.open("wb") as fh:
        fh.truncate(64 * MIB)
        fh.seek(40 * MIB - 3)
        fh.write(b"secret-key")  # across a 1 MiB chunk boundary
    part = qemu.extract_partition(img, 32 * MIB, 16 * MIB, tmp_path / "part")
    assert part.stat().st_size == 16 * MIB
    assert part.stat().st_blocks * 512 <= 2 * MIB, "the copy stays sparse"
    with part.open("rb") as fh:
        fh.seek(8 * MIB - 3)
        assert fh.read(10) == b"secret-key"
    assert qemu.contains(part, b"secret-key") and qemu.contains(img, b"secret-key")
    assert qemu.contains(img, b"secret-key", chunk=4096)
    assert not qemu.contains(img, b"secret-key", 40 * MIB)
    assert not qemu.contains(img, b"secret-key", 0, 40 * MIB), "the needle must end before end"
    assert not qemu.contains(img, b"other")


# -- the appliance bundle -------------------------------------------------------------------------


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def test_lock_pins_every_runtime_dependency() -> None:
    pins = build.read_lock()
    pinned = {_norm(line.split("==")[0]) for line in pins}
    with (ROOT / "pyproject.toml").open("rb") as fh:
        deps = tomllib.load(fh)["project"]["dependencies"]
    for dep in deps:
        name = _norm(re.split(r"[<>=!~;\[ ]", dep, maxsplit=1)[0])
        assert name in pinned, f"{name} is not in image/requirements.lock; run: python -m image.build lock"
    assert len(pinned) == len(pins), "a package is pinned twice"


def test_read_lock_refuses_unpinned_lines(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# comment\nfoo==1.0  # why\nbar>=2\n")
    with pytest.raises(ConfigError, match="'bar>=2' is not pinned"):
        build.read_lock(lock)
    lock.write_text("foo==1.0  # why\n\n")
    assert build.read_lock(lock) == ["foo==1.0"]


def test_wheel_platforms_match_the_image_glibc() -> None:
    tags = build.pip_platforms("arm64")
    assert tags[0] == "manylinux_2_36_aarch64" and "manylinux2014_aarch64" in tags
    assert all("aarch64" in t for t in tags)
    assert all("x86_64" in t for t in build.pip_platforms("amd64"))


def test_inputs_hash_follows_the_sources(tmp_path: Path) -> None:
    for name in build.INPUTS:
        if "." in name:
            (tmp_path / name).write_text("x")
        else:
            (tmp_path / name).mkdir()
    (tmp_path / "image" / "a.py").write_text("one")
    first = build.inputs_hash(tmp_path)
    (tmp_path / "image" / "__pycache__").mkdir()
    (tmp_path / "image" / "__pycache__" / "a.pyc").write_text("ignored")
    assert build.inputs_hash(tmp_path) == first
    (tmp_path / "image" / "a.py").write_text("two")
    assert build.inputs_hash(tmp_path) != first


def test_commands_are_read_from_the_cli_help() -> None:
    text = "usage: tillbox\n\npositional arguments:\n  COMMAND\n    catalog     manage\n    daemon      run\n" \
           "                more help\n\noptions:\n  -h, --help  show\n"  # fmt: skip
    assert build._commands(text) == ["catalog", "daemon"]


# -- QEMU command line ----------------------------------------------------------------------------


def _artifacts(tmp_path: Path) -> qemu.Artifacts:
    info = {"cmdline": recipe.cmdline("amd64").strip(), "partitions": [{"label": "TB_BOOT", "offset": 4, "bytes": 8}]}
    (tmp_path / "t.build.json").write_text(json.dumps(info))
    return qemu.Artifacts.load(tmp_path / "t.img")


def test_qemu_command_boots_the_built_kernel_with_a_forwarded_lab_port(tmp_path: Path) -> None:
    art = _artifacts(tmp_path)
    assert art.kernel.name == "t.vmlinuz" and art.initrd.name == "t.initrd.img"
    assert art.partition("TB_BOOT") == (4, 8)
    cmd = qemu.qemu_command(art, tmp_path / "disk.img", serial="file:s.log", host_port=4321, kvm=False,
                            extra_cmdline=("tillbox.lab=1",))  # fmt: skip
    assert cmd[cmd.index("-kernel") + 1] == str(art.kernel)
    assert cmd[cmd.index("-append") + 1].endswith(" quiet tillbox.lab=1")
    assert f"hostfwd=tcp:127.0.0.1:4321-:{qemu.LAB_PORT}" in cmd[cmd.index("-nic") + 1]
    assert "tcg,thread=multi" in cmd and "kvm" not in cmd
    assert "kvm" in qemu.qemu_command(art, tmp_path / "d", serial="s", host_port=1, kvm=True)
    assert cmd[0] == "qemu-system-x86_64"


def test_qemu_command_for_the_pi_image_uses_the_virt_machine(tmp_path: Path) -> None:
    info = {"arch": "arm64", "cmdline": recipe.cmdline("arm64").strip(), "partitions": []}
    (tmp_path / "pi.build.json").write_text(json.dumps(info))
    cmd = qemu.qemu_command(qemu.Artifacts.load(tmp_path / "pi.img"), tmp_path / "d", serial="s", host_port=1,
                            kvm=False)  # fmt: skip
    assert cmd[:3] == ["qemu-system-aarch64", "-M", "virt"]
    consoles = [a for a in cmd[cmd.index("-append") + 1].split() if a.startswith("console=")]
    assert consoles[-1] == "console=ttyAMA0", "the virt machine's serial port is the console"


def test_missing_build_info_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(qemu.QemuError, match=r"x\.build\.json is missing"):
        qemu.Artifacts.load(tmp_path / "x.img")
