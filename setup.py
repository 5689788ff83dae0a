"""The compiled kernels (ADR 0012), declared here rather than in pyproject.toml because
`telemetry._ingestcore` links OpenSSL's libcrypto for SHA-256 when the headers and the library
are there, and uses its own portable SHA-256 otherwise (TELEMETRY_SHA256=portable forces that).
Every kernel is optional: without a C compiler the install goes on without them, and the
pure-Python paths, which write the same bytes, run instead."""

import os
import shlex
import sys
import tempfile
from pathlib import Path

from setuptools import Extension, setup

_PROBE = """#define OPENSSL_SUPPRESS_DEPRECATED
#include <openssl/sha.h>
int main(void) { SHA256_CTX c; return !SHA256_Init(&c); }
"""


def _have_libcrypto() -> bool:
    if os.environ.get("TELEMETRY_SHA256") == "portable":
        return False
    try:
        from setuptools._distutils.ccompiler import new_compiler
        from setuptools._distutils.sysconfig import customize_compiler

        cc = new_compiler()
        customize_compiler(cc)
        with tempfile.TemporaryDirectory() as tmp:
            src = Path(tmp, "probe.c")
            src.write_text(_PROBE)
            objs = cc.compile([str(src)], output_dir=tmp)
            # LDFLAGS as the extension's link gets them (a sanitizer's runtime, say)
            cc.link_executable(objs, "probe", output_dir=tmp, libraries=["crypto"],
                               extra_postargs=shlex.split(os.environ.get("LDFLAGS", "")))
        return True
    except Exception as exc:  # no compiler, no headers or no library: the portable SHA-256
        print(f"telemetry._ingestcore: no libcrypto ({exc}); portable SHA-256", file=sys.stderr)
        return False


_openssl = _have_libcrypto()
setup(ext_modules=[
    Extension(
        "telemetry._ingestcore",
        sources=["src/telemetry/_ingestcore.c"],
        define_macros=[("TELEMETRY_OPENSSL", "1")] if _openssl else [],
        libraries=["crypto"] if _openssl else [],
        optional=True,
    ),
    Extension("telemetry._hourscan", sources=["src/telemetry/_hourscan.c"], optional=True),
])
