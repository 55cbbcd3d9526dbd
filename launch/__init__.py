"""Everything a user runs: the `troupe` command line and the Python API."""
