"""The ports: what the domain needs from the outside world, one small Protocol per role.

Each module is one role, so import-linter can check who uses it and who implements it
(pyproject.toml). Each adapter translates its technology's errors into
`telemetry.domain.errors`, so a use case only ever handles `QueueUnavailable`,
`StorageUnavailable` and `NotFound`.
"""
