"""The README's AWS section, as written, against a moto server, as a new user runs it: HOME in an
empty folder (no AWS config or credentials file), and no variable but credentials, the moto
endpoint and what `aws init` printed. Then each of those variables missing in turn."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import boto3
import httpx
import pytest

from telemetry.entrypoints.loopback import free_port
from tests.support import moto as moto_server

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent


def _readme_init_line() -> str:
    block = ROOT.joinpath("README.md").read_text().split("## On AWS: SQS + S3", 1)[1]
    m = re.search(r'^eval "\$\(telemetry aws init [^\n]*\)"$', block, re.M)
    assert m, "the README's AWS section has no `eval \"$(telemetry aws init ...)\"` line"
    return m.group(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str], str]:
    """A working folder and the environment after the README's `eval "$(telemetry aws init)"`."""
    work = tmp_path_factory.mktemp("readme-aws")
    (work / "home").mkdir()
    base = {
        "PATH": f"{BIN}{os.pathsep}/usr/bin{os.pathsep}/bin",
        "HOME": str(work / "home"),
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_ENDPOINT_URL": moto_server.shared_server_url(),
    }
    name = moto_server.unique("readme")
    line = _readme_init_line()
    line = re.sub(r"--queue \S+", f"--queue {name}", line)
    line = re.sub(r"--bucket \S+", f"--bucket {name}", line)
    out = subprocess.run(["bash", "-c", f"set -e\n{line}\nenv -0"], check=False, env=base, cwd=work,
                         capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr.decode()
    env = dict(item.split("=", 1) for item in out.stdout.decode().split("\0") if "=" in item)
    exported = {k: v for k, v in env.items() if k not in base}
    for k in ("TELEMETRY_QUEUE", "TELEMETRY_SQS_QUEUE_URL", "TELEMETRY_STORAGE",
              "TELEMETRY_S3_BUCKET", "AWS_REGION"):
        assert k in exported, (k, exported)
    assert "AWS_DEFAULT_REGION" not in env  # the region comes from AWS_REGION alone
    return work, {**base, **exported}, name


def _telemetry(work: Path, env: dict[str, str], *argv: str,
               timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(BIN / "telemetry"), *argv], check=False, env=env, cwd=work,
                          capture_output=True, text=True, timeout=timeout)


def test_serve_worker_and_aggregate_run_from_the_documented_variables(
    world: tuple[Path, dict[str, str], str],
) -> None:
    work, env, bucket = world
    made = _telemetry(work, env, "keys", "create", "--name", "gw", "--vehicles", "car-*")
    assert made.returncode == 0, made.stderr
    key = made.stdout.splitlines()[-1]
    port = free_port()
    log = (work / "serve.log").open("w")
    serve = subprocess.Popen([str(BIN / "telemetry"), "serve", "--port", str(port)], env=env,
                             cwd=work, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert serve.poll() is None, (work / "serve.log").read_text()
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, (work / "serve.log").read_text()
            time.sleep(0.2)
        now = time.time()
        readings = [{"vehicle_id": f"car-{i % 3}",
                     "ts": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now - i)),
                     "signals": {"Vehicle.Speed": float(i)}} for i in range(30)]
        r = httpx.post(url + "/v1/readings", json={"readings": readings},
                       headers={"X-API-Key": key}, timeout=30)
        assert r.status_code == 202, r.text
    finally:
        serve.terminate()
        serve.wait(timeout=30)
        log.close()
    worker = _telemetry(work, env, "worker", "--once")
    assert worker.returncode == 0, worker.stderr
    agg = _telemetry(work, env, "aggregate")
    assert agg.returncode == 0, agg.stderr
    s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name=env["AWS_REGION"],
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    prefix = env.get("TELEMETRY_S3_PREFIX", "")
    listed = s3.list_objects_v2(Bucket=bucket, Prefix=f"{prefix}/aggregates/hourly/".lstrip("/"))
    keys = [o["Key"] for o in listed.get("Contents", [])]
    assert keys, listed
    lines = [json.loads(line) for k in keys
             for line in s3.get_object(Bucket=bucket, Key=k)["Body"].read().splitlines()]
    assert sum(line["readings"] for line in lines) == 30


COMMANDS = (("serve", "--port", "0"), ("worker", "--once"), ("aggregate",), ("dlq", "list"))


def _case(env: dict[str, str], var: str, value: str | None) -> dict[str, str]:
    out = dict(env)
    if value is None:
        out.pop(var)
    else:
        out[var] = value
    return out


def test_each_missing_variable_is_one_line_naming_it(
    world: tuple[Path, dict[str, str], str],
) -> None:
    work, env, name = world
    url = env["TELEMETRY_SQS_QUEUE_URL"]
    cases = [
        (var, _case(env, var, None), var)
        for var in ("AWS_REGION", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "TELEMETRY_QUEUE",
                    "TELEMETRY_SQS_QUEUE_URL", "TELEMETRY_STORAGE", "TELEMETRY_S3_BUCKET")
    ]
    cases.append(("no such queue", _case(env, "TELEMETRY_SQS_QUEUE_URL", url + "-gone"),
                  "TELEMETRY_SQS_QUEUE_URL"))
    cases.append(("no such bucket", _case(env, "TELEMETRY_S3_BUCKET", name + "-gone"),
                  "TELEMETRY_S3_BUCKET"))
    # `dlq` uses the queue alone: the lake's settings are not its business.
    runs = [(what, cmd, e, named) for what, e, named in cases for cmd in COMMANDS
            if not (cmd[0] == "dlq" and ("BUCKET" in named or "STORAGE" in named))]

    def run(item: tuple[str, tuple[str, ...], dict[str, str], str]) -> str | None:
        what, cmd, e, named = item
        out = _telemetry(work, e, *cmd, timeout=90)
        lines = out.stderr.strip().splitlines()
        if (out.returncode == 2 and len(lines) == 1 and named in lines[0]
                and "Traceback" not in out.stderr):
            return None
        return f"{what}: telemetry {shlex.join(cmd)} -> {out.returncode}\n{out.stderr}"

    with ThreadPoolExecutor(4) as pool:
        failures = [f for f in pool.map(run, runs) if f]
    assert not failures, "\n".join(failures)
