import os

# Keep every Ray instance the tests start on loopback (Ray's single-machine mode).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

# The response cache keeps answers on disk across runs: a test that wants it turns it on
# with a file of its own (RAYGATE_CACHE__PATH), so that no answer leaks between tests.
os.environ.setdefault("RAYGATE_CACHE__ENABLED", "false")
