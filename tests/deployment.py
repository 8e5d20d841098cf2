"""Test harness for the deployment files: what a container runtime would do with them, done here.

No container runtime runs where this project is tested, so the tests run what the
containers would run, read from the same files:

- `Dockerfile`: the image's instructions and environment, and `copy_app`, which copies
  the app the way `COPY . .` does with `.dockerignore`;
- `Compose`: compose.yaml with its ``${...}`` filled in from a `.env`, as `docker compose`
  does, and each service's environment;
- `render_site`: deploy/nginx-site.conf.template filled in from the proxy's environment,
  as the nginx image does at start;
- `NginxProcess` and `compose_redis`: the proxy and the store as processes on free ports.

Where the containers would have their own host names and folders, the processes get
127.0.0.1 with a free port and folders of the test's (`relocate`); nothing else changes.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import shlex
import shutil
import signal
import ssl
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.processes import ROOT, RedisServer

DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
COMPOSE_FILE = ROOT / "compose.yaml"
SITE_TEMPLATE = ROOT / "deploy" / "nginx-site.conf.template"
PREPARE = ROOT / "deploy" / "prepare.sh"


def tool_or_skip(name: str, *also: str) -> str:
    """A program's path; a missing one skips the test, but fails it under CI=true."""
    found = shutil.which(name) or next((path for path in also if os.access(path, os.X_OK)), None)
    if found is None:
        reason = f"{name} is not installed (scripts/test.sh installs it when run as root)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return found


# == the Dockerfile ==


@dataclass(frozen=True)
class Instruction:
    keyword: str  # upper case: FROM, RUN, ENV, ...
    arguments: str  # the rest of the instruction, continuation lines joined

    def exec_form(self) -> list[str]:
        """The arguments of a JSON-array ("exec") form, e.g. CMD ["python", "agent.py"]."""
        words = json.loads(self.arguments)
        assert isinstance(words, list) and all(isinstance(word, str) for word in words), self
        return words


class Dockerfile:
    """The instructions of a Dockerfile, as far as the tests read them."""

    def __init__(self, path: Path = DOCKERFILE) -> None:
        text = re.sub(r"\\\n", " ", path.read_text())
        self.instructions = []
        for line in text.splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                keyword, _, arguments = line.partition(" ")
                self.instructions.append(Instruction(keyword.upper(), arguments.strip()))

    def all(self, keyword: str) -> list[Instruction]:
        return [instruction for instruction in self.instructions if instruction.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"the Dockerfile has no {keyword}"
        return found[-1]

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """The environment the image's processes start with: ``base`` (the base image's), then each ENV."""
        env = dict(base)
        for instruction in self.all("ENV"):
            for word in shlex.split(instruction.arguments):
                name, equals, value = word.partition("=")
                assert equals, f"ENV {word}: only the NAME=value form is read here"
                env[name] = re.sub(r"\$\{?(\w+)\}?", lambda match: env.get(match.group(1), ""), value)
        return env

    def healthcheck(self) -> list[str]:
        """The HEALTHCHECK's command (its options dropped)."""
        _, _, command = self.last("HEALTHCHECK").arguments.partition("CMD ")
        return Instruction("CMD", command).exec_form()

    def run_with(self, script: str) -> list[str]:
        """The words of the one RUN that runs ``script``."""
        runs = [run for run in self.all("RUN") if script in run.arguments]
        assert len(runs) == 1, f"expected one RUN of {script}, found {runs}"
        return shlex.split(runs[0].arguments)


def relocate(value: str, folders: Mapping[str, Path]) -> str:
    """``value`` with each of the image's folders (keys, e.g. /data) replaced by a local one."""
    for image_path, local in folders.items():
        value = re.sub(rf"(?<![\w.-]){re.escape(image_path)}(?=/|:|$)", str(local), value)
    return value


def dockerignore_patterns(path: Path = DOCKERIGNORE) -> list[re.Pattern[str]]:
    """.dockerignore's patterns as regular expressions for paths relative to the build context."""
    patterns = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        assert not line.startswith("!"), "exceptions (!) are not read here; .dockerignore says so"
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", line.strip("/")):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(part, re.escape(part))
        patterns.append(re.compile(regex))
    return patterns


def is_ignored(relative: str, patterns: list[re.Pattern[str]]) -> bool:
    """Whether docker leaves ``relative`` out of the context: it, or a folder it is in, matches."""
    parts = relative.split("/")
    prefixes = ["/".join(parts[: index + 1]) for index in range(len(parts))]
    return any(pattern.fullmatch(prefix) for pattern in patterns for prefix in prefixes)


def copy_app(destination: Path, source: Path = ROOT) -> list[str]:
    """What `COPY . .` puts in the image: every file .dockerignore does not leave out."""
    patterns = dockerignore_patterns()
    copied = []
    for folder, subfolders, files in os.walk(source):
        here = Path(folder).relative_to(source)
        subfolders[:] = [name for name in subfolders if not is_ignored(str(here / name), patterns)]
        for name in files:
            relative = str(here / name) if str(here) != "." else name
            if is_ignored(relative, patterns):
                continue
            target = destination / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(Path(folder) / name, target)
            copied.append(relative)
    return copied


# == compose.yaml ==


class MissingVariable(Exception):
    """A ${NAME:?message} whose variable is not set: `docker compose` stops with the message."""


_VARIABLE = re.compile(r"\$\$|\$\{(?P<name>\w+)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}|\$(?P<bare>[A-Za-z_]\w*)")


def interpolate(text: str, variables: Mapping[str, str]) -> str:
    """``text`` with compose's ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?error} and $$."""

    def value(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("name") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        current = variables.get(name)
        missing = current is None or (current == "" and op is not None and op.startswith(":"))
        if op and op.endswith("-") and missing:
            return arg
        if op and op.endswith("?") and missing:
            raise MissingVariable(f"{name}: {arg}")
        return current or ""

    return _VARIABLE.sub(value, text)


def read_env_file(path: Path) -> dict[str, str]:
    """A .env file's NAME=value lines (as deploy/prepare.sh writes them: no quotes)."""
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


class Compose:
    """compose.yaml as `docker compose` reads it, with ``variables`` for its ${...}.

    ``dotenv`` stands for the project's .env wherever a service names it as an env_file.
    """

    def __init__(
        self, variables: Mapping[str, str], path: Path = COMPOSE_FILE, dotenv: Path | None = None
    ) -> None:
        self.folder = path.parent
        self.dotenv = dotenv or self.folder / ".env"
        self.variables = dict(variables)
        self.raw: dict[str, Any] = yaml.safe_load(path.read_text())
        self.config: dict[str, Any] = self._filled(self.raw)

    def _filled(self, node: Any) -> Any:
        if isinstance(node, str):
            return interpolate(node, self.variables)
        if isinstance(node, list):
            return [self._filled(item) for item in node]
        if isinstance(node, dict):
            return {key: self._filled(item) for key, item in node.items()}
        return node

    def service(self, name: str) -> dict[str, Any]:
        service: dict[str, Any] = self.config["services"][name]
        return service

    def environment(self, name: str) -> dict[str, str]:
        """A service's `environment` (either form), values as strings."""
        env = self.service(name).get("environment", {})
        if isinstance(env, list):
            env = dict(item.split("=", 1) for item in env)
        return {key: "" if value is None else str(value) for key, value in env.items()}

    def env_files(self, name: str) -> dict[str, str]:
        """What a service's `env_file`s give it, in order (later files win)."""
        files = self.service(name).get("env_file", [])
        values: dict[str, str] = {}
        for entry in [files] if isinstance(files, str | dict) else files:
            path = entry["path"] if isinstance(entry, dict) else entry
            values.update(read_env_file(self.dotenv if path == ".env" else self.folder / path))
        return values

    def mount(self, service: str, target: str) -> Path:
        """The host path a service's bind mount at ``target`` comes from."""
        for volume in self.service(service).get("volumes", []):
            source, _, rest = volume.partition(":")
            if rest.split(":")[0] == target:
                return (self.folder / source).resolve()
        raise AssertionError(f"{service} mounts nothing at {target}")


# == the proxy ==


def render_site(template: str, env: Mapping[str, str]) -> str:
    """The template as the nginx image renders it: envsubst of the variables its filter admits.

    The image substitutes only variables that are set and match NGINX_ENVSUBST_FILTER;
    every ${NAME} in the template must be one of them, or nginx would see it verbatim.
    """
    admitted = re.compile(env.get("NGINX_ENVSUBST_FILTER", ""))
    for name in (name for name in env if admitted.search(name)):
        # envsubst fills in $NAME too; the template writes ${NAME} only, so nothing differs.
        assert not re.search(rf"\${name}(?!\w)", template), f"write ${{{name}}}, not ${name}"
        template = template.replace("${" + name + "}", env[name])
    directives = "\n".join(line for line in template.splitlines() if not line.lstrip().startswith("#"))
    left = re.findall(r"\$\{\w+\}", directives)
    assert not left, f"the proxy's environment does not set {left}"
    return template


# What the nginx image's own nginx.conf gives the template: the main context around the
# http block. Here nginx stays in the foreground and keeps every file in its folder.
_NGINX_CONF = """\
daemon off;
{user}worker_processes 1;
pid nginx.pid;
error_log logs/error.log info;
events {{
    worker_connections 512;
}}
http {{
    client_body_temp_path temp/client_body;
    proxy_temp_path temp/proxy;
    fastcgi_temp_path temp/fastcgi;
    uwsgi_temp_path temp/uwsgi;
    scgi_temp_path temp/scgi;
    include site.conf;
}}
"""


class NginxProcess:
    """nginx in the foreground with a rendered site, every file under ``folder``.

    The layout is the image's, relative to nginx.conf: ``conf/site.conf`` (the rendered
    template) and ``conf/tls/`` (compose mounts deploy/tls at /etc/nginx/tls). The
    access log (the site logs to stdout) goes to ``logs/access.log``.
    """

    def __init__(self, folder: Path, site: str) -> None:
        self.folder = folder
        self.conf = folder / "conf"
        for sub in ("conf", "logs", "temp"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        (self.conf / "site.conf").write_text(site)
        # A root master would run its workers as nobody, who cannot reach a test's
        # private temporary folder (request bodies are buffered there).
        user = "user root;\n" if os.geteuid() == 0 else ""
        (self.conf / "nginx.conf").write_text(_NGINX_CONF.format(user=user))
        self.access_log = folder / "logs" / "access.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        binary = tool_or_skip("nginx", "/usr/sbin/nginx")
        with self.access_log.open("ab") as out, (self.folder / "logs" / "stderr.log").open("ab") as err:
            command = [binary, "-p", f"{self.folder}/", "-c", str(self.conf / "nginx.conf")]
            self.process = subprocess.Popen([*command, "-e", "logs/error.log"], stdout=out, stderr=err)

    async def wait_until_serving(self, url: str, ssl_context: ssl.SSLContext, within: float = 10.0) -> None:
        """Until ``url`` answers 200 through the proxy; its error log in the exception otherwise."""
        deadline = time.monotonic() + within
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl_context)) as http:
            while True:
                assert self.process is not None
                if self.process.poll() is not None:
                    raise RuntimeError(f"nginx exited with {self.process.returncode}:\n{self.errors()}")
                try:
                    async with http.get(url) as response:
                        if response.status == 200:
                            return
                except aiohttp.ClientError:
                    pass
                if time.monotonic() > deadline:
                    raise TimeoutError(f"nginx did not serve {url}:\n{self.errors()}")
                await asyncio.sleep(0.05)

    def errors(self) -> str:
        """What nginx said about itself: its error log and anything it printed."""
        paths = [self.folder / "logs" / name for name in ("error.log", "stderr.log")]
        return "".join(path.read_text(errors="replace") for path in paths if path.exists())

    def log_lines(self) -> list[dict[str, Any]]:
        """The access log, one JSON object per request."""
        if not self.access_log.exists():
            return []
        return [json.loads(line) for line in self.access_log.read_text().splitlines() if line.strip()]

    async def logged(self, within: float = 5.0, **fields: object) -> dict[str, Any]:
        """The first access log line with these ``fields``, once nginx has written it.

        nginx writes a request's line when the request ends: a WebSocket's only some
        time after the client has closed it.
        """
        deadline = time.monotonic() + within
        while True:
            for line in self.log_lines():
                if all(line.get(name) == value for name, value in fields.items()):
                    return line
            if time.monotonic() > deadline:
                raise TimeoutError(f"no access log line with {fields}:\n{self.errors()}")
            await asyncio.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM (nginx's fast shutdown: open WebSockets too), SIGKILL if it lingers."""
        if self.process and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


# == the store ==


def compose_redis(command: list[str], port: int, folder: Path) -> RedisServer:
    """redis-server with the compose service's own arguments, on a free loopback port."""
    assert command and command[0] == "redis-server", command
    return RedisServer(port, arguments=command[1:], folder=folder)
