"""export_pipeline: export vector-database collections to files behind a link."""

__version__ = "0.1.0"
