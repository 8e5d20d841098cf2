"""py-spy on the agent under load, and what its samples say.

``py-spy record --nonblocking --threads --function --format raw`` writes one
line per distinct stack, ``frame;frame;...;leaf count``, root first (the file
opens in speedscope, or in flamegraph.pl for an SVG). Only samples of a
thread that was running are kept (no ``--idle``), so the shares below are
shares of the CPU the agent spent. The event loop's thread is where requests
are served, SQLite statements included; the SQLite store's one thread runs
checkpoints, purges and the jobs that must wait for another process's lock.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from bench.processes import pin

# Where the time goes: a sample counts for every category whose frames are on its stack
# (frames are joined root first, so "A.*B" means B called, at any depth, under A).
CATEGORIES: list[tuple[str, str]] = [
    ("Starlette's router and FastAPI's request handling", r"Router\.__call__ \(starlette"),
    ("SWML document (POST /, once per call)", r"_handle_root_request|answer_swml"),
    ("  rendering it (the SDK's render, or its document filled)", r"_render_swml"),
    (
        "SWAIG request (POST /swaig, SDK or adapter, and handler)",
        r"_handle_swaig_request \((signalwire|sdk_adapter)",
    ),
    ("  SDK: body read + JSON parse", r"_read_body_with_limit|Request\.json \(starlette"),
    ("  SDK: validate_args (jsonschema_rs fails, import retried)", r"validate_args"),
    ("    of which the failed import", r"validate_args.*_find_and_load"),
    ("  SDK: per-call token check", r"_tool_token_rejection"),
    ("  our handler (functions/ and below)", r"MfaFunctions\._serve"),
    ("    repeats: claim + complete in the store", r"Repeats\.(once|_run_owned).*Store\.(claim|complete)"),
    ("    limits: counters in the store", r"Limits\.[a-z_]+ \(engine/limits"),
    ("    every store call (engine/stores/)", r"\(engine/stores/"),
    # engine/http1.py's answers are parsed in the loop's callbacks, under no provider frame.
    ("    provider: HTTP to the MFA API", r"\(engine/(providers/|signalwire_rest\.py|http1\.py)"),
    ("    events: publish, live, metrics", r"EventPublisher\.publish"),
    ("    pydantic", r"\(pydantic"),
    ("    phonenumbers", r"\(phonenumbers/"),
    ("logging (stdlib + structlog), anywhere", r"\((logging|structlog)/"),
    ("  SDK INFO lines (request_successful, function_executed_successfully)", r"BoundLogger\.info"),
    ("json encode/decode, anywhere", r"\(json/"),
]


def record(
    pid: int, seconds: float, output: Path, cpus: Iterable[int] | None, rate: int = 100, blocking: bool = True
) -> subprocess.Popen[bytes] | None:
    """Start py-spy on ``pid`` for ``seconds``; None when py-spy is not installed."""
    # bench/run.sh runs .venv/bin/python without activating the venv: look beside it first.
    binary = shutil.which("py-spy", path=os.pathsep.join([str(Path(sys.executable).parent), os.defpath]))
    binary = binary or shutil.which("py-spy")
    if binary is None:
        return None
    process = subprocess.Popen(
        [
            binary,
            "record",
            "--pid",
            str(pid),
            "--duration",
            str(int(seconds)),
            "--rate",
            str(rate),
            *([] if blocking else ["--nonblocking"]),
            "--threads",
            "--function",
            "--format",
            "raw",
            "--output",
            str(output),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    pin(process.pid, cpus)
    return process


_THREAD = re.compile(r"^(?:process \d+:\"[^\"]*\";)?thread \((0x[0-9A-Fa-f]+)\)")


def read_stacks(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text(errors="replace").splitlines():
        body, _, count = line.rpartition(" ")
        if body and count.isdigit():
            stacks.append((body.split(";"), int(count)))
    return stacks


def _frame(frame: str) -> str:
    """``func (path/file.py:line)`` without the line, so one function is one row."""
    return re.sub(r":\d+\)$", ")", frame)


# Who owns the innermost frame of a sample: one owner per sample, so these add up to 100%.
# Native code has no frame of its own: uvloop's loop (socket I/O, httptools parsing,
# callbacks) shows up as its caller, Runner.run.
LAYERS: list[tuple[str, str]] = [
    ("event loop, native (uvloop I/O, httptools, C callbacks)", r"^Runner\.run \(asyncio/runners\.py"),
    ("asyncio (Python part: locks, futures, tasks)", r"\(asyncio/"),
    ("uvicorn", r"\(uvicorn/"),
    ("starlette / fastapi", r"\((starlette|fastapi)/"),
    ("anyio (Starlette's task groups and streams)", r"\(anyio/"),
    ("signalwire SDK", r"\(signalwire/"),
    ("logging (stdlib + structlog)", r"\((logging|structlog)/"),
    ("json", r"\(json/"),
    ("pydantic", r"\(pydantic"),
    ("aiohttp client (+ yarl, multidict)", r"\((aiohttp|yarl|multidict)/"),
    ("sqlite3 (event-loop side)", r"\(sqlite3/"),
    ("phonenumbers", r"\(phonenumbers/"),
    (
        "our code (agent.py, sdk_adapter.py, functions/, engine/, api/, web/)",
        r"\((agent\.py|sdk_adapter\.py|functions/|engine/|api/|web/|config/)",
    ),
]


def _layer(leaf: str) -> str:
    for label, pattern in LAYERS:
        if re.search(pattern, leaf):
            return label
    return "other: " + leaf.split(" (", 1)[-1].split("/", 1)[0].rstrip(")")


def summarize(path: Path, top: int = 20) -> dict[str, Any]:
    """Shares of the event loop thread's samples: by layer (exclusive), category and function.

    Other threads are only counted: py-spy takes the SQLite store's thread (and
    uvloop's) blocked in ``SimpleQueue.get`` for a running thread, so their CPU comes from /proc instead.
    """
    stacks = read_stacks(path)
    by_thread: Counter[str] = Counter()
    main: list[tuple[list[str], int]] = []
    for frames, count in stacks:
        thread = frames[0] if frames and frames[0].startswith(("thread", "process")) else "thread (?)"
        by_thread[thread] += count
        if "MainThread" in thread:
            main.append(([frame for frame in frames[1:]], count))
    total = sum(count for _, count in main)
    if not total:
        return {"samples": 0, "by_thread": dict(by_thread)}
    inclusive: Counter[str] = Counter()
    leaf: Counter[str] = Counter()
    layers: Counter[str] = Counter()
    categories: Counter[str] = Counter()
    for frames, count in main:
        named = [_frame(frame) for frame in frames]
        for name in set(named):
            inclusive[name] += count
        if named:
            leaf[named[-1]] += count
            layers[_layer(named[-1])] += count
        joined = ";".join(frames)
        for label, pattern in CATEGORIES:
            if re.search(pattern, joined):
                categories[label] += count

    def share(counter: Counter[str], limit: int | None = None) -> list[dict[str, Any]]:
        return [
            {"what": name, "samples": count, "percent": round(100 * count / total, 1)}
            for name, count in counter.most_common(limit)
        ]

    return {
        "samples": total,
        "by_thread": dict(by_thread),
        "layers": share(layers),
        "categories": [
            {
                "what": label,
                "samples": categories[label],
                "percent": round(100 * categories[label] / total, 1),
            }
            for label, _ in CATEGORIES
        ],
        "top_inclusive": share(inclusive, top),
        "top_self": share(leaf, top),
    }
