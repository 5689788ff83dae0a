from typing import Literal

from telemetry.domain.readings import KernelOutput, Reading

SHA256_BACKEND: Literal["openssl", "portable"]

def probe() -> int: ...
def prepare(
    readings: list[Reading], record_lines: bytes, received_at_json: bytes, /
) -> KernelOutput | None: ...
def sha256_hex(data: bytes, /) -> str: ...
