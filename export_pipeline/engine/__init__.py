"""The export engine: request -> plan -> DuckDB selection -> files -> published export."""
