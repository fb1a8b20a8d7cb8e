"""Signed update bundles: verification, atomic switch, health gate and rollback, busy tills."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from appliance.till import Till
from appliance.update import Installer, UpdateBusy, UpdateError, build_bundle, load_public_keys, trading, verify_bundle
from tests.conftest import open_shift


def keypair(tmp_path: Path, name: str) -> tuple[bytes, Path]:
    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())  # fmt: skip
    pub = tmp_path / f"{name}.pub"
    pub.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                  serialization.PublicFormat.SubjectPublicKeyInfo))  # fmt: skip
    return pem, pub


def app(tmp_path: Path, version: str) -> Path:
    src = tmp_path / f"src-{version}"
    (src / "bin").mkdir(parents=True, exist_ok=True)
    (src / "bin" / "tillbox").write_text(f"#!/bin/sh\necho {version}\n")
    (src / "bin" / "tillbox").chmod(0o755)
    (src / "VERSION").write_text(version)
    return src


@pytest.fixture
def signer(tmp_path: Path) -> tuple[bytes, list[object]]:
    pem, pub = keypair(tmp_path, "release")
    return pem, load_public_keys([pub])


def bundle(tmp_path: Path, pem: bytes, version: str) -> Path:
    out = tmp_path / f"tillbox-{version}.tar"
    build_bundle(app(tmp_path, version), version, pem, out)
    return out


def idle() -> str | None:
    return None


def test_good_bundle_is_applied_and_survives_restart(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    root = tmp_path / "opt"
    inst = Installer(root)
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    assert inst.gate(lambda: True)
    inst.install(bundle(tmp_path, pem, "1.1.0"), keys, busy=idle)
    assert (inst.current, inst.previous, inst.pending) == ("1.1.0", "1.0.0", "1.1.0")
    assert inst.gate(lambda: True)
    again = Installer(root)  # a restart reads the same state from disk
    assert (again.current, again.pending) == ("1.1.0", None)
    assert (root / "current" / "VERSION").read_text() == "1.1.0"
    assert (root / "current" / "bin" / "tillbox").stat().st_mode & 0o111


def test_failed_health_gate_rolls_back(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    inst = Installer(tmp_path / "opt")
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    inst.gate(lambda: True)
    inst.install(bundle(tmp_path, pem, "2.0.0"), keys, busy=idle)
    assert not inst.gate(lambda: False)
    assert (inst.current, inst.pending) == ("1.0.0", None)
    assert (tmp_path / "opt" / "current" / "VERSION").read_text() == "1.0.0"
    assert Installer(tmp_path / "opt")._state()["failed"] == ["2.0.0"]


def test_bad_signature_is_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    _pem, keys = signer
    other_pem, _ = keypair(tmp_path, "attacker")
    forged = bundle(tmp_path, other_pem, "6.6.6")
    with pytest.raises(UpdateError, match="bad signature"):
        verify_bundle(forged, keys)
    inst = Installer(tmp_path / "opt")
    with pytest.raises(UpdateError, match="bad signature"):
        inst.install(forged, keys, busy=idle)
    assert inst.current is None


def test_tampered_payload_is_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    good = bundle(tmp_path, pem, "1.0.0")
    bad = tmp_path / "bad.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == "payload/VERSION":
                data = b"evil"
                member.size = len(data)
            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(UpdateError, match="VERSION does not match"):
        verify_bundle(bad, keys)


def test_extra_or_escaping_files_are_refused(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    good = bundle(tmp_path, pem, "1.0.0")
    bad = tmp_path / "extra.tar"
    with tarfile.open(good) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            dst.addfile(member, src.extractfile(member) if member.isfile() else None)
        info = tarfile.TarInfo("../../etc/evil")
        info.size = 1
        dst.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(UpdateError, match="unexpected file"):
        verify_bundle(bad, keys)
    (tmp_path / "junk.tar").write_bytes(b"junk" * 100)
    with pytest.raises(UpdateError, match="not a valid update bundle"):
        verify_bundle(tmp_path / "junk.tar", keys)


def test_update_waits_while_trading(tmp_path: Path, signer, demo_till: Till) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    data = demo_till.ledger.path.parent
    assert trading(data) == "shift 1 is open"
    inst = Installer(tmp_path / "opt")
    b = bundle(tmp_path, pem, "1.0.0")
    with pytest.raises(UpdateBusy, match="shift 1 is open"):
        inst.install(b, keys, busy=lambda: trading(data))
    assert inst.current is None
    (data / "sale-open").write_text("")
    assert trading(data) == "a sale is open"
    inst.install(b, keys, busy=lambda: trading(data), force=True)
    assert inst.current == "1.0.0"


def test_idle_till_is_not_busy(tmp_path: Path, till: Till) -> None:
    assert trading(till.ledger.path.parent) is None
    open_shift(till)
    assert trading(till.ledger.path.parent) == "shift 1 is open"


def test_cli_build_install_gate_and_rollback(tmp_path: Path) -> None:
    import http.server
    import subprocess
    import sys
    import threading

    pem, pub = keypair(tmp_path, "release")
    keydir = tmp_path / "keys"
    keydir.mkdir()
    (keydir / "release.pem").write_bytes(pub.read_bytes())
    (tmp_path / "release.key").write_bytes(pem)

    def tillbox(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "appliance.cli", *args], capture_output=True, text=True,
                              timeout=60, check=False)  # fmt: skip

    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            return

    server = http.server.HTTPServer(("127.0.0.1", 0), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    good_url = f"http://127.0.0.1:{server.server_port}/api/v1/health"
    root, data = tmp_path / "opt", tmp_path / "data"
    try:
        for version in ("1.0.0", "2.0.0"):
            out = tillbox("update", "build", str(app(tmp_path, version)), "--version", version, "--key",
                          str(tmp_path / "release.key"), "--out", str(tmp_path / f"{version}.tar"))  # fmt: skip
            assert out.returncode == 0, out.stderr
        common = ["--root", str(root), "--keys", str(keydir), "--data-dir", str(data)]
        assert tillbox("update", "install", str(tmp_path / "1.0.0.tar"), *common).returncode == 0
        out = tillbox("update", "gate", "--root", str(root), "--url", good_url, "--data-dir", str(data))
        assert out.returncode == 0 and "version 1.0.0 is good" in out.stdout
        assert tillbox("update", "install", str(tmp_path / "2.0.0.tar"), *common).returncode == 0
        out = tillbox("update", "gate", "--root", str(root), "--url", "http://127.0.0.1:1/", "--wait", "0",
                      "--data-dir", str(data))  # fmt: skip
        assert out.returncode == 1 and "rolled back to 1.0.0" in out.stderr
        assert Installer(root).current == "1.0.0"
    finally:
        server.shutdown()
        server.server_close()


# -- crash safety, pruning and the read-only root -------------------------------------------------


def tamper(good: Path, out: Path, name: str, data: bytes) -> Path:
    """A copy of ``good`` with one payload file's bytes replaced (the signed manifest unchanged)."""
    with tarfile.open(good) as src, tarfile.open(out, "w") as dst:
        for member in src.getmembers():
            body = src.extractfile(member).read() if member.isfile() else b""  # type: ignore[union-attr]
            if member.name == name:
                body = data
                member.size = len(body)
            dst.addfile(member, io.BytesIO(body))
    return out


def test_tampered_payload_is_refused_while_unpacking_and_leaves_nothing(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    root = tmp_path / "opt"
    inst = Installer(root)
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    assert inst.gate(lambda: True)
    bad = tamper(bundle(tmp_path, pem, "2.0.0"), tmp_path / "bad.tar", "payload/bin/tillbox", b"#!/bin/sh\nevil\n")
    with pytest.raises(UpdateError, match="bin/tillbox does not match its manifest hash"):
        inst.install(bad, keys, busy=idle)
    assert (inst.current, inst.pending) == ("1.0.0", None)
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.0.0"], "no staging or half version is left"


def test_only_the_running_version_and_its_fallback_are_kept(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    root = tmp_path / "opt"
    inst = Installer(root)
    for version in ("1.0.0", "1.1.0", "1.2.0"):
        inst.install(bundle(tmp_path, pem, version), keys, busy=idle)
        assert inst.gate(lambda: True)
        (root / "versions" / f".{version}-x.partial").mkdir()  # as an install cut off by a power cut leaves
    inst.install(bundle(tmp_path, pem, "1.3.0"), keys, busy=idle)
    assert sorted(p.name for p in (root / "versions").iterdir()) == ["1.2.0", "1.3.0"]
    assert (inst.current, inst.previous) == ("1.3.0", "1.2.0")


def test_a_pending_version_must_pass_its_gate_before_the_next_update(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    inst = Installer(tmp_path / "opt")
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    with pytest.raises(UpdateError, match=r"1\.0\.0 has not passed its health gate"):
        inst.install(bundle(tmp_path, pem, "1.1.0"), keys, busy=idle)
    with pytest.raises(UpdateError, match="already running"):
        inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)


def test_gate_ignores_an_install_that_never_switched(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    root = tmp_path / "opt"
    inst = Installer(root)
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    inst.gate(lambda: True)
    # A power cut after the pending state was written but before `current` was switched.
    (root / "state.json").write_text('{"pending": "2.0.0", "failed": []}')

    def never() -> bool:
        raise AssertionError("the running version was never updated; there is nothing to judge")

    assert inst.gate(never)
    assert (inst.current, inst.pending, inst.failed) == ("1.0.0", None, [])


def test_unpacked_files_keep_the_build_times(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    import os

    pem, keys = signer
    src = app(tmp_path, "1.0.0")
    os.utime(src / "VERSION", (1_700_000_000, 1_700_000_000))  # a .py beside its .pyc keeps its mtime
    build_bundle(src, "1.0.0", pem, tmp_path / "b.tar")
    inst = Installer(tmp_path / "opt")
    inst.install(tmp_path / "b.tar", keys, busy=idle)
    assert (tmp_path / "opt" / "current" / "VERSION").stat().st_mtime == 1_700_000_000


def test_bad_versions_are_refused_when_building(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, _keys = signer
    src = app(tmp_path, "1")
    for version in ("", "../x", ".hidden", "1 0", "ü"):
        with pytest.raises(UpdateError, match="bad version"):
            build_bundle(src, version, pem, tmp_path / "b.tar")


def test_mount_point_is_the_longest_mount_above_the_path(tmp_path: Path) -> None:
    from appliance.update import mount_point

    (tmp_path / "opt tillbox" / "versions").mkdir(parents=True)
    base = str(tmp_path.resolve())
    info = (
        "22 1 8:2 / / ro,noatime shared:1 - ext4 /dev/vda2 ro\n"
        f"30 22 0:5 / {base} rw shared:2 - tmpfs tmpfs rw\n"
        f"31 30 0:6 / {base}/opt\\040tillbox rw shared:3 - tmpfs tmpfs rw\n"
        f"32 30 0:7 / {base}/opt rw shared:4 - tmpfs tmpfs rw\n"
    )
    assert mount_point(tmp_path / "opt tillbox" / "versions", info) == f"{base}/opt tillbox"
    assert mount_point(tmp_path / "opt tillbox" / "not-yet", info) == f"{base}/opt tillbox"
    assert mount_point(tmp_path, info) == base
    assert mount_point(tmp_path / "elsewhere", info.replace(base, "/nowhere")) == "/"


_RO_SCRIPT = """
import json, os, subprocess, sys
from pathlib import Path
from appliance.update import Installer, UpdateError, load_public_keys, read_only, writable

mnt, b1, b2, bad, pub = map(Path, sys.argv[1:6])
subprocess.run(["mount", "-t", "tmpfs", "-o", "size=16m", "tillbox-test", str(mnt)], check=True)
keys = load_public_keys([pub])
inst = Installer(mnt / "opt")
inst.install(b1, keys, busy=lambda: None)
inst.gate(lambda: True)
subprocess.run(["mount", "-o", "remount,ro", str(mnt)], check=True)
out = {"ro_before": read_only(mnt)}
try:
    with writable(mnt, euid=lambda: 1000):
        pass
except UpdateError as exc:
    out["not_root"] = str(exc)
inst.install(b2, keys, busy=lambda: None)
out["after_install"] = [read_only(mnt), inst.current, inst.pending]
out["gate"] = [inst.gate(lambda: False), inst.current, inst.failed, read_only(mnt)]
try:
    inst.install(bad, keys, busy=lambda: None)
except UpdateError as exc:
    out["bad"] = [str(exc), read_only(mnt), sorted(p.name for p in (mnt / "opt" / "versions").iterdir())]
print(json.dumps(out))
"""


def test_a_read_only_root_is_writable_only_while_an_update_is_written(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    """Real mounts, in a private mount namespace: a read-only tmpfs stands in for the appliance's root."""
    import os
    import shutil
    import subprocess
    import sys

    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) for a private mount namespace")
    pem, _keys = signer
    pub = tmp_path / "release.pub"
    b1, b2 = bundle(tmp_path, pem, "1.0.0"), bundle(tmp_path, pem, "2.0.0")
    bad = tamper(bundle(tmp_path, pem, "3.0.0"), tmp_path / "bad.tar", "payload/VERSION", b"evil")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    project = Path(__file__).resolve().parent.parent
    run = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", sys.executable, "-c", _RO_SCRIPT,
         str(mnt), str(b1), str(b2), str(bad), str(pub)],
        capture_output=True, text=True, timeout=60, check=False, cwd=project,
        env={**os.environ, "PYTHONPATH": str(project)},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-2000:]
    out = json.loads(run.stdout)
    assert out["ro_before"] is True
    assert "is on a read-only filesystem: run this as root" in out["not_root"]
    assert out["after_install"] == [True, "2.0.0", "2.0.0"], "installed, pending, and read-only again"
    assert out["gate"] == [False, "1.0.0", ["2.0.0"], True], "rolled back, and read-only again"
    message, still_ro, versions = out["bad"]
    assert "does not match its manifest hash" in message and still_ro is True, "read-only again after an error"
    assert versions == ["1.0.0"]


def test_installed_files_are_readable_by_the_daemon_whatever_the_umask(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    import os
    import stat

    pem, keys = signer
    src = app(tmp_path, "1.0.0")
    (src / "lib" / "pkg").mkdir(parents=True)
    (src / "lib" / "pkg" / "mod.py").write_text("x = 1\n")
    (src / "lib" / "pkg" / "mod.py").chmod(0o600)  # packed by a release engineer with umask 077
    build_bundle(src, "1.0.0", pem, tmp_path / "b.tar")
    old = os.umask(0o077)
    try:
        Installer(tmp_path / "opt").install(tmp_path / "b.tar", keys, busy=idle)
    finally:
        os.umask(old)
    version = tmp_path / "opt" / "versions" / "1.0.0"
    modes = {p.relative_to(version).as_posix(): stat.S_IMODE(p.stat().st_mode) for p in [version, *version.rglob("*")]}
    assert modes == {".": 0o755, "bin": 0o755, "bin/tillbox": 0o755, "VERSION": 0o644, "lib": 0o755,
                     "lib/pkg": 0o755, "lib/pkg/mod.py": 0o644}  # fmt: skip


def test_a_first_version_that_fails_its_gate_stays_for_want_of_another(tmp_path: Path, signer) -> None:  # type: ignore[no-untyped-def]
    pem, keys = signer
    inst = Installer(tmp_path / "opt")
    inst.install(bundle(tmp_path, pem, "1.0.0"), keys, busy=idle)
    assert not inst.gate(lambda: False)
    assert (inst.current, inst.pending, inst.failed) == ("1.0.0", None, ["1.0.0"])
