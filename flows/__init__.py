"""KAP-TRD-01 data platform: Prefect flows and the code they run.

Importing the package first makes the process offline-safe (no telemetry, project-local Prefect
home), before Prefect or Great Expectations can be imported by anything else.
"""

from flows.settings import configure_offline

configure_offline()
