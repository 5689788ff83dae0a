from telemetry.domain.readings import KernelOutput, Reading

SHA256_BACKEND: str  # "openssl" or "portable"

def probe() -> int: ...
def prepare(
    readings: list[Reading], canonical_lines: bytes | None, record_lines: bytes,
    received_at_json: bytes, /,
) -> KernelOutput | None: ...
def sha256_hex(data: bytes, /) -> str: ...
