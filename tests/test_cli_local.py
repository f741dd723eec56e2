"""The local services from the command line, run for real as a user runs them (make and
the installed `txmetrics`, as subprocesses, in a TXMETRICS_LOCAL_DIR of their own):
`make up` prints export lines that `eval` takes, `txmetrics status` says what runs where,
`make run` uses the services of `make up` and leaves them running, `failed replay` finds
them like every other command, and the first Ctrl-C (a real SIGINT to the process group,
as a terminal sends it) stops the workers and the services within 10 s, in one line."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import psycopg
import pytest

from tests.helpers import ROOT

TXMETRICS = str(Path(sys.executable).with_name("txmetrics"))
SETTINGS = ("DATABASE_URL", "AZURE_STORAGE_CONNECTION_STRING", "AZURE_STORAGE_ACCOUNT_URL", "RAW_EVENTS_CONTAINER",
            "METRIC_CATALOG", "TXMETRICS_DEBUG")


@contextmanager
def local_directory() -> Iterator[Path]:
    """A directory for the local services, outside pytest's tmp_path: PostgreSQL runs as
    another user there (as root), and pytest keeps /tmp/pytest-of-<user> private (0700)."""
    directory = Path(tempfile.mkdtemp(prefix="txmetrics-local-"))
    try:
        yield directory / "local"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def local_env(directory: Path) -> dict[str, str]:
    """The environment of a user with no settings, whose local services live in `directory`."""
    env = {k: v for k, v in os.environ.items() if k not in SETTINGS and not k.startswith("MAKE")}
    env.update(TXMETRICS_LOCAL_DIR=str(directory), PYTHONUNBUFFERED="1")
    return env


def sh(args: list[str], env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def status(env: dict[str, str]) -> dict[str, dict[str, str]]:
    result = sh([TXMETRICS, "status", "--format", "json"], env)
    assert result.returncode == 0, result.stderr
    return {row["service"].split()[0]: row for row in json.loads(result.stdout)}


@pytest.fixture(scope="module")
def made_up() -> Iterator[tuple[dict[str, str], str]]:
    """`make -s up` in a local directory of its own; (environment, what it printed)."""
    with local_directory() as directory:
        env = local_env(directory)
        try:
            up = sh(["make", "-s", "--no-print-directory", "up"], env)
            assert up.returncode == 0, up.stdout + up.stderr
            yield env, up.stdout
        finally:
            sh([TXMETRICS, "down"], env)


def test_make_up_prints_export_lines_that_eval_takes(made_up: tuple[dict[str, str], str]) -> None:
    env, printed = made_up
    assert [line.split("=", 1)[0] for line in printed.splitlines()] == [
        "export DATABASE_URL", "export AZURE_STORAGE_CONNECTION_STRING"]
    shown = sh(["bash", "-c", f'eval "$({TXMETRICS} env)" && printf "%s\\n%s\\n" "$DATABASE_URL" '
                              '"$AZURE_STORAGE_CONNECTION_STRING"'], env)
    database_url, connection_string = shown.stdout.splitlines()
    assert connection_string.startswith("DefaultEndpointsProtocol=http;") and "BlobEndpoint=http://127.0.0.1:" in \
        connection_string and connection_string.endswith(";")            # whole: not wrapped, not cut
    with psycopg.connect(database_url) as conn:
        assert conn.execute("SELECT count(*) FROM failed_items").fetchone() is not None   # migrated
    again = sh(["bash", "-c", 'eval "$(make -s --no-print-directory up)" && echo "$DATABASE_URL"'], env)
    assert again.stdout.strip() == database_url and "already running" in again.stderr


def test_status_says_what_runs_where(made_up: tuple[dict[str, str], str]) -> None:
    env, printed = made_up
    rows = status(env)
    assert rows["PostgreSQL"]["state"] == rows["Azurite"]["state"] == "running"
    assert rows["PostgreSQL"]["address"] in printed and rows["PostgreSQL"]["pid"].isdigit()
    assert rows["Azurite"]["address"].startswith("http://127.0.0.1:") and rows["Azurite"]["pid"].isdigit()
    assert rows["PostgreSQL"]["data"] == str(Path(env["TXMETRICS_LOCAL_DIR"]) / "pg")
    assert "commands use (local services (make up))" in sh([TXMETRICS, "status"], env).stderr


def test_make_run_leaves_the_services_of_make_up_running(made_up: tuple[dict[str, str], str]) -> None:
    env, _ = made_up
    before = status(env)
    run = sh(["make", "--no-print-directory", "run", "RUN_ARGS=--events 600 --partitions 1 --batch-size 200 "
              "--days 0.05"], env)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Ingested 600 events" in run.stdout
    after = status(env)
    assert after["PostgreSQL"]["state"] == after["Azurite"]["state"] == "running"
    assert (after["PostgreSQL"]["pid"], after["Azurite"]["pid"]) == (before["PostgreSQL"]["pid"],
                                                                     before["Azurite"]["pid"])


def test_failed_replay_finds_the_local_services(made_up: tuple[dict[str, str], str]) -> None:
    env, _ = made_up
    if not json.loads(sh([TXMETRICS, "failed", "list", "--format", "json"], env).stdout or "[]"):
        sh(["make", "--no-print-directory", "run", "RUN_ARGS=--events 300 --partitions 1 --seed 3"], env)
    items = json.loads(sh([TXMETRICS, "failed", "list", "--format", "json"], env).stdout)
    assert items, "make run generates bad events"
    replayed = sh([TXMETRICS, "failed", "replay", str(items[0]["id"]), "--format", "json"], env)
    assert replayed.returncode == 0, replayed.stderr
    outcome = json.loads(replayed.stdout)
    assert [o["id"] for o in outcome] == [items[0]["id"]] and outcome[0]["note"]


# ------------------------------------------------------------------------------ Ctrl-C


def processes() -> list[tuple[int, int, str]]:
    out = subprocess.run(["ps", "-ww", "-eo", "pid=,pgid=,stat=,args="], capture_output=True, text=True).stdout
    rows = []
    for line in out.splitlines():
        pid, pgid, stat, args = line.split(None, 3)
        if not stat.startswith("Z"):
            rows.append((int(pid), int(pgid), args))
    return rows


def _as_a_foreground_job() -> None:
    """What an interactive shell gives a foreground job: its own process group, and SIGINT at
    its default even when the suite itself runs with SIGINT ignored (a background job of a
    non-interactive shell, `cmd &`, starts so; make keeps an ignored SIGINT ignored, and
    Ctrl-C would then not stop it at all)."""
    os.setsid()
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("via", ["txmetrics", "make"])
def test_the_first_ctrl_c_stops_workers_and_services_in_one_line(via: str) -> None:
    with local_directory() as directory:
        interrupt_a_run(via, directory)


def interrupt_a_run(via: str, directory: Path) -> None:
    env = local_env(directory)
    args = "--events 200000 --partitions 2 --batch-size 500"
    command = [TXMETRICS, "run", *args.split()] if via == "txmetrics" else [
        "make", "--no-print-directory", "run", f"RUN_ARGS={args}"]
    proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            preexec_fn=_as_a_foreground_job)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(proc.stdout or []), daemon=True)
    reader.start()
    try:
        deadline = time.monotonic() + 180
        while not any(line.startswith("Generated") for line in lines) and time.monotonic() < deadline:
            assert proc.poll() is None, "".join(lines)
            time.sleep(0.2)
        # the two workers (and the queue manager) are up: python processes of the group besides the parent
        while time.monotonic() < deadline:
            group = [p for p in processes() if p[1] == proc.pid and "python" in p[2]]
            if len(group) >= 4:
                break
            time.sleep(0.2)
        time.sleep(1)
        assert proc.poll() is None, "the run ended before it could be interrupted: raise --events"
        os.killpg(proc.pid, signal.SIGINT)                  # what a terminal's Ctrl-C does
        interrupted = time.monotonic()
        proc.wait(timeout=10)
        stopped_in = time.monotonic() - interrupted
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    output = "".join(lines)
    left = [p for p in processes() if p[1] == proc.pid or str(directory) in p[2]]
    assert not left, left                                  # workers, PostgreSQL, Azurite: all gone
    assert stopped_in < 10, stopped_in
    assert proc.returncode == (130 if via == "txmetrics" else -signal.SIGINT)
    assert "Traceback" not in output and "make: ***" not in output, output
    after_interrupt = output[output.index("Generated"):].splitlines()[1:]
    assert [line for line in after_interrupt if "interrupt" in line.lower()] == [
        "interrupted: workers stopped, local services stopped"], output
