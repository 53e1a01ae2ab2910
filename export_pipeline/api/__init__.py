"""The HTTP API: `POST /v1/collections/{collection_identifier}/export` and friends (H1-H4)."""
