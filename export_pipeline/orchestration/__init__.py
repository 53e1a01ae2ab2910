"""The Dagster adapter: one job over the plain-Python export steps, and what launches it.

Nothing below export_pipeline/orchestration imports Dagster except this package.
"""

from export_pipeline.orchestration import sqlite_quiet, sqlite_urls

# Every process that loads this package (the CLI, API workers, the code server of `dagster
# dev`) may open the instance: its sqlite files must be found under any DAGSTER_HOME path.
sqlite_urls.install()
# Runs executed here (CLI, API workers) write the instance's sqlite files without a sync per
# event.
sqlite_quiet.install()
