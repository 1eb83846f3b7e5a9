import os

# Keep every Ray instance the tests start on loopback (Ray's single-machine mode).
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
