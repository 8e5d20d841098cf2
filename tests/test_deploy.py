"""The deployment files: the image's steps and compose.yaml's topology, run here as processes.

No container runtime runs where this project is tested (tests/deployment.py says how
each file is read instead). So:

- what cannot run here is read from the files: a slim Python base, a user that is not
  root, the HEALTHCHECK on /health, the data volume, what stays out of the image, and
  how compose.yaml wires the agents to the proxy;
- the image's steps run as plain processes: deploy/install.sh into a fresh virtualenv
  with the real packages from PyPI, the app as `COPY . .` copies it, the CMD as a user
  that owns only the data folder, and the HEALTHCHECK against it;
- compose.yaml's services run as processes from the same files (redis-server with the
  redis service's command, two `python agent.py` with the agent service's environment,
  nginx with the template rendered from the proxy's), and a call goes through the proxy
  over https: its two function requests land on different replicas.
"""

from __future__ import annotations

import asyncio
import grp
import json
import os
import pwd
import re
import runpy
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import pytest

from agent import UNREADABLE_REQUEST
from server.errors import body_too_large_response
from tests.deployment import (
    PREPARE,
    SITE_TEMPLATE,
    Compose,
    Dockerfile,
    MissingVariable,
    NginxProcess,
    compose_redis,
    copy_app,
    dockerignore_patterns,
    is_ignored,
    read_env_file,
    relocate,
    render_site,
    tool_or_skip,
)
from tests.platform import FakePlatform, actions, code_in_outbox_body, free_port
from tests.processes import ROOT, AgentProcess

CALLER = "+12025550143"
PUBLIC_HOST = "localhost"
# pip installs the real requirements from PyPI (about 25 s here with pip's cache, 180 MB).
INSTALL_TIMEOUT = 300.0
DEADLINE = 30.0
# What the python base image sets before the Dockerfile's own ENV.
BASE_IMAGE_ENV = {"PATH": "/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8"}

# == What cannot run here, read from the files ==


def test_the_image_is_slim_python_runs_as_a_user_and_checks_health(monkeypatch: pytest.MonkeyPatch) -> None:
    image = Dockerfile()
    base = image.all("FROM")[0].arguments
    version = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", base)
    assert version and int(version.group(1)) >= 11, base

    user = image.last("USER")
    assert user.arguments.split(":")[0] not in {"root", "0"}, user
    # Nothing runs as root after the user is set: the last USER comes after every RUN.
    assert image.instructions.index(user) > max(image.instructions.index(run) for run in image.all("RUN"))

    assert image.healthcheck() == ["python", "deploy/healthcheck.py"]
    # The script the HEALTHCHECK runs asks the agent on this container, whatever it listens on.
    health_url = runpy.run_path(str(ROOT / "deploy" / "healthcheck.py"))["health_url"]
    for host, asked in (("0.0.0.0", "127.0.0.1"), ("::", "127.0.0.1"), ("10.1.2.3", "10.1.2.3")):
        monkeypatch.setenv("HOST", host)
        monkeypatch.setenv("PORT", "3000")
        assert health_url() == f"http://{asked}:3000/health"
    env = image.env(BASE_IMAGE_ENV)
    assert image.last("EXPOSE").arguments == env["PORT"]
    assert image.last("CMD").exec_form() == ["python", "agent.py"]
    assert env["PATH"].startswith("/opt/venv/bin:"), "the CMD's python is the virtualenv's"

    # Everything the agent writes by default is on the volume, which only its user may enter.
    (volume,) = image.last("VOLUME").exec_form()
    assert env["MFA_STORE"] == f"sqlite:///{volume}/mfa.sqlite3"
    assert Path(env["MFA_OUTBOX"]).parent == Path(volume)

    # Secrets, keys and local data never reach the build context, so never an image layer.
    patterns = dockerignore_patterns()
    for private in (".env", "deploy/tls/key.pem", ".git", ".venv/bin/python", "data/mfa.sqlite3"):
        assert is_ignored(private, patterns), private
    for needed in ("agent.py", "engine/verifications.py", "web/dashboard.html", "deploy/healthcheck.py"):
        assert not is_ignored(needed, patterns), needed


def test_compose_wires_every_agent_for_the_proxy_in_front() -> None:
    variables = {
        "SWML_BASIC_AUTH_PASSWORD": "p" * 24,
        "SIGNALWIRE_SWAIG_SECRET": "s" * 24,
        "MFA_CODE_KEY": "k" * 24,
    }
    compose = Compose(variables)
    agent = compose.environment("agent")
    proxy = compose.environment("proxy")

    assert compose.service("agent")["deploy"]["replicas"] >= 2
    assert agent["MFA_STORE"].startswith("redis://redis:")
    # Every connection comes from the proxy: the per-client cap would count them all as one client.
    assert agent["MFA_MAX_CONNECTIONS_PER_CLIENT"] == "0"
    assert agent["SWML_PROXY_URL_BASE"] == "https://localhost:443"
    # The proxy refuses exactly what the agents would: one variable for both caps.
    as_written = {name: compose.raw["services"][name]["environment"] for name in ("agent", "proxy")}
    assert as_written["proxy"]["MFA_MAX_BODY_BYTES"] == as_written["agent"]["MFA_MAX_BODY_BYTES"]
    image_port = Dockerfile().env(BASE_IMAGE_ENV)["PORT"]
    assert proxy["PROXY_UPSTREAM_SERVERS"] == f"server agent:{image_port};"
    assert compose.mount("proxy", "/etc/nginx/templates/default.conf.template") == SITE_TEMPLATE
    assert compose.mount("proxy", "/etc/nginx/tls") == ROOT / "deploy" / "tls"

    # Without the shared secrets compose stops: no replica may make keys of its own.
    for name in variables:
        with pytest.raises(MissingVariable, match=name):
            Compose({other: value for other, value in variables.items() if other != name})

    site = SITE_TEMPLATE.read_text()
    for directive in (
        "client_header_timeout",
        "client_body_timeout",
        "send_timeout",
        "limit_conn ",
        "limit_req ",
    ):
        assert re.search(rf"^\s*{directive}", site, re.MULTILINE), directive


# == The image's steps, as processes ==


@dataclass(frozen=True)
class ImageUser:
    """Who runs the CMD: a user other than the one that installed the app, when there is one."""

    python: str  # the interpreter deploy/install.sh builds the virtualenv from
    uid: int | None = None
    gid: int | None = None


def image_user() -> ImageUser:
    """As root, nobody, with an interpreter nobody can run (a pyenv one under /root is not)."""
    if os.geteuid() != 0:
        return ImageUser(sys._base_executable)
    uid, gid = pwd.getpwnam("nobody").pw_uid, grp.getgrnam("nogroup").gr_gid
    for python in (sys._base_executable, shutil.which("python3") or "", "/usr/bin/python3"):
        if python and runs_as(python, uid, gid):
            return ImageUser(python, uid, gid)
    pytest.fail("no Python 3.11+ that the user nobody may run, to run the image's CMD as a user")


def runs_as(python: str, uid: int, gid: int) -> bool:
    """Whether ``python`` is 3.11+ with venv, and the user ``uid`` may run it."""
    check = "import sys, venv; assert sys.version_info >= (3, 11)"
    try:
        done = subprocess.run([python, "-c", check], user=uid, group=gid, capture_output=True, check=False)
    except OSError:
        return False
    return done.returncode == 0


def test_the_image_steps_install_the_app_serve_it_and_pass_the_healthcheck() -> None:
    image = Dockerfile()
    runner = image_user()
    # Not under pytest's temporary folder: the user who runs the CMD must be able to enter it.
    base = Path(tempfile.mkdtemp(prefix="mfa-image-"))
    agent: subprocess.Popen[bytes] | None = None
    try:
        base.chmod(0o755)
        folders = {"/app": base / "app", "/opt/venv": base / "venv", "/data": base / "data"}
        assert image.last("WORKDIR").arguments == "/app"
        copied = copy_app(folders["/app"])
        # Not the tests, nor a .env with secrets (.env.example, which holds none, may go along).
        assert "agent.py" in copied and not any(
            path.startswith("tests/") or path == ".env" for path in copied
        )

        install = [relocate(word, folders) for word in image.run_with("deploy/install.sh")]
        installed = subprocess.run(
            install,
            cwd=folders["/app"],
            env={**os.environ, "PYTHON": runner.python},
            capture_output=True,
            check=False,
            timeout=INSTALL_TIMEOUT,
        )
        assert installed.returncode == 0, installed.stderr.decode(errors="replace")
        # `install -d -o mfa -g mfa -m 0700 /data`: the agent's user owns the volume, and only it.
        folders["/data"].mkdir(mode=0o700)
        if runner.uid is not None:
            os.chown(folders["/data"], runner.uid, runner.gid or 0)

        port = free_port()
        env = {name: relocate(value, folders) for name, value in image.env(BASE_IMAGE_ENV).items()}
        env |= {"HOME": "/nonexistent", "HOST": "127.0.0.1", "PORT": str(port)}
        as_user: dict[str, Any] = {
            "cwd": folders["/app"],
            "env": env,
            "user": runner.uid,
            "group": runner.gid,
        }
        if runner.uid is not None:
            as_user["extra_groups"] = []
        healthcheck = image.healthcheck()

        def healthy() -> bool:
            done = subprocess.run(healthcheck, capture_output=True, timeout=10, check=False, **as_user)
            return done.returncode == 0

        assert not healthy(), "the HEALTHCHECK passes with no agent running"
        log = base / "agent.log"
        with log.open("wb") as out:
            agent = subprocess.Popen(
                image.last("CMD").exec_form(), stdout=out, stderr=subprocess.STDOUT, **as_user
            )
        deadline = time.monotonic() + DEADLINE
        while not healthy():
            assert agent.poll() is None, f"the agent exited with {agent.returncode}:\n{log.read_text()}"
            assert time.monotonic() < deadline, f"the HEALTHCHECK did not pass:\n{log.read_text()}"
            time.sleep(0.2)

        # The store is on the volume, the user's own and private to it.
        store = folders["/data"] / "mfa.sqlite3"
        assert store.exists(), sorted(path.name for path in folders["/data"].iterdir())
        if runner.uid is not None:
            assert store.stat().st_uid == runner.uid
        assert store.stat().st_mode & 0o077 == 0

        # `docker stop`: SIGTERM, and the agent shuts down by itself well within its 10 s
        # (uvicorn then ends by the same signal, so the exit status says SIGTERM).
        agent.terminate()
        assert agent.wait(timeout=10) in (0, -signal.SIGTERM), log.read_text()
        assert "Application shutdown complete" in log.read_text()
    finally:
        if agent is not None and agent.poll() is None:
            agent.kill()
            agent.wait()
        shutil.rmtree(base, ignore_errors=True)


# == compose.yaml's topology, as processes ==


@dataclass
class Topology:
    """compose.yaml's services running here, and what a client of the proxy needs."""

    public_url: str  # the agents' SWML_PROXY_URL_BASE
    auth: aiohttp.BasicAuth
    tls: ssl.SSLContext  # trusts the proxy's self-signed certificate
    proxy: NginxProcess
    replicas: list[AgentProcess]
    agent_env: dict[str, str]  # as compose gives it, but for where things are
    proxy_env: dict[str, str]  # as compose gives it
    outbox: Path

    @property
    def replica_addresses(self) -> set[str]:
        return {f"127.0.0.1:{replica.port}" for replica in self.replicas}

    def session(self, **kwargs: Any) -> aiohttp.ClientSession:
        return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=self.tls, limit=10), **kwargs)


def prepare(env_file: Path, tls_dir: Path, https_port: int) -> None:
    """deploy/prepare.sh, as a deployer runs it, writing where the test says."""
    env = {
        **os.environ,
        "MFA_ENV_FILE": str(env_file),
        "MFA_TLS_DIR": str(tls_dir),
        "PUBLIC_HOST": PUBLIC_HOST,
        "HTTPS_PORT": str(https_port),
    }
    subprocess.run(["sh", str(PREPARE)], env=env, check=True, timeout=60, capture_output=True)


@pytest.fixture
async def topology(tmp_path: Path) -> AsyncIterator[Topology]:
    tool_or_skip("nginx", "/usr/sbin/nginx")
    tool_or_skip("openssl")
    https_port = free_port()
    dotenv = tmp_path / "project" / ".env"
    dotenv.parent.mkdir()
    proxy_folder = tmp_path / "proxy"
    prepare(dotenv, proxy_folder / "conf" / "tls", https_port)
    before = dotenv.read_text(), (proxy_folder / "conf" / "tls" / "key.pem").read_bytes()
    prepare(dotenv, proxy_folder / "conf" / "tls", https_port)  # a second run changes nothing
    assert (dotenv.read_text(), (proxy_folder / "conf" / "tls" / "key.pem").read_bytes()) == before
    compose = Compose(read_env_file(dotenv), dotenv=dotenv)
    proxy_env = compose.environment("proxy")

    redis = compose_redis(compose.service("redis")["command"], free_port(), tmp_path / "redis")
    # What differs from the containers: where each service is.
    data = tmp_path / "agent-data"
    data.mkdir(mode=0o700)
    image_env = Dockerfile().env(BASE_IMAGE_ENV)
    agent_env = {name: value for name, value in image_env.items() if name not in BASE_IMAGE_ENV}
    agent_env |= compose.env_files("agent") | compose.environment("agent")
    agent_env = {
        name: relocate(value, {"/data": data}).replace("redis:6379", f"127.0.0.1:{redis.port}")
        for name, value in agent_env.items()
    }
    ports = [free_port(), free_port()]
    replicas = [
        AgentProcess(
            {**agent_env, "HOST": "127.0.0.1", "PORT": str(port)},
            tmp_path / f"agent-{port}" / "agent.log",
            port,
        )
        for port in ports
    ]
    for replica in replicas:
        replica.log_path.parent.mkdir()

    local_proxy_env = proxy_env | {
        "PROXY_LISTEN": f"127.0.0.1:{proxy_env['PROXY_LISTEN']}",
        "PROXY_UPSTREAM_SERVERS": " ".join(f"server 127.0.0.1:{replica.port};" for replica in replicas),
    }
    proxy = NginxProcess(proxy_folder, render_site(SITE_TEMPLATE.read_text(), local_proxy_env))

    tls = ssl.create_default_context(cafile=str(proxy_folder / "conf" / "tls" / "cert.pem"))
    public_url = agent_env["SWML_PROXY_URL_BASE"]
    assert public_url == f"https://{PUBLIC_HOST}:{https_port}"
    try:
        redis.start()
        await asyncio.gather(*(replica.start() for replica in replicas))
        proxy.start()
        await proxy.wait_until_serving(f"{public_url}/health", tls)
        yield Topology(
            public_url=public_url,
            auth=aiohttp.BasicAuth(agent_env["SWML_BASIC_AUTH_USER"], agent_env["SWML_BASIC_AUTH_PASSWORD"]),
            tls=tls,
            proxy=proxy,
            replicas=replicas,
            agent_env=agent_env,
            proxy_env=proxy_env,
            outbox=Path(agent_env["MFA_OUTBOX"]),
        )
    finally:
        proxy.stop()
        await asyncio.gather(*(replica.stop() for replica in replicas))
        redis.stop()


def request_ids() -> tuple[aiohttp.TraceConfig, list[tuple[str, str]]]:
    """A trace that notes each answer's path and the X-Request-Id the proxy gave it."""
    answered: list[tuple[str, str]] = []

    async def on_request_end(_: Any, __: Any, params: aiohttp.TraceRequestEndParams) -> None:
        answered.append((params.url.path, params.response.headers.get("X-Request-Id", "")))

    trace = aiohttp.TraceConfig()
    trace.on_request_end.append(on_request_end)
    return trace, answered


async def events_of_types(
    live: aiohttp.ClientWebSocketResponse, types: set[str], within: float
) -> list[dict[str, Any]]:
    """The events a live client receives until it has had one of each of ``types``.

    Events raised on different replicas may arrive in either order (each instance
    keeps the order it received them in), so none is expected first.
    """
    events: list[dict[str, Any]] = []
    async with asyncio.timeout(within):
        while not types <= {event["type"] for event in events}:
            message = await live.receive_json()
            if str(message.get("type", "")).startswith("mfa."):
                events.append(message)
    return events


async def test_a_call_through_the_proxy_is_served_by_both_replicas(topology: Topology) -> None:
    trace, answered = request_ids()
    async with asyncio.timeout(DEADLINE), topology.session(trace_configs=[trace]) as http:
        live_url = topology.public_url.replace("https://", "wss://") + "/websocket"
        async with http.ws_connect(live_url, auth=topology.auth) as live:
            await live.send_json({"type": "subscribe", "agent_id": "mfa"})
            assert (await live.receive_json(timeout=5))["type"] == "subscribed"

            platform = FakePlatform(http, topology.public_url, topology.auth, caller_id_num=CALLER)
            await platform.start_call()
            for url in platform.urls.values():
                parts = urlsplit(url)
                assert f"{parts.scheme}://{parts.hostname}:{parts.port}" == topology.public_url, url
                assert parts.username == topology.auth.login

            sent = await platform.call("send_mfa")
            assert "ending in 0143" in sent["response"], sent
            send_id = answered[-1][1]
            # Both replicas write the one outbox on the shared volume.
            code = code_in_outbox_body(json.loads(topology.outbox.read_text().splitlines()[-1])["body"])
            verified = await platform.call("verify_mfa", token=code)
            assert actions(verified, "set_meta_data") == [{"verified": True}], verified
            verify_id = answered[-1][1]

            # Each replica's events reach a live client on either, through Redis and the proxy.
            events = await events_of_types(live, {"mfa.sent", "mfa.verified"}, within=5)
            assert sorted(event["type"] for event in events) == ["mfa.sent", "mfa.verified"], events

        send = await topology.proxy.logged(request_id=send_id)
        verify = await topology.proxy.logged(request_id=verify_id)
        assert send["path"] == verify["path"] == urlsplit(platform.urls["send_mfa"]).path
        # The proof: the send and the check were answered by different replicas ...
        assert {send["upstream"], verify["upstream"]} == topology.replica_addresses, (send, verify)
        # ... so one of the two events reached the live client from a replica that does not hold it.
        websocket = await topology.proxy.logged(path="/websocket", status=101)
        assert websocket["upstream"] in topology.replica_addresses, websocket
        # No per-call token in the log: function URLs carry one in their query.
        assert "__token" not in topology.proxy.access_log.read_text()


async def test_the_proxy_refuses_large_bodies_and_floods_as_the_agents_would(topology: Topology) -> None:
    cap = int(topology.agent_env["MFA_MAX_BODY_BYTES"])
    json_body = {"Content-Type": "application/json"}
    url = topology.public_url
    async with asyncio.timeout(DEADLINE), topology.session() as http:
        # One byte over the cap: the proxy answers, in the API's own shape, and no replica reads it.
        async with http.post(
            f"{url}/verifications", data=b"x" * (cap + 1), headers=json_body, auth=topology.auth
        ) as r:
            assert r.status == 413
            assert await r.json() == json.loads(bytes(body_too_large_response(cap).body))
            over = await topology.proxy.logged(request_id=r.headers["X-Request-Id"])
        assert over["upstream"] == "", over

        # Exactly the cap passes on, and a replica answers for itself (422: it is no JSON).
        async with http.post(
            f"{url}/verifications", data=b"x" * cap, headers=json_body, auth=topology.auth
        ) as r:
            assert r.status == 422, await r.text()
            at_cap = await topology.proxy.logged(request_id=r.headers["X-Request-Id"])
        assert at_cap["upstream"] in topology.replica_addresses, at_cap

        # On a function URL the platform still gets HTTP 200 and words the model can say.
        platform = FakePlatform(http, url, topology.auth, caller_id_num=CALLER)
        await platform.start_call()
        async with http.post(platform.urls["send_mfa"], data=b"x" * (cap + 1), headers=json_body) as r:
            assert r.status == 200
            assert await r.json() == {"response": UNREADABLE_REQUEST}
            assert (await topology.proxy.logged(request_id=r.headers["X-Request-Id"]))["upstream"] == ""

        # More requests from one address than the rate and its burst allow: 429, with Retry-After.
        rate, burst = (
            int(topology.proxy_env[name]) for name in ("PROXY_REQUESTS_PER_SECOND", "PROXY_REQUEST_BURST")
        )

        async def health() -> tuple[int, str, str]:
            async with http.get(f"{url}/health") as r:
                return r.status, r.headers.get("Retry-After", ""), await r.text()

        answers = await asyncio.gather(*(health() for _ in range(2 * (rate + burst))))
    statuses = [status for status, _, _ in answers]
    assert statuses.count(200) >= burst, statuses
    refused = [(retry, text) for status, retry, text in answers if status == 429]
    assert refused, statuses
    retry, text = refused[0]
    assert retry == "1" and json.loads(text)["error"]["code"] == "rate_limited"
