"""Building the companion firmware with mpy-cross, and the mpremote flash command."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from appliance.cli import main
from appliance.errors import DeviceMisconfigured, DeviceUnavailable
from drivers.companion.build import (
    COMPILED,
    compile_firmware,
    firmware_sources,
    flash,
    flash_board,
    flash_command,
    stage,
    tool_command,
)


def have(module: str, script: str) -> bool:
    try:
        tool_command(module, script)
    except DeviceMisconfigured:
        return False
    return True


needs_mpy_cross = pytest.mark.skipif(not have("mpy_cross", "mpy-cross"), reason="mpy-cross not installed")
needs_micropython = pytest.mark.skipif(not have("micropython_unix", "micropython"), reason="no MicroPython unix port")


def test_firmware_sources_are_shipped() -> None:
    sources = firmware_sources()
    assert sorted(sources) == ["main.py", "tbc_app.py", "tbc_config.py", "tbc_hal.py", "tbc_proto.py"]
    assert all(path.is_file() for path in sources.values())
    assert sources["tbc_proto.py"].name == "protocol.py"  # the host's codec, shared verbatim


def test_stage_copies_under_board_names(tmp_path: Path) -> None:
    staged = stage(tmp_path / "fs")
    assert sorted(p.name for p in staged) == sorted(firmware_sources())
    assert (tmp_path / "fs" / "tbc_proto.py").read_bytes() == firmware_sources()["tbc_proto.py"].read_bytes()


@needs_mpy_cross
def test_firmware_compiles_with_mpy_cross(tmp_path: Path) -> None:
    built = compile_firmware(tmp_path)
    assert sorted(p.name for p in built) == ["main.py", "tbc_app.mpy", "tbc_config.py", "tbc_hal.mpy", "tbc_proto.mpy"]
    for path in built:
        if path.suffix == ".mpy":
            header = path.read_bytes()[:2]
            assert header == b"M\x06", path  # .mpy format 6 (6.3 needs MicroPython >= 1.23)


@needs_mpy_cross
def test_cli_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["companion", "build", "--out", str(tmp_path / "out")]) == 0
    assert (tmp_path / "out" / "tbc_app.mpy").is_file()
    assert "tbc_proto.mpy" in capsys.readouterr().out


def test_compile_failure_is_reported(tmp_path: Path) -> None:
    failing = [sys.executable, "-c", "import sys; sys.exit('tbc_app.py:3: SyntaxError: invalid syntax')"]
    with pytest.raises(DeviceMisconfigured, match=r"mpy-cross failed on tbc_app\.py: .*SyntaxError"):
        compile_firmware(tmp_path, mpy_cross=failing)


RECORD = "import json, sys; open(sys.argv[1], 'w').write(json.dumps(sys.argv[2:]))"


def test_flash_command_line(tmp_path: Path) -> None:
    log = tmp_path / "argv.json"
    files = [tmp_path / "main.py", tmp_path / "tbc_app.mpy"]
    flash(files, "/dev/ttyACM3", mpremote=[sys.executable, "-c", RECORD, str(log)])
    argv = json.loads(log.read_text())
    assert argv[:3] == ["connect", "/dev/ttyACM3", "exec"]
    assert argv[4:] == ["+", "cp", str(files[0]), str(files[1]), ":", "+", "reset"]


def test_flash_failure_is_reported(tmp_path: Path) -> None:
    with pytest.raises(DeviceUnavailable, match="mpremote failed on /dev/ttyACM3: could not enter raw repl"):
        flash([], "/dev/ttyACM3", mpremote=[sys.executable, "-c", "import sys; sys.exit('could not enter raw repl')"])


def test_flash_without_a_board(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("drivers.companion.host.find_port", lambda usb=None, comports=None: None)
    with pytest.raises(DeviceUnavailable, match="no companion board found"):
        flash_board()


@needs_mpy_cross
def test_flash_board_builds_then_flashes(tmp_path: Path) -> None:
    log = tmp_path / "argv.json"
    port, names = flash_board("/dev/ttyACM0", mpremote=[sys.executable, "-c", RECORD, str(log)])
    assert port == "/dev/ttyACM0"
    assert sorted(p.name for p in names) == ["main.py", "tbc_app.mpy", "tbc_config.py", "tbc_hal.mpy", "tbc_proto.mpy"]
    assert sum(arg.endswith(".mpy") for arg in json.loads(log.read_text())) == 3


@needs_micropython
def test_flash_cleanup_removes_stale_sources_on_micropython(tmp_path: Path) -> None:
    """The snippet mpremote execs on the board removes ``.py`` files that would shadow ``.mpy``."""
    for name in ("tbc_app.py", "tbc_proto.py", "tbc_config.py"):
        (tmp_path / name).write_text("# stale\n")
    snippet = flash_command([], "/dev/null", mpremote=["mpremote"])[4]
    subprocess.run([*tool_command("micropython_unix", "micropython"), "-c", snippet], cwd=tmp_path, check=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tbc_config.py"]  # config stays source
    assert set(COMPILED) == {"tbc_app.py", "tbc_hal.py", "tbc_proto.py"}
