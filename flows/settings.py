"""Where things are and how the process is configured: one place for local, CI and production.

Paths come from the environment where a deployment needs to move them; secrets only ever come
from environment variables.
"""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
SCHEMAS_DIR = PROJECT_ROOT / "schemas"
SQL_DIR = PROJECT_ROOT / "sql"
DEFAULT_WAREHOUSE = Path(os.environ.get("KAP_WAREHOUSE", PROJECT_ROOT / "warehouse"))
STUDY = "KAP-TRD-01"

# Nothing may reach the network at run time: Prefect and Great Expectations analytics off,
# a Prefect home inside the project, and a patient start-up for the ephemeral server on CI.
OFFLINE_ENVIRONMENT: dict[str, str] = {
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    "DO_NOT_TRACK": "1",
    "GX_ANALYTICS_ENABLED": "false",
    "PREFECT_HOME": str(PROJECT_ROOT / ".prefect"),
    "PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS": "90",
    "PREFECT_LOGGING_LEVEL": "WARNING",
}

# DuckDB must never download or load an extension on its own.
DUCKDB_CONFIG: dict[str, str | bool] = {
    "autoinstall_known_extensions": False,
    "autoload_known_extensions": False,
}


def configure_offline() -> None:
    """Set the offline environment unless the caller chose otherwise."""
    for name, value in OFFLINE_ENVIRONMENT.items():
        os.environ.setdefault(name, value)
