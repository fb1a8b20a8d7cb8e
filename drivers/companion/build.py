"""The companion firmware bundle: what goes on the board, compiled with mpy-cross, copied with mpremote.

On the board the files sit flat in the root of the filesystem:

* ``main.py`` and ``tbc_config.py`` stay source (MicroPython runs ``main.py`` at boot;
  the pin map is meant to be edited, e.g. ``mpremote edit :tbc_config.py``);
* ``tbc_app``, ``tbc_hal`` and ``tbc_proto`` (this package's ``protocol.py``, shared with
  the host) are compiled to ``.mpy``.
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

from appliance.errors import DeviceMisconfigured, DeviceUnavailable

FIRMWARE_DIR = Path(__file__).with_name("firmware")
SOURCE_ONLY = ("main.py", "tbc_config.py")
COMPILED = ("tbc_app.py", "tbc_hal.py", "tbc_proto.py")


def firmware_sources() -> dict[str, Path]:
    """Board file name -> source file in this package."""
    sources = {name: FIRMWARE_DIR / name for name in (*SOURCE_ONLY, "tbc_app.py", "tbc_hal.py")}
    sources["tbc_proto.py"] = Path(__file__).with_name("protocol.py")
    return sources


def tool_command(module: str, script: str) -> list[str]:
    """How to run a Python-packaged tool: ``python -m module`` from this environment, else ``script`` on PATH."""
    if importlib.util.find_spec(module) is not None:
        return [sys.executable, "-m", module]
    found = shutil.which(script)
    if found:
        return [found]
    raise DeviceMisconfigured(f"{script} is not installed (pip install 'tillbox[dev]')")


def stage(dest: Path) -> list[Path]:
    """Copy the firmware sources into ``dest`` under their board names (runs as is on the unix port)."""
    dest.mkdir(parents=True, exist_ok=True)
    staged = []
    for name, source in firmware_sources().items():
        target = dest / name
        shutil.copyfile(source, target)
        staged.append(target)
    return staged


def compile_firmware(dest: Path, *, mpy_cross: list[str] | None = None) -> list[Path]:
    """Build the board image into ``dest``: source files copied, the rest compiled to ``.mpy``."""
    command = mpy_cross or tool_command("mpy_cross", "mpy-cross")
    dest.mkdir(parents=True, exist_ok=True)
    built = []
    for name, source in firmware_sources().items():
        if name in SOURCE_ONLY:
            target = dest / name
            shutil.copyfile(source, target)
        else:
            target = dest / (Path(name).stem + ".mpy")
            result = subprocess.run([*command, "-s", name, "-o", str(target), str(source)],
                                    capture_output=True, text=True, check=False)  # fmt: skip
            if result.returncode != 0:
                detail = (result.stderr or result.stdout).strip().splitlines()
                raise DeviceMisconfigured(f"mpy-cross failed on {name}: {detail[-1] if detail else result.returncode}")
        built.append(target)
    return built


def flash_command(files: list[Path], port: str, *, mpremote: list[str] | None = None) -> list[str]:
    """The mpremote command line: remove stale sources that would shadow ``.mpy``, copy, reset."""
    stale = ", ".join(repr(name) for name in COMPILED)
    cleanup = f"import os\nfor f in ({stale},):\n    try:\n        os.remove(f)\n    except OSError:\n        pass\n"
    command = mpremote or tool_command("mpremote", "mpremote")
    return [*command, "connect", port, "exec", cleanup, "+", "cp", *(str(f) for f in files), ":", "+", "reset"]


def flash(files: list[Path], port: str, *, mpremote: list[str] | None = None) -> None:
    """Copy built firmware ``files`` to the board on ``port`` and restart it."""
    result = subprocess.run(flash_command(files, port, mpremote=mpremote), capture_output=True, text=True, check=False)
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise DeviceUnavailable(f"mpremote failed on {port}: {detail[-1] if detail else result.returncode}")


def flash_board(port: str | None = None, *, mpremote: list[str] | None = None) -> tuple[str, list[Path]]:
    """Build the firmware in a temporary directory and flash it to ``port`` (default: the
    first board found by USB VID/PID). Returns the port and the board file names."""
    import tempfile

    from drivers.companion.host import UsbMatch, find_port

    port = port or find_port()
    if not port:
        raise DeviceUnavailable(f"no companion board found ({UsbMatch()}); pass --port")
    with tempfile.TemporaryDirectory(prefix="tbc-build-") as tmp:
        files = compile_firmware(Path(tmp))
        flash(files, port, mpremote=mpremote)
    return port, [Path(f.name) for f in files]
