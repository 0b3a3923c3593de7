"""The platform run the way a trial runs it: a real Prefect server on a free loopback port, the
deployments of prefect.yaml, a process worker, and a data manager's on-demand `ingest-source`
triggered through the API; then the warehouse it landed and the artifacts the UI shows."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import duckdb
import httpx
import pytest

from flows.generate import generate_trial
from flows.server import Server, free_port, recorded_pid, start, stop

FINAL = {"COMPLETED", "FAILED", "CRASHED", "CANCELLED"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path, Path]]:
    root = tmp_path_factory.mktemp("server")
    generate_trial(root / "inbox", seed=17, participants_per_site=8)
    running = Server(root / "prefect-home", free_port())
    with pytest.MonkeyPatch.context() as env:
        env.setenv("PREFECT_WORKER_QUERY_SECONDS", "2")  # the worker polls often: the test waits less
        try:
            start(running, root / "inbox", root / "wh")
            yield running, root / "inbox", root / "wh"
        finally:
            stop(running)


def api(server: Server) -> httpx.Client:
    return httpx.Client(base_url=server.api_url, timeout=30)


def test_every_deployment_of_prefect_yaml_is_deployed_and_the_worker_runs(server: tuple[Server, Path, Path]) -> None:
    running, _, _ = server
    with api(running) as client:
        names = {(d["name"], d["work_pool_name"]) for d in client.post("/deployments/filter", json={}).json()}
    assert names == {("nightly-ingest", "kap-local"), ("ingest-source", "kap-local"), ("rebuild-marts", "kap-local")}
    assert recorded_pid(running, "server") and recorded_pid(running, "worker")


def create_flow_run(client: httpx.Client, deployment_id: str, parameters: dict[str, object]) -> dict[str, object]:
    """A flow run of the deployment, as a data manager's click creates it. Prefect's SQLite database
    can answer 5xx ("database is locked") on a loaded machine: such an answer is asked again."""
    for _ in range(5):
        response = client.post(f"/deployments/{deployment_id}/create_flow_run", json={"parameters": parameters})
        if response.status_code < 500:
            break
        time.sleep(2)
    assert response.status_code == 201, response.text
    return response.json()


def test_ingest_source_triggered_through_the_api_lands_and_shows_its_artifacts(
        server: tuple[Server, Path, Path]) -> None:
    running, _, warehouse = server
    with api(running) as client:
        deployment = client.get("/deployments/name/ingest-transfers/ingest-source").json()
        flow_run = create_flow_run(client, deployment["id"], {"sources": ["S02"]})
        deadline = time.monotonic() + 240
        state = flow_run["state"]["type"]
        while state not in FINAL and time.monotonic() < deadline:
            time.sleep(1)
            response = client.get(f"/flow_runs/{flow_run['id']}")
            if response.status_code == 200:
                state = response.json()["state"]["type"]
        artifacts = client.post("/artifacts/filter",
                                json={"artifacts": {"flow_run_id": {"any_": [flow_run["id"]]}}}).json()
    log = running.log_file("worker").read_text(encoding="utf-8", errors="replace")[-3000:]
    assert state == "COMPLETED", log
    assert flow_run["parameters"] == {"inbox": str((server[1]).resolve()), "warehouse": str(warehouse.resolve()),
                                      "sources": ["S02"]}
    with duckdb.connect(str(warehouse / "kap.duckdb"), read_only=True) as con:
        landed = con.execute("select source, status from ops.transfers").fetchall()
        run = con.execute("select run_id, status from ops.runs").fetchall()
    assert landed == [("S02", "LANDED")]
    assert run == [(flow_run["id"], "COMPLETED")]
    by_key = {a["key"]: a for a in artifacts}
    assert set(by_key) == {"transfer-receipts", "quarantine-by-reason", "flags-new-and-closed", "new-safety-flags"}
    assert '"S02"' in by_key["transfer-receipts"]["data"] and '"LANDED"' in by_key["transfer-receipts"]["data"]
    assert by_key["new-safety-flags"]["type"] == "markdown"


def test_the_server_stops_by_pid(tmp_path: Path) -> None:
    """Nothing recorded, nothing to stop: stop is safe to call twice."""
    assert stop(Server(tmp_path, free_port())) == []
