"""A local Prefect server and process worker for the platform's deployments (`make server`,
`make server-stop`).

Both run in the background, each in its own session, with their PIDs in `PREFECT_HOME`; the
server listens on 127.0.0.1 only. Prefect's own database (`PREFECT_HOME/prefect.db`) holds run
metadata: flow and task runs, logs of counts, artifacts of counts and flag references, never
trial data. The deployments of prefect.yaml are applied with the inbox and warehouse of this
checkout, so the worker's flow runs read and write where `make demo` does unless told otherwise.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from flows.settings import DEFAULT_WAREHOUSE, PROJECT_ROOT

HOST = "127.0.0.1"
DEFAULT_PORT = 4200
WORK_POOL = "kap-local"
DEFAULT_INBOX = PROJECT_ROOT / "demo" / "inbox"


@dataclass(frozen=True)
class Server:
    """Where a server listens and where its state lives."""

    home: Path
    port: int

    @property
    def api_url(self) -> str:
        return f"http://{HOST}:{self.port}/api"

    @property
    def ui_url(self) -> str:
        return f"http://{HOST}:{self.port}"

    def pid_file(self, role: str) -> Path:
        return self.home / f"{role}.pid"

    def log_file(self, role: str) -> Path:
        return self.home / f"{role}.log"

    def environment(self, **extra: str) -> dict[str, str]:
        """The environment of every Prefect command against this server: offline, local home."""
        env = dict(os.environ)
        env.update({
            "PREFECT_HOME": str(self.home),
            "PREFECT_API_URL": self.api_url,
            "PREFECT_SERVER_API_HOST": HOST,
            "PREFECT_SERVER_API_PORT": str(self.port),
            "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            "DO_NOT_TRACK": "1",
            "GX_ANALYTICS_ENABLED": "false",
            "PREFECT_UI_API_URL": self.api_url,
        })
        env.update(extra)
        return env


def prefect_executable() -> str:
    return str(Path(sys.executable).with_name("prefect"))


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def restore_signals() -> None:
    """A child started from a script inherits SIGINT ignored; the worker must stop on it."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def spawn(server: Server, role: str, command: list[str], env: dict[str, str]) -> int:
    server.home.mkdir(parents=True, exist_ok=True)
    with open(server.log_file(role), "ab") as log:
        process = subprocess.Popen(command, cwd=PROJECT_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                                   stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=restore_signals)
    server.pid_file(role).write_text(str(process.pid), encoding="utf-8")
    return process.pid


def running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie (exited, not yet reaped by its parent) is not running
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1][0]
    except (OSError, IndexError):
        return True
    return state != "Z"


def recorded_pid(server: Server, role: str) -> int | None:
    try:
        pid = int(server.pid_file(role).read_text(encoding="utf-8").strip())
    except (OSError, ValueError):
        return None
    return pid if running(pid) else None


def wait_healthy(server: Server, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{server.api_url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if recorded_pid(server, "server") is None:
            raise RuntimeError(f"the Prefect server exited; see {server.log_file('server')}")
        time.sleep(0.5)
    raise TimeoutError(f"the Prefect server did not answer on {server.api_url} within {timeout:.0f} s; "
                       f"see {server.log_file('server')}")


def prefect(server: Server, *arguments: str, env: dict[str, str] | None = None) -> str:
    result = subprocess.run([prefect_executable(), "--no-prompt", *arguments], cwd=PROJECT_ROOT,
                            env=env or server.environment(), capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(f"prefect {' '.join(arguments)} failed:\n{result.stdout}\n{result.stderr}")
    return result.stdout


def deploy(server: Server, inbox: Path, warehouse: Path) -> None:
    """The work pool and every deployment of prefect.yaml, for this checkout's inbox and warehouse."""
    prefect(server, "work-pool", "create", WORK_POOL, "--type", "process", "--overwrite")
    env = server.environment(KAP_PROJECT_DIR=str(PROJECT_ROOT), KAP_INBOX=str(inbox.resolve()),
                             KAP_WAREHOUSE=str(warehouse.resolve()))
    prefect(server, "deploy", "--all", env=env)


def start(server: Server, inbox: Path, warehouse: Path) -> None:
    """Server, deployments and worker, each started unless already running."""
    if recorded_pid(server, "server") is None:
        spawn(server, "server", [prefect_executable(), "server", "start", "--host", HOST, "--port", str(server.port),
                                 "--analytics-off"], server.environment())
    wait_healthy(server)
    deploy(server, inbox, warehouse)
    if recorded_pid(server, "worker") is None:
        spawn(server, "worker", [prefect_executable(), "worker", "start", "--pool", WORK_POOL, "--type", "process",
                                 "--install-policy", "never"], server.environment())


def stop(server: Server, grace: float = 15.0) -> list[str]:
    """Worker first (so it takes no new run), then the server; each by its recorded PID."""
    stopped = []
    for role in ("worker", "server"):
        pid = recorded_pid(server, role)
        server.pid_file(role).unlink(missing_ok=True)
        if pid is None:
            continue
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while running(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if running(pid):
            os.killpg(pid, signal.SIGKILL)
        stopped.append(f"{role} (pid {pid})")
    return stopped


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m flows.server", description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["start", "stop", "status"])
    parser.add_argument("--port", type=int, default=int(os.environ.get("PREFECT_PORT", DEFAULT_PORT)))
    parser.add_argument("--inbox", type=Path, default=Path(os.environ.get("KAP_INBOX", DEFAULT_INBOX)))
    parser.add_argument("--warehouse", type=Path, default=Path(os.environ.get("KAP_WAREHOUSE", DEFAULT_WAREHOUSE)))
    arguments = parser.parse_args(argv)
    server = Server(Path(os.environ.get("PREFECT_HOME", PROJECT_ROOT / ".prefect")), arguments.port)
    if arguments.action == "start":
        start(server, arguments.inbox, arguments.warehouse)
        print(f"Prefect UI:   {server.ui_url}")
        print(f"Prefect API:  {server.api_url}  (export PREFECT_API_URL={server.api_url})")
        print(f"Worker:       pool {WORK_POOL}, log {server.log_file('worker')}")
        print(f"Deployments:  ingest-transfers/nightly-ingest, ingest-transfers/ingest-source, "
              f"rebuild-marts/rebuild-marts (inbox {arguments.inbox}, warehouse {arguments.warehouse})")
        print("Stop with:    make server-stop")
    elif arguments.action == "stop":
        stopped = stop(server)
        print("stopped " + ", ".join(stopped) if stopped else "nothing was running")
    else:
        for role in ("server", "worker"):
            pid = recorded_pid(server, role)
            print(f"{role}: {'running, pid ' + str(pid) if pid else 'not running'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
