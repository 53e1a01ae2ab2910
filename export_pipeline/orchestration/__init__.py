"""The Dagster adapter: one job over the plain-Python export steps, and what launches it.

Nothing below export_pipeline/orchestration imports Dagster except this package.
"""
