# (name, count, min, max, math.fsum of the values)
_Signal = tuple[str, int, int | float, int | float, float]
# (vehicle_id, readings, first ts, last ts (microseconds since the epoch, UTC), signals)
_Vehicle = tuple[str, int, int, int, list[_Signal]]

def probe() -> int: ...
def forget() -> None: ...
def aggregate_hour(
    blobs: list[bytes | memoryview], part: int = 0, parts: int = 1, /
) -> tuple[int, list[_Vehicle]] | None: ...
