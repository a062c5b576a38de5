"""A seeded storm of every control call, through the API, the REST API and the CLI, at random
trees run by real ``culm worker`` processes that are killed with ``kill -9`` and restarted.

One run (:func:`run_storm`) on PostgreSQL + Redis or MariaDB + RabbitMQ:

* builds rich random trees (``storm_trees.TreeMaker(rich=True)``: nested parallel, exclusive and
  conditional parallel gateways with their converges, subprocesses, graph loops and node loops,
  polling, callback and multiple-callback activities, failing, raising and error-ignorable ones,
  node timeouts, executable end events) and starts them on ``culm worker`` processes that load the
  components through ``$CULM_IMPORTS``;
* fires every control operation (:data:`OPS`) at random moments, now and then the same call from
  several threads at once (a burst), from threads of this process (the API), from a second process,
  through a real ``culm serve`` (REST) and through ``culm`` commands (CLI), while ``culm status``
  reads the pipelines;
* kills a random worker with ``kill -9`` every few seconds and starts another;
* then checks: every refused call answered clearly (the API: ``result=False`` and a message that
  is no unexpected error; REST: 404/409/413/422 with a problem text, never a 5xx; CLI: exit 3 or 5
  with a message, never a traceback), the never-stuck checker (:mod:`culm.core.invariants`) on
  every pipeline after the storm and after each operator round until all have ended, ``culm
  status --json`` and ``GET /api/v1/pipelines/ID`` agreeing with the API, and every ``execute``
  (and end event) that ran twice for one node version was first in flight in a killed process,
  at most the killed worker's user-code threads per kill.

CI runs a bounded variant (``test_storm_driver.py``). A longer run, e.g. five seeds of 90 s with
30 pipelines on both backends::

    .venv/bin/python tests/integration/storm_driver.py --backend both --seeds 1-5 --seconds 90 \\
        --pipelines 30

``--cli-only N --relay-grace 3600 --kill-every 0 0``: every control call through ``culm``
processes from N threads (one firing random calls, the others an operator's, see :func:`needed`),
with no kill and a relay that never looks in time, so each command's work must reach the workers
through its own publish. Add ``--min-calls 150``: on a loaded machine a ``culm`` process takes
seconds, and a storm of 30 s made a dozen calls; the CLI callers then go on until they made 150
(at most ``--max-seconds``).

``--freeze``: half the kills are a freeze instead: the worker is stopped with ``SIGSTOP`` for 4-6 s
(past ``CULM_WORKER_DEAD_AFTER``: the others bury it and take its tasks over) and woken with
``SIGCONT``; what it had in flight may run again, as after a kill, and nothing else.

(``--help`` for the rest; ``--harness`` starts the workers exactly as the acceptance harness does:
``culm worker --db URL --broker URL``, default leases and concurrency, so a kill's work is taken
over only after the default 30 s lease). Every random choice comes from the seed; the engine's own
timing still varies between runs, so a failing seed shows its last calls.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import storm_trees
from storm_trees import Forest

from culm import api

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
PATHS = os.pathsep.join((str(HERE), str(HERE.parent), str(REPO)))

# op -> weight. "burst": one call fired from several threads at once; "breathe": a short pause.
OPS = {"pause": 5, "resume": 8, "pause_sub": 3, "resume_sub": 5, "appoint": 5, "unappoint": 7, "retry": 4,
       "retry_ok": 8, "skip": 6, "force_fail": 5, "callback": 9, "callback_fail": 3, "multi": 6, "multi_done": 5,
       "skip_eg": 3, "skip_cpg": 3, "retry_sub": 2, "context": 3, "loop_times": 3, "revoke": 0.1, "burst": 3,
       "breathe": 6}
# Retry data: makes s_flaky and s_raise succeed and s_poll finish at its first poll.
RETRY_OK = {"ok": True, "polls": 1, "ms": 0}
# Clear answers besides success: the contract's refusals, and a database the server could not
# reach or use (REST 503, CLI exit 4: a PostgreSQL out of connections, shared with other tests).
REFUSED_REST = (404, 409, 413, 422, 503)
REFUSED_CLI = (3, 4, 5)


@dataclass
class Call:
    """One control call: ``op`` at ``target`` with its arguments."""

    op: str
    target: str
    args: dict[str, Any] = field(default_factory=dict)


def pick(forest: Forest, rng: random.Random, graphs: dict[str, Any]) -> Call | None:
    """A random call at the forest (None: "breathe", or "burst" left to the caller)."""
    op = rng.choices(list(OPS), weights=list(OPS.values()))[0]
    act = rng.choice(forest.multis if op in ("multi", "multi_done") and forest.multis else forest.activities)
    if op in ("pause", "resume", "revoke"):
        return Call(op, rng.choice(forest.pipes))
    if op in ("pause_sub", "resume_sub", "retry_sub"):
        return Call(op, rng.choice(forest.subs)) if forest.subs else None
    if op in ("appoint", "unappoint", "retry", "skip", "force_fail"):
        return Call(op, act)
    if op == "retry_ok":
        return Call(op, act, {"data": dict(RETRY_OK)})
    if op in ("callback", "callback_fail", "multi", "multi_done"):
        payload = {"callback": {"ok": True}, "callback_fail": {"ok": False}, "multi": {"ok": True, "ms": 10},
                   "multi_done": {"done": True}}[op]
        return Call("callback", act, {"data": {**payload, "n": rng.randrange(1000)}})
    if op == "context":
        return Call(op, rng.choice(forest.roots), {"values": {"${mark}": rng.randrange(100)}})
    if op == "loop_times":
        return Call(op, rng.choice(forest.loops), {"times": rng.randint(1, 4)}) if forest.loops else None
    if op in ("skip_eg", "skip_cpg"):
        kind = "ExclusiveGateway" if op == "skip_eg" else "ConditionalParallelGateway"
        gws = [g for g in forest.gateways
               if forest.gateways[g] in graphs and graphs[forest.gateways[g]].nodes[g].type == kind]
        if not gws:
            return None
        gw = rng.choice(gws)
        node = graphs[forest.gateways[gw]].nodes[gw]
        if op == "skip_eg":
            return Call(op, gw, {"flow": rng.choice(node.flows)})
        flows = rng.sample(list(node.flows), rng.randint(1, len(node.flows)))
        return Call(op, gw, {"flows": flows, "converge": node.converge_gateway_id})
    return Call(op, "")  # burst, breathe


# -- transports ---------------------------------------------------------------------------------


def by_api(rt: Any, call: Call) -> tuple[bool, str]:
    """The call through :mod:`culm.api`: (accepted, message); a raise is a finding too."""
    t, a = call.target, call.args
    fns: dict[str, Callable[[], Any]] = {
        "pause": lambda: api.pause_pipeline(rt, t), "resume": lambda: api.resume_pipeline(rt, t),
        "pause_sub": lambda: api.pause_pipeline(rt, t), "resume_sub": lambda: api.resume_pipeline(rt, t),
        "revoke": lambda: api.revoke_pipeline(rt, t), "appoint": lambda: api.pause_node_appoint(rt, t),
        "unappoint": lambda: api.resume_node_appoint(rt, t), "retry": lambda: api.retry_node(rt, t),
        "retry_ok": lambda: api.retry_node(rt, t, data=a["data"]), "skip": lambda: api.skip_node(rt, t),
        "force_fail": lambda: api.forced_fail_activity(rt, t, "forced by the storm"),
        "callback": lambda: api.callback(rt, t, _version(rt, t), a["data"]),
        "skip_eg": lambda: api.skip_exclusive_gateway(rt, t, a["flow"]),
        "skip_cpg": lambda: api.skip_conditional_parallel_gateway(rt, t, a["flows"], a["converge"]),
        "retry_sub": lambda: api.retry_subprocess(rt, t),
        "context": lambda: api.update_context_values(rt, t, a["values"]),
        "loop_times": lambda: api.update_node_loop_times(rt, t, a["times"]),
    }
    try:
        res = fns[call.op]()
    except Exception as exc:  # noqa: BLE001 - the finding: the contract says a refusal never raises
        return False, f"RAISED {type(exc).__name__}: {exc}"
    if res.result:
        return True, ""
    message = res.message or ""
    if not message.strip() or "Traceback" in message or " failed: " in message:
        return False, f"UNCLEAR {message[:300]!r}"
    if not isinstance(res.data, (dict, list, type(None), str)) or not hasattr(res, "exc"):
        return False, f"UNCLEAR shape {res!r}"[:300]
    return False, message


def _version(rt: Any, node_id: str) -> str:
    res = api.get_children_states(rt, node_id)
    return (res.data or {}).get(node_id, {}).get("version", "v-none")


class Rest:
    """Calls through a running ``culm serve`` (``httpx``, an operator's token)."""

    def __init__(self, url: str, token: str) -> None:
        import httpx

        self.url, self.client = url, httpx.Client(headers={"Authorization": f"Bearer {token}"}, timeout=60)

    def request(self, call: Call) -> tuple[str, str, dict[str, Any] | None]:
        t, a = call.target, call.args
        node, pipe = f"/api/v1/nodes/{t}", f"/api/v1/pipelines/{t}"
        return {
            "pause": ("POST", pipe + "/pause", None), "resume": ("POST", pipe + "/resume", None),
            "pause_sub": ("POST", pipe + "/pause", None), "resume_sub": ("POST", pipe + "/resume", None),
            "revoke": ("POST", pipe + "/revoke", None), "appoint": ("POST", node + "/pause", None),
            "unappoint": ("POST", node + "/resume", None), "retry": ("POST", node + "/retry", None),
            "retry_ok": ("POST", node + "/retry", {"inputs": a.get("data")}), "skip": ("POST", node + "/skip", None),
            "force_fail": ("POST", node + "/forced-fail", {"ex_data": "forced by the REST storm"}),
            "callback": ("POST", node + "/callback", {"data": a.get("data")}),
            "skip_eg": ("POST", node + "/skip-exclusive-gateway", {"flow_id": a.get("flow")}),
            "skip_cpg": ("POST", node + "/skip-conditional-parallel-gateway",
                         {"flow_ids": a.get("flows"), "converge_gateway_id": a.get("converge")}),
            "retry_sub": ("POST", node + "/retry-subprocess", None),
            "context": ("POST", pipe + "/context", {"context_values": a.get("values")}),
            "loop_times": ("POST", node + "/loop-times", {"loop_times": a.get("times")}),
        }[call.op]

    def __call__(self, call: Call) -> tuple[bool, str]:
        method, path, body = self.request(call)
        try:
            got = self.client.request(method, self.url + path, json=body)
        except Exception as exc:  # noqa: BLE001 - a dropped connection is a finding
            return False, f"RAISED {type(exc).__name__}: {exc}"
        if got.status_code == 200:
            return True, ""
        try:
            problem = got.json()
        except ValueError:
            problem = {}
        text = str(problem.get("detail") or problem.get("title") or "")
        if got.status_code not in REFUSED_REST or not text.strip() or "Traceback" in got.text:
            return False, f"UNCLEAR HTTP {got.status_code} {got.text[:300]!r}"
        return False, f"{got.status_code} {text}"

    def get(self, path: str) -> Any:
        return self.client.get(self.url + path)


class Cli:
    """Calls through ``culm`` commands (``--no-follow``: the workers go on with the work; with
    ``follow``, a random half without it: on a cluster the command then records and returns too,
    through the runtime it opens to run work)."""

    def __init__(self, db: str, broker: str, prefix: str, follow: random.Random | None = None) -> None:
        self.db, self.cluster = ["--db", db], ["--broker", broker, "--prefix", prefix]
        self.env = {**os.environ, "PYTHONPATH": PATHS}
        self.follow = follow

    def argv(self, call: Call) -> list[str]:
        t, a = call.target, call.args
        return {
            "pause": ["pause", t], "resume": ["resume", t], "pause_sub": ["pause", t], "resume_sub": ["resume", t],
            "revoke": ["revoke", t], "appoint": ["pause-node", t], "unappoint": ["resume-node", t],
            "retry": ["retry", t], "retry_ok": ["retry", t, "--data", json.dumps(a.get("data"))], "skip": ["skip", t],
            "force_fail": ["force-fail", t, "--ex-data", "forced by the CLI storm"],
            "callback": ["callback", t, "--data", json.dumps(a.get("data"))],
            "skip_eg": ["skip-exclusive-gateway", t, "--flow", str(a.get("flow"))],
            "skip_cpg": ["skip-conditional-parallel-gateway", t, "--flows", *a.get("flows", []),
                         "--converge", str(a.get("converge"))],
            "retry_sub": ["retry-subprocess", t],
            "context": ["set-context", t, *(f"{k[2:-1]}={v}" for k, v in a.get("values", {}).items())],
            "loop_times": ["loop-times", t, str(a.get("times"))],
        }[call.op]

    def run(self, *argv: str, cluster: bool = False) -> subprocess.CompletedProcess[str]:
        extra = [*self.db, *(self.cluster if cluster else ())]
        return subprocess.run([sys.executable, "-m", "culm", *argv, *extra], capture_output=True, text=True,
                              timeout=120, env=self.env, cwd=REPO)

    def __call__(self, call: Call) -> tuple[bool, str]:
        argv = self.argv(call)
        follow = self.follow is not None and self.follow.random() < 0.5
        done = self.run(*argv[:2], *(() if follow else ("--no-follow",)), *argv[2:], cluster=True)
        if done.returncode == 0:
            return True, ""
        text = (done.stderr or done.stdout).strip()
        if done.returncode not in REFUSED_CLI or not text or "Traceback" in done.stderr:
            return False, f"UNCLEAR exit {done.returncode} {text[-400:]!r}"
        return False, f"exit {done.returncode} {text[:200]}"


# -- the storm ----------------------------------------------------------------------------------


@dataclass
class Tally:
    """Calls fired, refused and unclear, per transport."""

    fired: collections.Counter[str] = field(default_factory=collections.Counter)
    refused: collections.Counter[str] = field(default_factory=collections.Counter)
    unclear: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, how: str, call: Call, ok: bool, message: str, forest: Forest) -> None:
        with self.lock:
            self.fired[how] += 1
            if not ok:
                self.refused[how] += 1
            if message.startswith(("UNCLEAR", "RAISED")):
                self.unclear.append(f"{how} {call.op} {call.target} {call.args}: {message}")
        forest.note(f"{how} {call.op} {call.target} -> {ok} {message[:160]}")


Until = float | Callable[[], bool]


def going(until: Until) -> bool:
    """Whether the callers go on: before ``until`` (monotonic), or while ``until()`` says so."""
    return until() if callable(until) else time.monotonic() < until


def fire_loop(forest: Forest, graphs: dict[str, Any], rng: random.Random, send: Callable[[Call], tuple[bool, str]],
              how: str, tally: Tally, until: Until, burst: int = 0, pause: float = 0.05) -> None:
    """Fire random calls through ``send`` while :func:`going`; a burst fires one call from
    ``burst`` threads at once."""
    while going(until):
        call = pick(forest, rng, graphs)
        if call is None or call.op == "breathe":
            time.sleep(pause)
            continue
        if call.op == "burst":
            if not burst:
                continue
            call = None
            while call is None or call.op in ("burst", "breathe", "revoke"):
                call = pick(forest, rng, graphs)
            barrier = threading.Barrier(burst)

            def one(c: Call = call, b: threading.Barrier = barrier) -> None:
                b.wait(30)
                tally.add(how + "-burst", c, *send(c), forest)

            threads = [threading.Thread(target=one) for _ in range(burst)]
            for t in threads:
                t.start()
            for t in threads:
                t.join(120)
            continue
        tally.add(how, call, *send(call), forest)


def needed(rt: Any, root: str, graph: Any, rng: random.Random) -> Call | None:
    """A call an operator would make at pipeline ``root`` now, as its states read (the storm's
    random calls are mostly refused: these are mostly accepted, so each makes work to publish)."""
    res = api.get_pipeline_states(rt, root)
    if not res.result:
        return None
    tree = res.data[root]
    if tree["state"] in ("FINISHED", "REVOKED"):
        return None
    calls = [Call("resume", root)] if tree["state"] == "SUSPENDED" else [Call("pause", root)]
    for node_id, st in tree["children"].items():
        node = graph.nodes.get(node_id)
        if node is None:
            continue
        if st["state"] == "FAILED" and node.type == "ServiceActivity":
            calls += [Call("retry_ok", node_id, {"data": dict(RETRY_OK)}), Call("skip", node_id)]
        elif st["state"] == "FAILED" and node.type in ("ExclusiveGateway", "ConditionalParallelGateway"):
            op = "skip_eg" if node.type == "ExclusiveGateway" else "skip_cpg"
            calls.append(Call(op, node_id, {"flow": rng.choice(node.flows)} if op == "skip_eg" else
                              {"flows": list(node.flows), "converge": node.converge_gateway_id}))
        elif st["state"] == "SUSPENDED":
            calls.append(Call("resume_sub" if node.type == "SubProcess" else "unappoint", node_id))
        elif st["state"] == "RUNNING" and node.type == "ServiceActivity":
            calls.append(Call("callback", node_id, {"data": {"ok": True, "done": True, "n": rng.randrange(1000)}}))
    # The pause is one of many: a pipeline is mostly moved on, now and then held.
    return rng.choice(calls[1:] or calls) if rng.random() > 0.15 else calls[0]


def operator_loop(rt: Any, forest: Forest, graphs: dict[str, Any], rng: random.Random,
                  send: Callable[[Call], tuple[bool, str]], tally: Tally, until: Until) -> None:
    """While :func:`going`: pick a started pipeline, make the call its states need (:func:`needed`)
    through ``send``."""
    while going(until):
        started = sorted(graphs)
        call = needed(rt, root, graphs[root], rng) if (root := rng.choice(started) if started else "") else None
        if call is None:
            time.sleep(0.2)
            continue
        tally.add("cli-op", call, *send(call), forest)


def graphs_of(rt: Any, roots: list[str]) -> dict[str, Any]:
    """The graphs of the started ones of ``roots``."""
    with rt.engine.store.reading() as unit:
        known = set(unit.get_pipelines(roots))
        return {root: rt.engine.graph(root, unit) for root in roots if root in known}


def starter(rt: Any, forest: Forest, graphs: dict[str, Any], later: list[dict[str, Any]], until: float,
            tally: Tally) -> None:
    """Start the trees of ``later`` one by one, spread over the storm."""
    for i, tree in enumerate(later):
        time.sleep(max(0.0, (until - time.monotonic()) / (len(later) - i + 1)))
        res = api.run_pipeline(rt, tree, cycle_tolerate=True)
        tally.add("start", Call("start", tree["id"]), res.result, "" if res.result else f"UNCLEAR {res.message}",
                  forest)
        graphs.update(graphs_of(rt, [tree["id"]]))


def group_pids(pgid: int) -> set[str]:
    """The process ids of process group ``pgid`` (a worker and its pool processes)."""
    pids = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[2]) == pgid:
                pids.add(entry)
    return pids


@dataclass
class Kills:
    """The workers killed so far: the process ids of each kill."""

    pids: list[set[str]] = field(default_factory=list)

    def of(self, pid: str) -> int | None:
        return next((i for i, group in enumerate(self.pids) if pid in group), None)


def killer(backend: Any, rng: random.Random, until: float, every: tuple[float, float], kills: Kills,
           forest: Forest, freeze: bool = False) -> None:
    """``kill -9`` a random live worker every ``every`` seconds (a random span) and start another.

    ``freeze``: every other time (at random) the worker is frozen instead, ``SIGSTOP`` for 4-6 s
    (longer than ``CULM_WORKER_DEAD_AFTER``, so it is buried and its leases freed, and, with the
    test leases of 3 s, longer than a lease), then woken with ``SIGCONT``: its calls in flight run
    to their end and may have run again elsewhere, as a kill's (counted as one)."""
    while True:
        time.sleep(rng.uniform(*every))
        if time.monotonic() >= until:
            return
        alive = backend.alive()
        if not alive:
            continue
        index = rng.choice(alive)
        pids = group_pids(backend.workers[index].pid)
        if freeze and rng.random() < 0.5:
            span = rng.uniform(4.0, 6.0)
            kills.pids.append(pids)
            forest.note(f"SIGSTOP worker {index} (pids {sorted(pids)}) for {span:.1f} s")
            os.killpg(backend.workers[index].pid, signal.SIGSTOP)
            try:
                time.sleep(span)
            finally:
                os.killpg(backend.workers[index].pid, signal.SIGCONT)
            forest.note(f"SIGCONT worker {index}")
            continue
        backend.kill_worker(index)
        kills.pids.append(pids)
        forest.note(f"KILL -9 worker {index} (pids {sorted(pids)})")
        backend.start_workers(1, timeout=60)


def reruns(log: Path, kills: Kills, bound: int) -> tuple[int, list[str]]:
    """How many ``execute``/``end`` calls ran again, and what broke the rule: a call that ran again
    was first run in a killed process, and no kill re-ran more than ``bound`` calls."""
    runs: dict[tuple[str, str, str], list[str]] = collections.defaultdict(list)
    if log.exists():
        for line in log.read_text().splitlines():
            kind, node_id, version, pid = line.split()
            if kind in ("execute", "end"):
                runs[(kind, node_id, version)].append(pid)
    per_kill: collections.Counter[int] = collections.Counter()
    broken: list[str] = []
    again = 0
    for key, pids in runs.items():
        for pid in pids[:-1]:
            again += 1
            k = kills.of(pid)
            if k is None:
                broken.append(f"{key} ran again; its earlier run in process {pid} was not killed: {pids}")
            else:
                per_kill[k] += 1
    broken += [f"kill {k} re-ran {n} calls (bound {bound})" for k, n in per_kill.items() if n > bound]
    return again, broken


def relayed_lines(backend: Any) -> list[str]:
    """The relay's lines in the backend's worker logs that relayed overdue tasks (work whose
    message never led to a run; not timers whose submitter had not marked them published yet)."""
    return [line for i in range(len(backend.workers)) for line in backend.worker_log(i).splitlines()
            if "relayed" in line and "task(s)" in line and " 0 overdue" not in line]


def queue_prefix(backend: Any) -> str:
    """The queue name prefix the backend's workers use (a harness's workers: the default)."""
    from backends import HarnessBackend

    return "culm" if isinstance(backend, HarnessBackend) else str(backend.prefix)


def serve(backend: Any, workdir: Path) -> tuple[subprocess.Popen[bytes], Rest]:
    """A real ``culm serve`` on the backend, and a REST caller with an operator's token."""
    from support import free_port

    from culm.web.tokens import TokenStore

    rt = backend.runtime()
    token, _ = TokenStore(rt.token_table()).create("operator", "storm driver")
    port = free_port()
    with open(workdir / "serve.log", "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "culm", "serve", "--db", backend.db_url, "--broker",
                                 backend.broker_url, "--prefix", queue_prefix(backend), "--port", str(port)],
                                env={k: v for k, v in os.environ.items() if k != "CULM_IMPORTS"}, stdout=out,
                                stderr=subprocess.STDOUT, cwd=REPO)
    rest = Rest(f"http://127.0.0.1:{port}", token)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if rest.get("/api/v1/me").status_code == 200:
                return proc, rest
        except Exception:  # noqa: BLE001,S110 - not up yet
            pass
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    raise AssertionError(f"culm serve did not answer:\n{(workdir / 'serve.log').read_text()[-3000:]}")


def diagnose(rt: Any, forest: Forest, text: str) -> str:
    """For each node or process id in ``text``: what it is, its state, its processes, the feed's
    transitions of the node and every call fired at it."""
    import re

    from culm.core.snapshots import read_snapshots

    ids = list(dict.fromkeys(re.findall(r"\b[0-9a-z][0-9a-f]{31,32}\b", text)))
    snaps = read_snapshots(rt.engine, forest.roots)
    out = []
    for root, snap in snaps.items():
        procs = {p.id: p for p in snap.processes}
        for i in ids:
            if i in procs:
                ids.append(procs[i].current_node_id)
                out.append(f"process {i}: {procs[i]}")
            if i in snap.graph.nodes or i == root:
                node = snap.graph.nodes.get(i)
                feed = [t for t in rt.engine.store.feed.transitions(root)[0] if t.node_id == i]
                out.append(f"node {i} ({node.type if node else 'root'}) of {root}: {snap.states.get(i)}\n"
                           f"  processes on it: {[p for p in snap.processes if p.current_node_id == i]}\n"
                           f"  schedules: {[x for x in snap.schedules if x.node_id == i]}\n"
                           f"  feed: {[(t.from_state, t.to_state) for t in feed]}\n  calls:\n    "
                           + "\n    ".join(c for c in forest.calls if i in c or c.startswith("KILL")))
    return "\n".join(dict.fromkeys(out))


def _flat_states(tree: dict[str, Any]) -> dict[str, str]:
    """node id -> state of a nested (``culm status --json``) or flat (REST) state tree."""
    out = {tree["id"]: tree["state"]}
    for child in (tree.get("children") or {}).values():
        out.update(_flat_states(child))
    return out


def coherent(rt: Any, forest: Forest, rest: Rest | None, cli: Cli | None) -> list[str]:
    """Where ``culm status --json`` or ``GET /api/v1/pipelines/ID`` disagree with the API about
    the (ended, so standing) pipelines' states."""
    found = []
    for root in forest.roots:
        want = {k: v["state"] for k, v in api.get_pipeline_states(rt, root).data[root]["children"].items()}
        want[root] = api.get_pipeline_states(rt, root).data[root]["state"]
        if cli is not None:
            done = cli.run("status", root, "--json")
            for _ in range(10):  # the shared PostgreSQL out of connections (other tests'): a clear exit 4, asked again
                if done.returncode != 4 or "too many clients" not in done.stderr:
                    break
                time.sleep(1.0)
                done = cli.run("status", root, "--json")
            if done.returncode not in (0, 1) or "Traceback" in done.stderr:
                found.append(f"culm status {root}: exit {done.returncode} {done.stderr[-300:]}")
            elif _flat_states(json.loads(done.stdout)["tree"]) != want:
                found.append(f"culm status {root} disagrees: {done.stdout[:300]} vs {want}")
            expected = 0 if want[root] == "FINISHED" else 1
            if done.returncode != expected:
                found.append(f"culm status {root} ({want[root]}) exited {done.returncode}, not {expected}")
        if rest is not None:
            got = rest.get(f"/api/v1/pipelines/{root}")
            if got.status_code != 200 or _flat_states(got.json()) != want:
                found.append(f"GET /api/v1/pipelines/{root}: {got.status_code} {got.text[:300]} vs {want}")
    return found


@dataclass
class Outcome:
    seed: int
    kind: str
    fired: dict[str, int]
    refused: dict[str, int]
    kills: int
    again: int
    ended: dict[str, int]
    seconds: float

    def line(self) -> str:
        return (f"seed {self.seed} {self.kind}: {sum(self.fired.values())} calls {dict(self.fired)}, refused "
                f"{dict(self.refused)}, {self.kills} kills, {self.again} executions ran again, ended "
                f"{self.ended}, {self.seconds:.0f} s")


def run_storm(kind: str, seed: int, workdir: Path, pipelines: int = 12, size: int = 10, seconds: float = 20.0,
              threads: int = 4, burst: int = 6, workers: int = 2, kill_every: tuple[float, float] = (3.0, 7.0),
              rest: bool = True, cli: bool = True, client: bool = True, harness: bool = False,
              settle_for: float = 60.0, cli_only: int = 0, relay_grace: float | None = None,
              min_calls: int = 0, max_seconds: float = 900.0, freeze: bool = False) -> Outcome:
    """One seeded storm on backend ``kind`` (``postgres-redis`` or ``mariadb-rabbitmq``); raises
    AssertionError naming what broke and the last calls.

    ``cli_only``: every control call through ``culm`` processes, from this many threads (bursts
    of ``burst`` processes at once), half of them without ``--no-follow``; no API caller, REST or
    second process. ``relay_grace``: the workers' ``CULM_RELAY_GRACE``; one of a minute or more
    with no kill (``kill_every`` 0) means nothing may wait for the relay: every task must arrive
    through its own publish, so a task left unpublished fails the settle, and any "relayed" line
    in a worker's log fails the storm. ``min_calls``: the CLI callers (random and operator) go on
    past ``seconds`` until they have made this many calls (at a loaded machine's pace a ``culm``
    process takes seconds, and a storm of a fixed length made only a dozen), at most
    ``max_seconds`` in all. ``freeze``: half the kills are a freeze instead (:func:`killer`)."""
    from backends import HarnessBackend, own_backend

    began = time.monotonic()
    log = workdir / "calls.log"
    saved = {k: os.environ.get(k) for k in ("CULM_STORM_LOG", "CULM_WORKER_THREADS")}
    os.environ["CULM_STORM_LOG"] = str(log)
    threads_per_process = 2
    if not harness:
        os.environ["CULM_WORKER_THREADS"] = str(threads_per_process)
    if harness:
        from backends import BACKENDS

        db_kind, broker, *_ = BACKENDS[kind]
        backend: Any = HarnessBackend(kind, db_kind, broker, workdir)
        backend.setup()
        settle_for = max(settle_for, 120.0)  # a killed worker's leases run out after 30 s
    else:
        backend = own_backend(kind, workdir, env=None if relay_grace is None else
                              {"CULM_RELAY_GRACE": f"{relay_grace:g}"})
    if cli_only:
        threads, rest, client, cli = 0, False, False, True
    quiet_relay = kill_every[0] <= 0 and relay_grace is not None and relay_grace >= 60 and not harness
    procs: list[subprocess.Popen[Any]] = []
    tally = Tally()
    kills = Kills()
    forest = storm_trees.make_forest(random.Random(seed), pipelines, size, ms=(0, 5, 20, 100, 300), rich=True)
    try:
        backend.start_workers(workers, timeout=60)
        rt = backend.runtime()
        first = max(1, len(forest.trees) // 3)  # the rest start during the storm
        for tree in forest.trees[:first]:
            res = api.run_pipeline(rt, tree, cycle_tolerate=True)
            assert res.result, res.message
        graphs = graphs_of(rt, forest.roots[:first])
        cli_caller = Cli(backend.db_url, backend.broker_url, queue_prefix(backend),
                         follow=random.Random(seed) if cli_only else None)
        server = None
        if rest:
            proc, server = serve(backend, workdir)
            procs.append(proc)
        if client:
            procs.append(_client(backend, forest, workdir, seed, seconds))
        until = time.monotonic() + seconds
        cap = time.monotonic() + max(seconds, max_seconds)

        def cli_going() -> bool:
            at = time.monotonic()
            if at < until:
                return True
            with tally.lock:
                made = sum(n for how, n in tally.fired.items() if how.startswith("cli"))
            return at < cap and made < min_calls

        cli_until: Until = cli_going if min_calls else until
        callers = [threading.Thread(target=fire_loop, args=(
            forest, graphs, random.Random(seed * 1000 + i), lambda c: by_api(rt, c), "api", tally, until,
            burst if i == 0 else 0)) for i in range(threads)]
        if server is not None:
            callers.append(threading.Thread(target=fire_loop, args=(
                forest, graphs, random.Random(seed * 1000 + 101), server, "rest", tally, until, burst)))
        if cli:
            callers.append(threading.Thread(target=fire_loop, args=(
                forest, graphs, random.Random(seed * 1000 + 102), cli_caller, "cli", tally, cli_until,
                burst // 2 if cli_only else 0)))
            callers += [threading.Thread(target=operator_loop, args=(
                rt, forest, graphs, random.Random(seed * 1000 + 103 + i), cli_caller, tally, cli_until))
                for i in range(cli_only - 1)]
            callers.append(threading.Thread(target=_status_reader, args=(forest, graphs, cli_caller, tally,
                                                                         cli_until)))
        callers.append(threading.Thread(target=starter, args=(rt, forest, graphs, forest.trees[first:], until,
                                                             tally)))
        if kill_every[0] > 0:
            callers.append(threading.Thread(target=killer, args=(
                backend, random.Random(seed + 7), until, kill_every, kills, forest, freeze)))
        for t in callers:
            t.start()
        for t in callers:
            t.join(max(seconds, max_seconds if min_calls else 0) + 300)
        if client:
            out, _ = procs[-1].communicate(timeout=120)
            theirs = json.loads(out.strip().splitlines()[-1])
            tally.fired["client"] += theirs["calls"]
            tally.unclear += [f"client {u}" for u in theirs["unclear"]]
        assert not tally.unclear, "unclear answers:\n" + "\n".join(tally.unclear[:20])
        backend.ensure_workers(workers)
        try:
            storm_trees.check_then_drive(rt, forest, seed, settle_for=settle_for)
        except AssertionError as exc:
            raise AssertionError(f"{exc}\n{diagnose(rt, forest, str(exc).split('last calls:')[0])}") from None
        drift = coherent(rt, forest, server, cli_caller if cli else None)
        assert not drift, "\n".join(drift[:10])
        if quiet_relay:
            relayed = relayed_lines(backend)
            assert not relayed, ("tasks reached a worker only through the relay (their publish never arrived):\n"
                                 + "\n".join(relayed[:10]))
        bound = (8 if harness else threads_per_process) * backend.concurrency
        if harness:
            bound = 8 * (os.cpu_count() or 1)
        again, broken = reruns(log, kills, bound)
        assert not broken, storm_trees.report(forest, broken, "executions ran again")
        ended = collections.Counter(storm_trees.ended(rt, forest).values())
        return Outcome(seed, kind, dict(tally.fired), dict(tally.refused), len(kills.pids), again, dict(ended),
                       time.monotonic() - began)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
        backend.teardown()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _status_reader(forest: Forest, graphs: dict[str, Any], cli: Cli, tally: Tally, until: Until) -> None:
    """``culm status ID --json`` of random started pipelines during the storm: a state tree, exit 0 or 1."""
    rng = random.Random(len(forest.roots))
    while going(until):
        root = rng.choice(sorted(graphs))
        done = cli.run("status", root, "--json")
        ok = done.returncode in (0, 1) and "Traceback" not in done.stderr
        if ok:
            try:
                ok = json.loads(done.stdout)["tree"]["id"] == root
            except (ValueError, KeyError):
                ok = False
        tally.add("status", Call("status", root), True,
                  "" if ok else f"UNCLEAR exit {done.returncode} {(done.stderr or done.stdout)[-300:]!r}", forest)


def _client(backend: Any, forest: Forest, workdir: Path, seed: int, seconds: float) -> subprocess.Popen[str]:
    ids = workdir / "ids.json"
    ids.write_text(forest.ids())
    proc = subprocess.Popen([sys.executable, str(Path(__file__)), "client", backend.db_url, backend.broker_url,
                             queue_prefix(backend), str(ids), str(seed + 1), str(seconds)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": PATHS})
    assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
    return proc


def client_main(argv: list[str]) -> None:
    """``client DB BROKER PREFIX IDS SEED SECONDS``: 3 threads of API calls (bursts included) from
    this process; prints ``{"calls": n, "unclear": [...]}``."""
    import culm

    db, broker, prefix, ids, seed, seconds = argv
    rt = culm.Runtime(db, broker=broker, prefix=prefix)
    print("ready", flush=True)
    forest = Forest(**json.loads(Path(ids).read_text()))
    graphs: dict[str, Any] = {}
    tally = Tally()
    until = time.monotonic() + float(seconds)
    looker = threading.Thread(target=_follow, args=(rt, forest, graphs, until))
    looker.start()
    threads = [threading.Thread(target=fire_loop, args=(forest, graphs, random.Random(int(seed) * 1000 + i),
                                                        lambda c: by_api(rt, c), "api", tally, until,
                                                        4 if i == 0 else 0)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(float(seconds) + 300)
    print(json.dumps({"calls": sum(tally.fired.values()), "unclear": tally.unclear}), flush=True)
    rt.close()


def _follow(rt: Any, forest: Forest, graphs: dict[str, Any], until: float) -> None:
    """Keep ``graphs`` holding the started pipelines' graphs (another process starts them)."""
    while time.monotonic() < until and len(graphs) < len(forest.roots):
        graphs.update(graphs_of(rt, [r for r in forest.roots if r not in graphs]))
        time.sleep(0.5)


def main(argv: list[str]) -> int:
    sys.path[:0] = [p for p in PATHS.split(os.pathsep) if p not in sys.path]
    if argv and argv[0] == "client":
        client_main(argv[1:])
        return 0
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--backend", choices=("postgres-redis", "mariadb-rabbitmq", "both"), default="both")
    p.add_argument("--seeds", default="1", help="seeds: 1-5 or 3,7,9")
    p.add_argument("--seconds", type=float, default=60.0, help="length of each storm")
    p.add_argument("--pipelines", type=int, default=20)
    p.add_argument("--size", type=int, default=10, help="about how many nodes a tree has")
    p.add_argument("--threads", type=int, default=4, help="API caller threads in this process")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--kill-every", type=float, nargs=2, default=(3.0, 7.0), metavar=("MIN", "MAX"),
                   help="seconds between two kill -9 (0 0: none)")
    p.add_argument("--freeze", action="store_true",
                   help="half the kills SIGSTOP the worker for 4-6 s instead, then SIGCONT")
    p.add_argument("--harness", action="store_true", help="workers as the harness starts them (default leases)")
    p.add_argument("--no-rest", action="store_true")
    p.add_argument("--no-cli", action="store_true")
    p.add_argument("--cli-only", type=int, default=0, metavar="N",
                   help="every control call through culm processes, from N threads (no API, REST or second process)")
    p.add_argument("--min-calls", type=int, default=0, metavar="N",
                   help="the CLI callers go on past --seconds until they made N calls (at most --max-seconds)")
    p.add_argument("--max-seconds", type=float, default=900.0, help="the bound of --min-calls")
    p.add_argument("--relay-grace", type=float, default=None, metavar="S",
                   help="the workers' CULM_RELAY_GRACE; 60 or more with --kill-every 0 0: no task may need the relay")
    args = p.parse_args(argv)
    os.environ.setdefault("CULM_TEST_SHARED_DIR", tempfile.mkdtemp(prefix="culm-storm-shared-"))
    kinds = ["postgres-redis", "mariadb-rabbitmq"] if args.backend == "both" else [args.backend]
    failed = 0
    from simulation import parse_seeds

    for seed in parse_seeds(args.seeds):
        for kind in kinds:
            workdir = Path(tempfile.mkdtemp(prefix=f"culm-storm-{kind}-{seed}-"))
            try:
                outcome = run_storm(kind, seed, workdir, args.pipelines, args.size, args.seconds, args.threads,
                                    workers=args.workers, kill_every=tuple(args.kill_every),
                                    rest=not args.no_rest, cli=not args.no_cli, harness=args.harness,
                                    cli_only=args.cli_only, relay_grace=args.relay_grace,
                                    min_calls=args.min_calls, max_seconds=args.max_seconds, freeze=args.freeze)
                print(outcome.line(), flush=True)
            except AssertionError as exc:
                failed += 1
                print(f"seed {seed} {kind}: FAILED (workdir {workdir})\n{exc}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
