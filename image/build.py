"""Build the SD-card image: ``python -m image.build build ARCH OUT.img`` (as root; see image/build.sh).

Steps: build the tillbox wheel; fetch the pinned dependency wheels for the target
(``image/requirements.lock``); mmdebstrap a Debian root whose customize hook
(``python -m image.build customize``) writes the recipe's files, creates the users,
installs the appliance venv as ``/opt/tillbox/versions/<version>`` and enables the
units; then make the FAT, root and data filesystems from directories (``mkfs.ext4 -d``,
``mkfs.vfat`` + ``mcopy``: no loop devices, no mounts) and write them into an MBR image.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import lzma
import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
import tomllib
import uuid
from pathlib import Path
from typing import Any

from appliance.errors import ConfigError, TillboxError
from image import recipe

logger = logging.getLogger(__name__)

PROJECT = Path(__file__).resolve().parent.parent
LOCK = PROJECT / "image" / "requirements.lock"
#: What the image's content depends on; a test rebuilds a cached image when this hash changes.
INPUTS = ("appliance", "drivers", "sync", "kiosk_ui", "systemd", "image", "pyproject.toml", "README.md")
PYTHON_VERSION = {"bookworm": "3.11"}
MACHINE = {"amd64": "x86_64", "arm64": "aarch64"}
BUILD_DIR = "/opt/tillbox-build"  # inside the root, removed again by the hook


class BuildError(TillboxError):
    """A build step failed."""


def _run(cmd: list[str], *, log: Path | None = None, **kw: Any) -> subprocess.CompletedProcess[str]:
    """Run a tool; on failure raise BuildError with the tail of its output."""
    logger.info("$ %s", shlex.join(cmd))
    result = subprocess.run(cmd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, check=False, **kw)
    if log is not None:
        with log.open("a", encoding="utf-8") as fh:
            fh.write(f"$ {shlex.join(cmd)}\n{result.stdout}\n")
    if result.returncode != 0:
        tail = "\n".join(result.stdout.splitlines()[-25:])
        raise BuildError(f"{cmd[0]} failed with exit {result.returncode}:\n{tail}")
    return result


def project_version() -> str:
    """The version in pyproject.toml: the directory name under /opt/tillbox/versions."""
    with (PROJECT / "pyproject.toml").open("rb") as fh:
        version: str = tomllib.load(fh)["project"]["version"]
    return version


def inputs_hash(root: Path = PROJECT) -> str:
    """SHA-256 over the sources the image is built from (paths and contents)."""
    digest = hashlib.sha256()
    for name in INPUTS:
        base = root / name
        paths = [base] if base.is_file() else sorted(base.rglob("*"))
        for path in paths:
            if not path.is_file() or "__pycache__" in path.parts or path.suffix == ".pyc":
                continue
            digest.update(path.relative_to(root).as_posix().encode() + b"\0")
            digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def source_date_epoch() -> int:
    """SOURCE_DATE_EPOCH, else the last commit's time, else a fixed date: timestamps in the image."""
    if os.environ.get("SOURCE_DATE_EPOCH"):
        return int(os.environ["SOURCE_DATE_EPOCH"])
    try:
        out = subprocess.run(["git", "-C", str(PROJECT), "log", "-1", "--format=%ct"], capture_output=True,
                             text=True, check=True).stdout.strip()  # fmt: skip
        return int(out)
    except (OSError, subprocess.CalledProcessError, ValueError):
        return 1767225600  # 2026-01-01


# -- the appliance bundle ------------------------------------------------------------------------


def read_lock(path: Path = LOCK) -> list[str]:
    """The pinned requirements (``name==version`` lines) from the lock file."""
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            if "==" not in line:
                raise ConfigError(f"{path.name}: {line!r} is not pinned (name==version)")
            lines.append(line)
    return lines


def write_lock(out: Path = LOCK) -> list[str]:
    """Regenerate the lock: install the project into a clean venv from PyPI and freeze it."""
    import tempfile

    with tempfile.TemporaryDirectory(prefix="tillbox-lock-") as tmp:
        wheels = Path(tmp) / "wheels"
        wheel = build_wheel(wheels)
        venv = Path(tmp) / "venv"
        _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
        pip = [sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python")]
        _run([*pip, "install", "-q", "--only-binary=:all:", str(wheel)])
        frozen = _run([*pip, "freeze", "--all", "--exclude", "tillbox"]).stdout
    pins = sorted((line for line in frozen.splitlines() if "==" in line), key=str.lower)
    py = f"{sys.version_info.major}.{sys.version_info.minor}"
    head = (
        "# Pinned runtime dependencies of the appliance venv in the image (pip freeze of a clean install).\n"
        f"# Python {py}. Regenerate: python -m image.build lock\n"
    )
    out.write_text(head + "\n".join(pins) + "\n", encoding="utf-8")
    return pins


def build_wheel(dest: Path) -> Path:
    """The tillbox wheel, built from the work tree."""
    dest.mkdir(parents=True, exist_ok=True)
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(dest), str(PROJECT)])
    wheels = sorted(dest.glob("tillbox-*.whl"))
    if not wheels:
        raise BuildError("pip wheel produced no tillbox wheel")
    return wheels[-1]


def pip_platforms(arch: str) -> list[str]:
    """The wheel platform tags the image's glibc (2.36) can load."""
    machine = MACHINE[arch]
    return [f"manylinux_2_{minor}_{machine}" for minor in range(36, 16, -1)] + [f"manylinux2014_{machine}"]


def download_wheels(arch: str, dest: Path, suite: str) -> list[Path]:
    """Fetch the lock's wheels (and pip itself, to install them) for the target platform."""
    py = PYTHON_VERSION[suite]
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:", "-d", str(dest),
           "--python-version", py, "--implementation", "cp", "--abi", f"cp{py.replace('.', '')}", "--abi", "abi3",
           "--abi", "none"]  # fmt: skip
    for platform in pip_platforms(arch):
        cmd += ["--platform", platform]
    import pip

    extra = [] if any(p.lower().startswith("pip==") for p in read_lock()) else [f"pip=={pip.__version__}"]
    _run([*cmd, "-r", str(LOCK), *extra])
    return sorted(dest.glob("*.whl"))


# -- the customize hook (runs inside mmdebstrap, with /proc, /sys and /dev set up in the root) ----


def _write(root: Path, path: str, file: recipe.File) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(file.content, encoding="utf-8")
    os.chmod(target, file.mode)


def _chroot(root: Path, *cmd: str, log: Path | None = None) -> str:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C.UTF-8", "HOME": "/root",
           "SOURCE_DATE_EPOCH": os.environ.get("SOURCE_DATE_EPOCH", str(source_date_epoch()))}  # fmt: skip
    return _run(["chroot", str(root), *cmd], log=log, env=env).stdout


def kernel_files(root: Path) -> tuple[Path, Path]:
    """The kernel and initrd installed in the root's /boot."""
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("no kernel in the root's /boot")
    kernel = kernels[-1]
    initrd = root / "boot" / kernel.name.replace("vmlinuz-", "initrd.img-")
    if not initrd.exists():
        raise BuildError(f"no initrd for {kernel.name}")
    return kernel, initrd


def make_initrd(root: Path, log: Path) -> None:
    """Make the initrd once, now that every package is in (so it has fsck for the root).

    The essential hook diverted update-initramfs to a no-op while packages were installed (each
    run takes minutes under qemu-user); put the real one back and run it. On the Pi,
    raspi-firmware's post-update hook copies the initrd to /boot/firmware and rewrites
    config.txt and cmdline.txt, so the recipe's are written after this.
    """
    tool = root / "usr/sbin/update-initramfs"
    if (root / "usr/sbin/update-initramfs.distrib").exists():
        tool.unlink()
        _chroot(root, "dpkg-divert", "--quiet", "--local", "--rename", "--remove", "/usr/sbin/update-initramfs",
                log=log)  # fmt: skip
    kernels = sorted((root / "boot").glob("vmlinuz-*"))
    if not kernels:
        raise BuildError("no kernel in the root's /boot")
    version = kernels[-1].name.removeprefix("vmlinuz-")
    exists = (root / "boot" / f"initrd.img-{version}").exists()
    _chroot(root, "update-initramfs", "-u" if exists else "-c", "-k", version, log=log)


def install_appliance(root: Path, wheels: Path, version: str, log: Path) -> Path:
    """Create /opt/tillbox/versions/<version> (a venv with copies, no symlinks) and point current at it."""
    stage = root / BUILD_DIR.lstrip("/")
    shutil.copytree(wheels, stage / "wheels")
    shutil.copy2(LOCK, stage / "requirements.lock")
    venv = f"{recipe.INSTALL_ROOT}/versions/{version}"
    _chroot(root, "python3", "-m", "venv", "--copies", "--without-pip", venv, log=log)
    pip_wheel = next((stage / "wheels").glob("pip-*.whl")).name
    tillbox_wheel = next((stage / "wheels").glob("tillbox-*.whl")).name
    pip = [f"{venv}/bin/python", f"{BUILD_DIR}/wheels/{pip_wheel}/pip"]
    _chroot(root, *pip, "install", "--no-index", "--no-deps", "--only-binary=:all:", "--no-cache-dir",
            "--disable-pip-version-check", "--find-links", f"{BUILD_DIR}/wheels",
            "-r", f"{BUILD_DIR}/requirements.lock", f"{BUILD_DIR}/wheels/{tillbox_wheel}", log=log)  # fmt: skip
    _chroot(root, *pip, "check", "--disable-pip-version-check", log=log)
    shutil.rmtree(stage)
    lib64 = root / venv.lstrip("/") / "lib64"
    if lib64.is_symlink():
        lib64.unlink()  # the one symlink venv makes; an update bundle carries regular files only
    for alias in (root / venv.lstrip("/") / "bin").glob("python3*"):
        alias.unlink()  # scripts run bin/python (pip wrote that shebang); more copies would only take space
    make_relocatable(root / venv.lstrip("/"), venv)
    doc = root / venv.lstrip("/") / "share" / "doc" / "tillbox"
    doc.mkdir(parents=True, exist_ok=True)
    shutil.copy2(PROJECT / "README.md", doc / "README.md")
    current = root / recipe.INSTALL_ROOT.lstrip("/") / "current"
    current.symlink_to(f"versions/{version}")
    return root / venv.lstrip("/")


def make_relocatable(venv_dir: Path, venv_path: str) -> list[str]:
    """Let the venv run from any directory: an update unpacks it to ``versions/<its version>``.

    pip writes the venv's absolute path into its console scripts' shebangs; those get
    ``recipe.RELOCATABLE_SHEBANG`` (the ``python`` beside the script's real path) instead. The
    ``activate`` scripts, which hold the path too and which an appliance never uses, go. Returns
    the scripts changed.
    """
    bin_dir = venv_dir / "bin"
    for name in ("activate", "activate.csh", "activate.fish", "Activate.ps1"):
        (bin_dir / name).unlink(missing_ok=True)
    shebang = f"#!{venv_path}/bin/python".encode()
    changed = []
    for script in sorted(bin_dir.iterdir()):
        if not script.is_file() or script.is_symlink():
            continue
        data = script.read_bytes()
        first, sep, rest = data.partition(b"\n")
        if first.rstrip() == shebang and sep:
            script.write_bytes(recipe.RELOCATABLE_SHEBANG.encode() + rest)
            changed.append(script.name)
    return changed


def install_units(root: Path) -> list[str]:
    """Copy the project's systemd units and udev rules (and the image's lab units) into the root."""
    done = []
    units = [*(PROJECT / "systemd").iterdir(), *(PROJECT / "image" / "units").iterdir()]
    for unit in sorted(units, key=lambda u: u.name):
        if unit.suffix in (".service", ".timer", ".socket", ".path", ".target"):
            dest = root / "usr/lib/systemd/system" / unit.name
        elif unit.suffix == ".rules":
            dest = root / "usr/lib/udev/rules.d" / unit.name
        else:
            continue
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(unit, dest)
        os.chmod(dest, 0o644)
        done.append(unit.name)
    return done


def customize(root: Path, work: Path) -> None:
    """The mmdebstrap customize hook: everything after the packages are installed."""
    ctx = json.loads((work / "context.json").read_text())
    arch, version, disk_id = ctx["arch"], ctx["version"], ctx["disk_id"]
    log = work / "customize.log"
    for path, file in recipe.root_files(arch, version, disk_id).items():
        target = root / path.lstrip("/")
        if target.is_symlink():
            target.unlink()
        _write(root, path, file)
    for path, dest in recipe.root_links(arch).items():
        link = root / path.lstrip("/")
        if link.is_symlink() or link.is_file():
            link.unlink()
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(dest)
    for key in ctx["update_keys"]:
        shutil.copy2(key, root / "etc/tillbox/update-keys" / Path(key).name)
    installed = install_units(root)
    _chroot(root, "systemd-sysusers", log=log)
    _chroot(root, "locale-gen", log=log)
    install_appliance(root, work / "wheels", version, log)
    help_text = _chroot(root, f"{recipe.INSTALL_ROOT}/current/bin/tillbox", "--help", log=log)
    _chroot(root, "systemctl", "enable", *recipe.ENABLE, log=log)
    _chroot(root, "systemctl", "mask", *recipe.MASK, *recipe.target(arch).mask, log=log)
    _chroot(root, "systemctl", "set-default", "graphical.target", log=log)
    (root / recipe.DATA_DIR.lstrip("/")).mkdir(parents=True, exist_ok=True)
    make_initrd(root, log)
    kernel, initrd = kernel_files(root)
    boot = root / recipe.BOOT_DIR.lstrip("/")
    boot.mkdir(parents=True, exist_ok=True)
    for name, file in recipe.boot_files(arch, kernel.name, initrd.name, disk_id).items():
        (boot / name).write_text(file.content, encoding="utf-8")
    (work / "customized.json").write_text(json.dumps({
        "units": installed, "commands": _commands(help_text), "kernel": kernel.name, "initrd": initrd.name,
    }, indent=1))  # fmt: skip


def _commands(help_text: str) -> list[str]:
    """The subcommands ``tillbox --help`` lists (one per line, indented four spaces)."""
    names = []
    for line in help_text.splitlines():
        if line.startswith("    ") and not line.startswith("     "):
            names.append(line.split()[0])
    return names


#: Firmware files each supported Pi needs on the boot partition, and the device tree it loads
#: with ``upstream_kernel=1`` (the mainline names that Debian's kernel ships).
PI_BOARDS = {
    "Pi 3": ("bootcode.bin", "start.elf", "fixup.dat", "bcm2837-rpi-3-b.dtb"),
    "Pi 3+": ("bootcode.bin", "start.elf", "fixup.dat", "bcm2837-rpi-3-b-plus.dtb"),
    "Pi 4": ("start4.elf", "fixup4.dat", "bcm2711-rpi-4-b.dtb"),
    "Pi 400": ("start4.elf", "fixup4.dat", "bcm2711-rpi-400.dtb"),
    "CM4": ("start4.elf", "fixup4.dat", "bcm2711-rpi-cm4-io.dtb"),
}


def pi_boot_problems(boot: Path, disk_id: int) -> list[str]:
    """What would stop the Pi firmware booting this boot partition, as far as files can tell.

    config.txt must select 64-bit mode and name a kernel and an initrd that are there;
    cmdline.txt must be one line whose root= is the root partition's PARTUUID; each board
    needs its firmware and device tree.
    """
    problems = []
    try:
        config = (boot / "config.txt").read_text(encoding="utf-8")
        cmdline = (boot / "cmdline.txt").read_text(encoding="utf-8")
    except OSError as exc:
        return [f"cannot read {exc.filename}: {exc.strerror}"]
    settings = [ln.strip() for ln in config.split("\n[", 1)[0].splitlines() if ln.strip() and ln[0] != "#"]
    if "arm_64bit=1" not in settings:
        problems.append("config.txt does not set arm_64bit=1")
    kernel = next((ln.split("=", 1)[1] for ln in settings if ln.startswith("kernel=")), None)
    initrd = next((ln.split()[1] for ln in settings if ln.startswith("initramfs ")), None)
    for what, name in (("kernel=", kernel), ("initramfs", initrd)):
        if name is None:
            problems.append(f"config.txt has no {what} line")
        elif not (boot / name).is_file():
            problems.append(f"config.txt names {name}, which is not on the boot partition")
    if cmdline.count("\n") != 1 or not cmdline.endswith("\n"):
        problems.append("cmdline.txt must be exactly one line")
    root = [a for a in cmdline.split() if a.startswith("root=")]
    want = f"root=PARTUUID={recipe.partuuid(disk_id, 2)}"
    if root != [want]:
        problems.append(f"cmdline.txt has {' '.join(root) or 'no root='}, not {want}")
    for board, files in PI_BOARDS.items():
        missing = [f for f in files if not (boot / f).is_file()]
        if missing:
            problems.append(f"{board} needs {', '.join(missing)}")
    return problems


# -- filesystems and the image -------------------------------------------------------------------


def mounts_under(path: Path, mounts: Path = Path("/proc/self/mounts")) -> list[str]:
    """Mount points at or below ``path``."""
    base = str(path)
    found = []
    for line in mounts.read_text().splitlines():
        fields = line.split()
        if len(fields) > 1:
            point = fields[1].replace("\\040", " ")
            if point == base or point.startswith(base + "/"):
                found.append(point)
    return found


def tree_usage(path: Path) -> tuple[int, int]:
    """Bytes and inodes a directory tree needs (not following symlinks; hard links count once)."""
    used, inodes = 0, 0
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(path):
        for name in (*dirnames, *filenames):
            st = os.lstat(os.path.join(dirpath, name))
            if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
                if (st.st_dev, st.st_ino) in seen:
                    continue  # mke2fs -d keeps hard links
                seen.add((st.st_dev, st.st_ino))
            # apparent size in 4 KiB blocks: st_blocks can include the host filesystem's preallocation
            used += -(-st.st_size // 4096) * 4096 if stat.S_ISREG(st.st_mode) else 4096
            inodes += 1
    return used, inodes


def _uuid(name: str, epoch: int) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"tillbox-image:{name}:{epoch}"))


def make_ext4(src: Path, out: Path, size: int, label: str, epoch: int, *, owner: tuple[int, int] = (0, 0)) -> None:
    """An ext4 image of ``size`` bytes populated from ``src`` (mke2fs -d), with fixed UUIDs."""
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(size)
    fs_uuid = _uuid(label, epoch)
    env = {**os.environ, "E2FSPROGS_FAKE_TIME": str(epoch)}
    _run(["mkfs.ext4", "-q", "-F", "-L", label, "-U", fs_uuid, "-m", "1",
          "-E", f"hash_seed={fs_uuid},root_owner={owner[0]}:{owner[1]},lazy_itable_init=0",
          "-d", str(src), str(out)], env=env)  # fmt: skip
    # mke2fs -d leaves the root directory 0755 whatever the source's mode: set it from the source.
    mode = stat.S_IMODE(src.stat().st_mode)
    _run(["debugfs", "-w", "-R", f"set_inode_field / mode 0{stat.S_IFDIR | mode:o}", str(out)])


def make_vfat(src: Path, out: Path, size: int, label: str, epoch: int) -> None:
    """A FAT32 image populated from ``src`` with mcopy."""
    out.unlink(missing_ok=True)
    volume_id = f"{uuid.UUID(_uuid(label, epoch)).int & 0xFFFFFFFF:08x}"
    _run(["mkfs.vfat", "-F", "32", "-n", label, "-i", volume_id, "--invariant", "-C", str(out), str(size // 1024)])
    entries = sorted(src.iterdir())
    if entries:
        env = {**os.environ, "MTOOLS_SKIP_CHECK": "1"}
        _run(["mcopy", "-s", "-m", "-i", str(out), *[str(e) for e in entries], "::"], env=env)


def write_sparse(src: Path, dest: Path, offset: int, chunk: int = 1 << 20) -> None:
    """Copy ``src`` into ``dest`` at ``offset``, skipping all-zero blocks (the image stays sparse)."""
    zero = bytes(chunk)
    with src.open("rb") as fin, dest.open("r+b") as fout:
        pos = offset
        while block := fin.read(chunk):
            if block != zero[: len(block)]:
                fout.seek(pos)
                fout.write(block)
            pos += len(block)


def assemble(out: Path, lay: recipe.Layout, parts: dict[str, Path]) -> None:
    """The partitioned image: an MBR written by sfdisk, then each filesystem at its offset."""
    out.unlink(missing_ok=True)
    with out.open("wb") as fh:
        fh.truncate(lay.total_bytes)
    _run(["sfdisk", "--quiet", "--no-reread", "--no-tell-kernel", str(out)], input=recipe.sfdisk_script(lay))
    for p in lay.partitions:
        src = parts[p.label]
        if src.stat().st_size > p.bytes:
            raise BuildError(f"{p.label}: filesystem ({src.stat().st_size} bytes) exceeds its partition")
        write_sparse(src, out, p.offset)


def compress(img: Path, level: int = 6) -> Path:
    """``IMG.xz`` (what Raspberry Pi Imager and ``xz -dc | dd`` take)."""
    out = img.with_name(img.name + ".xz")
    threads = str(os.cpu_count() or 1)
    with out.open("wb") as fh:
        subprocess.run(["xz", "-T", threads, f"-{level}", "-c", str(img)], stdout=fh, check=True)
    return out


def _decompress_check(path: Path) -> None:
    with lzma.open(path) as fh:
        fh.read(512)


def build(arch: str, out: Path, *, suite: str = recipe.SUITE, mirror: str = recipe.MIRROR,
          work: Path | None = None, boot_mib: int = 256, data_mib: int = 512, update_keys: tuple[Path, ...] = (),
          xz: int | None = 6, keep_work: bool = False) -> dict[str, Any]:  # fmt: skip
    """Build ``out`` (a raw .img) and beside it .xz, the kernel, the initrd and .build.json."""
    recipe.target(arch)
    if os.geteuid() != 0:
        raise BuildError("the image build runs as root (mmdebstrap --mode=root, chroot)")
    started = time.monotonic()
    epoch = source_date_epoch()
    version = project_version()
    out = out.resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    work = (work or out.parent / f".{out.stem}.work").resolve()
    if work.exists():
        mounted = mounts_under(work)
        if mounted:  # an interrupted mmdebstrap can leave /proc, /sys or /dev mounted in its root
            raise BuildError(f"{mounted[0]} is still mounted (an interrupted build?); unmount it first")
        shutil.rmtree(work)
    work.mkdir(parents=True)
    timings: dict[str, float] = {}

    def lap(name: str, t0: float) -> float:
        timings[name] = round(time.monotonic() - t0, 1)
        return time.monotonic()

    t = time.monotonic()
    wheels = work / "wheels"
    build_wheel(wheels)
    download_wheels(arch, wheels, suite)
    t = lap("wheels", t)
    (work / "context.json").write_text(json.dumps({
        "arch": arch, "version": version, "disk_id": recipe.DISK_ID,
        "update_keys": [str(k.resolve()) for k in update_keys],
    }))  # fmt: skip
    root = work / "root"
    hook = (f"cd {shlex.quote(str(PROJECT))} && {shlex.quote(sys.executable)} -m image.build customize "
            f"--work {shlex.quote(str(work))} \"$1\"")  # fmt: skip
    env = {**os.environ, "SOURCE_DATE_EPOCH": str(epoch), "PYTHONPATH": str(PROJECT)}
    cache = os.environ.get("TILLBOX_APT_CACHE")
    if cache:
        Path(cache, arch).mkdir(parents=True, exist_ok=True)
    args = recipe.mmdebstrap_args(arch, str(root), suite=suite, mirror=mirror, customize_hook=hook,
                                  apt_cache=str(Path(cache, arch).resolve()) if cache else None)  # fmt: skip
    _run(args, log=work / "mmdebstrap.log", env=env)
    t = lap("mmdebstrap", t)
    info = json.loads((work / "customized.json").read_text())
    # mmdebstrap's cleanup removes D-Bus's machine-id link after the hooks; on a read-only root
    # systemd-tmpfiles cannot make it at boot, so make it here.
    dbus_id = root / "var/lib/dbus/machine-id"
    dbus_id.unlink(missing_ok=True)
    dbus_id.symlink_to("/etc/machine-id")
    pkgs = _run(["dpkg-query", f"--admindir={root}/var/lib/dpkg", "-W", "-f=${Package}\t${Version}\n"]).stdout

    # Split the tree: /boot/firmware goes to the FAT partition, the kernel and initrd go beside the image.
    kernel, initrd = kernel_files(root)
    stem = out.with_suffix("")
    shutil.copy2(kernel, stem.with_name(stem.name + ".vmlinuz"))
    shutil.copy2(initrd, stem.with_name(stem.name + ".initrd.img"))
    boot_src = work / "boot"
    shutil.move(root / recipe.BOOT_DIR.lstrip("/"), boot_src)
    if recipe.target(arch).raspi:
        problems = pi_boot_problems(boot_src, recipe.DISK_ID)
        if problems:
            raise BuildError("the Pi boot partition is inconsistent: " + "; ".join(problems))
    (root / recipe.BOOT_DIR.lstrip("/")).mkdir()
    data_src = work / "data"
    data_src.mkdir(mode=0o700)
    os.chmod(data_src, 0o700)

    used, inodes = tree_usage(root)
    appliance = tree_usage(root / recipe.INSTALL_ROOT.lstrip("/") / "versions" / version)
    lay = recipe.layout(recipe.root_size(used, inodes, appliance), boot_mib=boot_mib, data_mib=data_mib)
    fs = {"TB_BOOT": work / "boot.vfat", "TB_ROOT": work / "root.ext4", "TB_DATA": work / "data.ext4"}
    make_vfat(boot_src, fs["TB_BOOT"], lay.by_label("TB_BOOT").bytes, "TB_BOOT", epoch)
    make_ext4(root, fs["TB_ROOT"], lay.by_label("TB_ROOT").bytes, "TB_ROOT", epoch)
    uid = recipe.TILLBOX_UID
    make_ext4(data_src, fs["TB_DATA"], lay.by_label("TB_DATA").bytes, "TB_DATA", epoch, owner=(uid, uid))
    assemble(out, lay, fs)
    t = lap("filesystems", t)
    result: dict[str, Any] = {
        "arch": arch, "suite": suite, "version": version, "source_date_epoch": epoch, "inputs": inputs_hash(),
        "image": out.name, "image_bytes": out.stat().st_size, "kernel": info["kernel"], "initrd": info["initrd"],
        "appliance_bytes": appliance[0],
        "cmdline": recipe.cmdline(arch).strip(), "units": info["units"], "tillbox_commands": info["commands"],
        "partitions": [{"number": p.number, "label": p.label, "offset": p.offset, "bytes": p.bytes}
                       for p in lay.partitions],
        "packages": dict(line.split("\t", 1) for line in pkgs.splitlines() if "\t" in line),
        "wheels": {w.name: hashlib.sha256(w.read_bytes()).hexdigest() for w in sorted(wheels.glob("*.whl"))},
    }  # fmt: skip
    if xz is not None:
        packed = compress(out, xz)
        _decompress_check(packed)
        result["xz_bytes"] = packed.stat().st_size
        result["xz_level"] = xz
        t = lap("xz", t)
    timings["total"] = round(time.monotonic() - started, 1)
    result["timings_s"] = timings
    stem.with_name(stem.name + ".build.json").write_text(json.dumps(result, indent=1, sort_keys=True) + "\n")
    if not keep_work:
        shutil.rmtree(work)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m image.build", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build", help="build OUT.img (and .img.xz, .vmlinuz, .initrd.img, .build.json)")
    b.add_argument("arch", choices=sorted(recipe.TARGETS))
    b.add_argument("out", type=Path)
    b.add_argument("--suite", default=recipe.SUITE)
    b.add_argument("--mirror", default=os.environ.get("TILLBOX_MIRROR", recipe.MIRROR),
                   help="Debian mirror (a snapshot URL makes the package set reproducible)")  # fmt: skip
    b.add_argument("--work", type=Path, help="scratch directory (default: beside OUT)")
    b.add_argument("--boot-mib", type=int, default=256)
    b.add_argument("--data-mib", type=int, default=512)
    b.add_argument("--update-key", type=Path, action="append", default=[], help="trusted update key (PEM; repeat)")
    b.add_argument("--xz-level", type=int, default=6, choices=range(10), metavar="0-9", help="xz preset (default 6)")
    b.add_argument("--no-xz", action="store_true", help="skip the compressed .img.xz")
    b.add_argument("--keep-work", action="store_true")
    c = sub.add_parser("customize", help="(internal) the mmdebstrap customize hook")
    c.add_argument("--work", type=Path, required=True)
    c.add_argument("root", type=Path)
    lk = sub.add_parser("lock", help="regenerate image/requirements.lock from a clean install")
    lk.add_argument("--out", type=Path, default=LOCK)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    try:
        if args.cmd == "customize":
            customize(args.root, args.work)
        elif args.cmd == "lock":
            pins = write_lock(args.out)
            print(f"wrote {args.out}: {len(pins)} pins")
        else:
            result = build(args.arch, args.out, suite=args.suite, mirror=args.mirror, work=args.work,
                           boot_mib=args.boot_mib, data_mib=args.data_mib, update_keys=tuple(args.update_key),
                           xz=None if args.no_xz else args.xz_level, keep_work=args.keep_work)  # fmt: skip
            size = result.get("xz_bytes", result["image_bytes"])
            print(
                f"built {args.out} ({result['image_bytes'] // recipe.MIB} MiB raw, {size // recipe.MIB} MiB "
                f"{'xz' if 'xz_bytes' in result else 'raw'}) in {result['timings_s']['total']} s"
            )
    except TillboxError as exc:
        print(f"image.build: error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
