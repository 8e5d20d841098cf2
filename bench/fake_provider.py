"""The fake SignalWire MFA API (tests/fakes) in a process of its own, for the benchmark.

Two listeners: the fake itself (Basic auth, the real API's contract, a delay
per request), and a control port the load generator uses to read the code
sent to a number and to change the delay between phases. The control port
is not delayed and never seen by the agent.

    python -m bench.fake_provider --port 8099 --control-port 8098 --delay 0.25
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import signal

from aiohttp import web

from tests.fakes.signalwire_api import FakeSignalWire, make_fake_signalwire

PROJECT_ID = "test-project"
API_TOKEN = "test-token"  # noqa: S105 - the fake's own test credential


class CodeIndex:
    """The newest code sent to each number, read incrementally from ``fake.sent``."""

    def __init__(self, fake: FakeSignalWire) -> None:
        self._fake = fake
        self._seen = 0
        self._by_number: dict[str, str] = {}

    def code_for_number(self, number: str) -> str | None:
        sent = self._fake.sent
        for item in sent[self._seen :]:
            self._by_number[item["to"]] = item["code"]
        self._seen = len(sent)
        return self._by_number.get(number)

    def reset(self) -> None:
        self._fake.sent.clear()
        self._fake.requests.clear()
        self._fake.codes.clear()
        self._by_number.clear()
        self._seen = 0


def control_app(fake: FakeSignalWire) -> web.Application:
    """Routes for the load generator only: read codes, set the delay, count, forget."""
    index = CodeIndex(fake)

    async def code(request: web.Request) -> web.Response:
        found = index.code_for_number(request.query.get("to", ""))
        if found is None:
            return web.json_response({"error": "no code sent to that number"}, status=404)
        return web.json_response({"code": found})

    async def delay(request: web.Request) -> web.Response:
        fake.delay = float(request.query["seconds"])
        return web.json_response({"delay": fake.delay})

    async def stats(_: web.Request) -> web.Response:
        return web.json_response({"requests": len(fake.requests), "sent": len(fake.sent)})

    async def reset(_: web.Request) -> web.Response:
        index.reset()
        gc.collect()
        return web.json_response({"reset": True})

    app = web.Application()
    app.router.add_get("/code", code)
    app.router.add_post("/delay", delay)
    app.router.add_get("/stats", stats)
    app.router.add_post("/reset", reset)
    return app


async def serve(port: int, control_port: int, delay: float) -> None:
    fake = make_fake_signalwire(PROJECT_ID, API_TOKEN)
    fake.delay = delay
    runners = []
    for app, where in ((fake.app, port), (control_app(fake), control_port)):
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", where, backlog=4096).start()
        runners.append(runner)
    print(f"fake SignalWire on http://127.0.0.1:{port} (control {control_port})", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for runner in runners:
        with contextlib.suppress(Exception):
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--control-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.0, help="seconds before each API answer")
    args = parser.parse_args()
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    asyncio.run(serve(args.port, args.control_port, args.delay))


if __name__ == "__main__":
    main()
