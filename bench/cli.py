"""`python -m bench`: one run of the whole benchmark (see bench/README.md).

Phases, each set beside the bare agent measured in the same run:
1. capacity: closed loop, N workers, provider delay 0, rounds alternating bare and ours;
2. realistic load: open loop at a fraction (0.4) of the bare agent's capacity,
   callers pausing between steps, provider delay 250 ms;
3. slow provider: the same arrivals, provider delay 2 s;
4. memory per pending verification, SQLite and Redis;
5. (with py-spy) a profile of each agent under the capacity load.

``--compare PATH`` adds another work tree's agent (a patched copy) to the
capacity rounds, so a change can be measured against this tree in one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from bench import memory, profiling, report
from bench.bare_agent import TOOL
from bench.calls import (
    FUNCTION_STEPS,
    KIND_NOOP,
    KINDS,
    SLOW_SECONDS,
    NumberPool,
    Target,
    closed_loop,
    kind_loop,
    new_session,
    open_loop,
    phone_numbers,
)
from bench.processes import (
    PASSWORD,
    ROOT,
    USER,
    Service,
    bare_agent,
    base_url,
    fake_provider,
    our_agent,
    pin,
    redis_server,
    run_async,
    start_redis,
)
from bench.stats import summarize

RESULTS = ROOT / "bench" / "results"
PHASES = ("capacity", "kinds", "realistic", "slow", "memory", "profile")
WITHIN = SLOW_SECONDS  # the slow-provider target's bound, counted in every open-loop phase


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add = parser.add_argument
    add("--workers", type=int, default=16, help="closed-loop workers for capacity (default 16)")
    add("--warmup", type=float, default=2.0, help="seconds of load before a round is recorded (default 2)")
    add("--duration", type=float, default=6.0, help="seconds recorded per capacity round (default 6)")
    add("--rounds", type=int, default=3, help="capacity rounds, bare and ours alternating (default 3)")
    add("--open-duration", type=float, default=20.0, help="seconds of open-loop arrivals (default 20)")
    add("--open-fraction", type=float, default=0.4, help="open-loop rate as a share of bare capacity")
    add("--rate", type=float, default=None, help="open-loop calls per second (overrides --open-fraction)")
    add("--pause", type=float, nargs=2, default=(1.0, 3.0), metavar=("MIN", "MAX"), help="caller pause, s")
    add("--delay", type=float, default=0.25, help="provider delay for the realistic phase (default 0.25)")
    add("--slow-delay", type=float, default=2.0, help="provider delay for the slow phase (default 2)")
    add("--seed", type=int, default=20240607, help="seed of the callers' pauses")
    add("--store", choices=("sqlite", "redis"), default="sqlite", help="our agent's store (default sqlite)")
    add("--log-level", default="INFO", help="our agent's LOG_LEVEL (default INFO, as deployed)")
    add("--profile-seconds", type=float, default=8.0, help="py-spy seconds per agent (default 8)")
    add("--memory-count", type=int, default=5000, help="pending verifications per store (default 5000)")
    add("--redis-url", default=None, help="an existing Redis instead of a throw-away redis-server")
    add("--compare", type=Path, action="append", default=[], help="another work tree to add to capacity")
    add("--no-pin", action="store_true", help="do not pin the agent and the helpers to separate CPUs")
    add("--phases", default=",".join(PHASES), help=f"comma-separated, of {', '.join(PHASES)}")
    add("--output", type=Path, default=None, help="results folder (default bench/results/<time>)")
    args = parser.parse_args(argv)
    args.phases = [phase for phase in args.phases.split(",") if phase]
    unknown = set(args.phases) - set(PHASES)
    if unknown:
        parser.error(f"unknown phase(s) {', '.join(sorted(unknown))}")
    return args


class Run:
    """The processes of one run and the CPUs they may use."""

    def __init__(self, args: argparse.Namespace, work: Path) -> None:
        self.args = args
        self.work = work
        cpus = sorted(os.sched_getaffinity(0))
        pinned = not args.no_pin and len(cpus) >= 2
        # The agent under test gets a core to itself; everything else shares the rest.
        self.agent_cpus = cpus[:1] if pinned else None
        self.helper_cpus = cpus[1:] if pinned else None
        self.layout = (
            f"agents on CPU {cpus[0]}; load generator, fake provider, Redis and py-spy on CPU "
            f"{','.join(map(str, cpus[1:]))}"
            if pinned
            else f"not pinned ({len(cpus)} CPUs shared by every process)"
        )
        self.services: list[Service] = []
        self.redis_url: str | None = args.redis_url
        self.agents: dict[str, Service] = {}
        self.targets: dict[str, Target] = {}

    def start(self, service: Service) -> Service:
        self.services.append(service)
        service.start()
        return service

    def stop(self) -> None:
        for service in reversed(self.services):
            service.stop()


async def _control(session: aiohttp.ClientSession, control_url: str, path: str, **params: str) -> None:
    async with session.post(f"{control_url}{path}", params=params) as answer:
        answer.raise_for_status()


def cpu_probe(agent: Service, fake: Service) -> Callable[[], dict[str, float]]:
    """CPU seconds so far: the agent (and each of its threads), the fake provider, this process."""

    def probe() -> dict[str, float]:
        seconds = {"agent": agent.cpu_seconds(), "fake provider": fake.cpu_seconds()}
        seconds["load generator"] = time.process_time()
        for thread, used in agent.thread_cpu_seconds().items():
            seconds[f"agent thread: {thread}"] = used
        return seconds

    return probe


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


async def measure(run: Run, fake: Service, control_url: str) -> dict[str, Any]:
    args = run.args
    phases = args.phases
    numbers = NumberPool(phone_numbers(20_000))
    results: dict[str, Any] = {}
    pin(os.getpid(), run.helper_cpus)

    async with new_session() as session:

        async def delay(seconds: float) -> None:
            await _control(session, control_url, "/delay", seconds=str(seconds))
            await _control(session, control_url, "/reset")  # forget the codes of earlier phases

        async def capacity(name: str) -> dict[str, Any]:
            await delay(0.0)
            result = await closed_loop(
                session,
                run.targets[name],
                numbers,
                workers=args.workers,
                warmup=args.warmup,
                duration=args.duration,
                probe=cpu_probe(run.agents[name], fake),
            )
            return summarize(result)

        async def open_phase(name: str, provider_delay: float, rate: float) -> dict[str, Any]:
            await delay(provider_delay)
            await asyncio.sleep(1.0)
            result = await open_loop(
                session,
                run.targets[name],
                numbers,
                rate=rate,
                duration=args.open_duration,
                pause=tuple(args.pause),
                seed=args.seed,
                probe=cpu_probe(run.agents[name], fake),
            )
            summary = summarize(result, within=WITHIN)
            summary["provider_delay_s"] = provider_delay if name != "bare" else None
            summary["rate_calls_per_s"] = round(rate, 2)
            return summary

        bare_calls_per_s: float | None = None
        if "capacity" in phases:
            rounds = []
            for index in range(args.rounds):
                figures = {}
                for name in run.targets:
                    _say(f"capacity round {index + 1}/{args.rounds}: {name} ...")
                    figures[name] = await capacity(name)
                rounds.append(figures)
            results["capacity"] = report.capacity_result(rounds, args)
            bare_calls_per_s = results["capacity"]["bare"]["function_requests_per_s"] / len(FUNCTION_STEPS)

        if "kinds" in phases:
            await delay(0.0)
            results["kinds"] = {}
            for name in run.targets:
                results["kinds"][name] = {}
                for kind in KINDS:
                    if kind == KIND_NOOP and name != "bare":
                        continue  # ours has no function that does nothing
                    _say(f"request kinds: {name}, {kind} ...")
                    answered, seconds, used, failed = await kind_loop(
                        session,
                        run.targets[name],
                        kind,
                        numbers,
                        workers=args.workers,
                        warmup=args.warmup,
                        duration=args.duration,
                        probe=cpu_probe(run.agents[name], fake),
                    )
                    results["kinds"][name][kind] = {
                        "requests_per_s": round(answered / seconds, 1),
                        "agent_cpu_us_per_request": round(used["agent"] / answered * 1e6, 1)
                        if answered
                        else None,
                        "agent_cpu_cores": round(used["agent"] / seconds, 3),
                        "failed": failed,
                    }

        if "realistic" in phases or "slow" in phases:
            if args.rate is not None:
                rate = args.rate
            elif bare_calls_per_s is not None:
                rate = bare_calls_per_s * args.open_fraction
            else:
                raise SystemExit("--rate is needed when the capacity phase does not run")
            _say(f"open loop: bare at {rate:.1f} calls/s ...")
            results["open_loop_bare"] = await open_phase("bare", 0.0, rate)
            # Every tree of ours, at the same rate (a compared tree's under "realistic <name>").
            for name in (name for name in run.targets if name != "bare"):
                suffix = "" if name == "ours" else f" {name}"
                if "realistic" in phases:
                    _say(f"open loop: {name} at {rate:.1f} calls/s, provider delay {args.delay:g} s ...")
                    results[f"realistic{suffix}"] = await open_phase(name, args.delay, rate)
                if "slow" in phases:
                    _say(f"open loop: {name} at {rate:.1f} calls/s, provider delay {args.slow_delay:g} s ...")
                    results[f"slow{suffix}"] = await open_phase(name, args.slow_delay, rate)

        if "memory" in phases:
            _say("memory per pending verification ...")
            results["memory"] = await memory_phase(run)

        if "profile" in phases:
            results["profile"] = {}
            for name in ("ours", "bare"):
                _say(f"profile: {name} under the capacity load ...")
                await delay(0.0)
                results["profile"][name] = await profile(run, session, name, numbers)
    return results


async def profile(run: Run, session: aiohttp.ClientSession, name: str, numbers: NumberPool) -> dict[str, Any]:
    """py-spy on one agent while the capacity load runs; the summary of its samples."""
    args = run.args
    output = run.work / f"profile-{name}.txt"
    warmup = 2.0
    load = asyncio.create_task(
        closed_loop(
            session,
            run.targets[name],
            numbers,
            workers=args.workers,
            warmup=warmup,
            duration=args.profile_seconds + 1,
        )
    )
    await asyncio.sleep(warmup)
    spy = profiling.record(run.agents[name].pid, args.profile_seconds, output, run.helper_cpus)
    if spy is None:
        await load
        return {"skipped": "py-spy is not installed (pip install -r requirements-bench.txt)"}
    _, errors = await asyncio.to_thread(spy.communicate)
    result = await load
    if spy.returncode != 0 or not output.exists():
        return {"skipped": f"py-spy failed: {errors.decode(errors='replace').strip()[-500:]}"}
    summary = profiling.summarize(output)
    summary["file"] = str(output)
    answered = sum(len(result.recorder.samples.get(step, [])) for step in FUNCTION_STEPS)
    summary["function_requests_per_s_while_sampled"] = round(answered / result.seconds, 1)
    return summary


async def memory_phase(run: Run) -> dict[str, Any]:
    numbers = phone_numbers(run.args.memory_count, seed=99)
    figures: dict[str, Any] = {
        "sqlite": {
            "through_engine": await memory.sqlite_per_verification(numbers, through_engine=True),
            "record_only": await memory.sqlite_per_verification(numbers, through_engine=False),
        }
    }
    url = run.redis_url
    if url is None:
        figures["redis"] = {"skipped": "redis-server is not installed and no --redis-url was given"}
    else:
        figures["redis"] = {
            "through_engine": await memory.redis_per_verification(url, numbers, through_engine=True),
            "record_only": await memory.redis_per_verification(url, numbers, through_engine=False),
        }
    return figures


def start_processes(run: Run) -> tuple[Service, str]:
    """Redis (if needed), the fake provider, the bare agent, ours and any trees to compare."""
    args, output = run.args, run.work
    if (args.store == "redis" or "memory" in args.phases) and run.redis_url is None:
        found = redis_server(output, run.helper_cpus)
        if found is not None:
            service, run.redis_url = found
            run.services.append(service)
            start_redis(service, run.redis_url)
    if args.store == "redis" and run.redis_url is None:
        raise SystemExit("--store redis needs redis-server on PATH or --redis-url")
    redis_url = run.redis_url if args.store == "redis" else None
    fake, fake_port, control_port = fake_provider(output, 0.0, run.helper_cpus)
    run.start(fake)
    control_url = f"http://127.0.0.1:{control_port}"
    auth = aiohttp.BasicAuth(USER, PASSWORD)

    bare = run.start(bare_agent(output, run.agent_cpus))
    run.agents["bare"] = bare
    run.targets["bare"] = Target("bare", base_url(bare), auth, TOOL, TOOL)
    trees = [("ours", ROOT)] + [(f"ours@{tree.resolve().name}", tree.resolve()) for tree in args.compare]
    for name, root in trees:
        agent = run.start(
            our_agent(output, fake_port, redis_url, run.agent_cpus, args.log_level, name=name, root=root)
        )
        run.agents[name] = agent
        run.targets[name] = Target(name, base_url(agent), auth, "send_mfa", "verify_mfa", control_url)
    return fake, control_url


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    output = args.output or RESULTS / time.strftime("%Y%m%d-%H%M%S")
    output.mkdir(parents=True, exist_ok=True)
    run = Run(args, output)
    _say(f"results and logs in {output}; CPU layout: {run.layout}")
    started = time.monotonic()
    try:
        fake, control_url = start_processes(run)
        results = run_async(measure(run, fake, control_url))
        document = {
            "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "seconds": round(time.monotonic() - started, 1),
            "machine": {"cpus": os.cpu_count(), "layout": run.layout, "python": sys.version.split()[0]},
            "settings": {
                key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
            },
            "store": args.store,
            "agent_rss_bytes": {name: agent.rss_bytes() for name, agent in run.agents.items()},
            **results,
        }
    finally:
        run.stop()
    document["agent_log_bytes"] = {
        name: agent.log_path.stat().st_size if agent.log_path.exists() else 0
        for name, agent in run.agents.items()
    }
    (output / "results.json").write_text(json.dumps(document, indent=2, default=str))
    print(report.render(document))
    print(f"\nJSON: {output / 'results.json'}")
    return 0
