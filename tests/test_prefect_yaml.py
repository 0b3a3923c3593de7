"""prefect.yaml: every deployment's entrypoint imports and names a Prefect flow, and every
schedule says its timezone."""

from __future__ import annotations

import importlib.util

import yaml
from prefect import Flow

from flows.settings import PROJECT_ROOT

FLOWS = {"nightly-ingest": "ingest-transfers", "ingest-source": "ingest-transfers", "rebuild-marts": "rebuild-marts"}
PARAMETERS = {"ingest-transfers": {"inbox", "warehouse", "sources"}, "rebuild-marts": {"warehouse"}}
DEPLOYMENTS = yaml.safe_load((PROJECT_ROOT / "prefect.yaml").read_text(encoding="utf-8"))["deployments"]


def test_every_entrypoint_imports_and_is_a_flow() -> None:
    assert {d["name"] for d in DEPLOYMENTS} == set(FLOWS)
    for deployment in DEPLOYMENTS:
        path, _, name = deployment["entrypoint"].partition(":")
        spec = importlib.util.spec_from_file_location(f"entrypoint_{deployment['name'].replace('-', '_')}",
                                                      PROJECT_ROOT / path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        assert isinstance(getattr(module, name), Flow), deployment["name"]
        assert getattr(module, name).name == FLOWS[deployment["name"]]


def test_every_schedule_has_an_explicit_timezone_and_every_deployment_explicit_parameters() -> None:
    for deployment in DEPLOYMENTS:
        assert set(deployment["parameters"]) == PARAMETERS[FLOWS[deployment["name"]]], deployment["name"]
        for schedule in deployment.get("schedules") or []:
            assert schedule.get("timezone"), deployment["name"]
