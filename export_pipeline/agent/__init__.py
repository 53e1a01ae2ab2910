"""A warm process that runs `export-pipeline export` for the CLI, so an export starts in
milliseconds instead of paying Python's and Dagster's imports (about a second) every time.

The CLI (`client.py`) hands its arguments, environment, working directory and its stdin,
stdout and stderr (the file descriptors themselves, over a Unix socket) to the agent
(`server.py`), which forks a child that was imported and warmed up once; the child runs the
command exactly as the CLI would, writes to the CLI's own terminal or pipes, and reports the
exit code. `protocol.py` holds what both sides share: where the socket is and the frames.
"""
