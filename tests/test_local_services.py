"""The project's own service management: idempotent start/stop, nothing left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import localdev.services as services_mod
from localdev.services import EmbeddedPostgres, NpmAzurite, ServiceError
from tests.helpers import ROOT

CHILD = textwrap.dedent("""
    import sys, time
    from localdev.services import ephemeral_services
    s = ephemeral_services().start()
    print(s.storage.pid, s.postgres.data_dir, flush=True)
    sys.stdin.readline()  # the parent checks the services are up, then says go
    if sys.argv[1] == "raise":
        raise RuntimeError("test failure inside the suite")
    time.sleep(120)
""")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is dead: it only waits for its (re-)parent to reap it
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except OSError:
        return False


def _postgres_running(data_dir: str) -> bool:
    out = subprocess.run(["ps", "-ww", "-eo", "stat,args"], capture_output=True, text=True).stdout
    return any(data_dir in line and not line.startswith("Z") for line in out.splitlines())


@pytest.mark.parametrize("how", ["raise", "sigterm"])
def test_services_are_stopped_when_the_owner_fails_or_is_interrupted(how: str) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING")}
    proc = subprocess.Popen([sys.executable, "-c", CHILD, how], cwd=ROOT, stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert proc.stdout is not None and proc.stdin is not None
    line = proc.stdout.readline().split()
    assert line, proc.stderr.read() if proc.stderr else "no output"
    azurite_pid, data_dir = int(line[0]), line[1]
    assert _alive(azurite_pid) and _postgres_running(data_dir), subprocess.run(["ps", "-ww", "-eo", "stat,args"], capture_output=True, text=True).stdout
    if how == "sigterm":
        proc.send_signal(signal.SIGTERM)
    else:
        proc.stdin.write("go\n")
        proc.stdin.flush()
    proc.wait(timeout=60)
    assert proc.returncode != 0
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and (_alive(azurite_pid) or _postgres_running(data_dir)):
        time.sleep(0.1)
    assert not _alive(azurite_pid), "Azurite outlived its owner"
    assert not _postgres_running(data_dir), "PostgreSQL outlived its owner"
    assert not Path(data_dir).exists(), "the throwaway cluster was not removed"


def test_start_and_stop_are_idempotent(tmp_path: Path) -> None:
    pg = EmbeddedPostgres(tmp_path / "pg")
    az = NpmAzurite(location=None)
    try:
        pg.start()
        pg.start()
        az.start()
        first_pid = az.pid
        az.start()
        assert az.pid == first_pid
        assert pg.is_running()
    finally:
        az.stop()
        az.stop()
        pg.stop()
        pg.stop()
    assert not pg.is_running()


def test_missing_node_gives_one_clear_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(services_mod, "ROOT", tmp_path)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ServiceError) as err:
        services_mod.azurite_binary()
    message = str(err.value)
    assert "\n" not in message and "Node.js" in message and "npm" in message


def test_the_endpoint_shown_for_a_real_account_never_holds_its_key() -> None:
    """`txmetrics run` prints where the Blob service is; given a real account's connection
    string (no BlobEndpoint field) it printed everything, the account key included."""
    real = ("DefaultEndpointsProtocol=https;AccountName=txmprod;AccountKey=c2VjcmV0LWtleQ==;"
            "EndpointSuffix=core.windows.net")
    shown = services_mod.LocalServices(postgres=services_mod.ExternalPostgres("postgresql://u:pw@db/x"),
                                       storage=services_mod.ExternalStorage(real)).blob_endpoint
    assert shown == "https://txmprod.blob.core.windows.net" and "c2VjcmV0" not in shown
    azurite = services_mod.LocalServices(postgres=services_mod.ExternalPostgres("postgresql://u@db/x"),
                                         storage=services_mod.ExternalStorage(
                                             "AccountName=devstoreaccount1;AccountKey=k;"
                                             "BlobEndpoint=http://127.0.0.1:10000/devstoreaccount1;"))
    assert azurite.blob_endpoint == "http://127.0.0.1:10000/devstoreaccount1"


def test_a_stale_pid_file_naming_another_clusters_postgres_is_not_running(tmp_path: Path) -> None:
    """After a crash the pid file stays; its pid, reused by another postgres process (another
    cluster's backend on a CI machine running several), makes this dead cluster 'running':
    start() then returns without starting it. The postmaster's command line names its data
    directory (-D), which a reused pid's does not."""
    data = tmp_path / "pg"
    data.mkdir()
    (data / "PG_VERSION").write_text("17\n")
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)",
                              "postgres: postgres txmetrics 127.0.0.1(5000) idle"])
    try:
        while b"postgres" not in Path(f"/proc/{other.pid}/cmdline").read_bytes():   # exec done
            time.sleep(0.05)
        (data / "postmaster.pid").write_text(f"{other.pid}\n{data}\n1764420000\n5432\n")
        assert not EmbeddedPostgres(data).is_running()
    finally:
        other.kill()
        other.wait()


def test_an_empty_pid_file_mid_write_is_not_running(tmp_path: Path) -> None:
    data = tmp_path / "pg"
    data.mkdir()
    (data / "postmaster.pid").write_text("")
    assert not EmbeddedPostgres(data).is_running()
