"""Port contract suites: one per port, each run against every adapter registered in conftest."""
