"""Control commands: one per control operation of :mod:`culm.api`.

The engine's verdict comes first: a refusal is one line and exit 5 (2, 3, 4 for a wrong argument,
an unknown id, a database that cannot be used). An accepted command (exit 0) is then followed until
the pipeline ends or stops moving (a node failed, one waits), as ``culm run`` follows a run, up to
``--timeout``; ``--no-follow`` only records it. Who runs the work the command makes:

* with ``--broker``: the cluster's workers, to whom it is published;
* on a server database without: a live ``culm worker`` registered there (its relay finds the work,
  ``CULM_RELAY_GRACE`` later), else this process, as ``culm run`` runs a pipeline there;
* on a SQLite file: this process, unless another one runs the file's work (holds its runner lock).

When others run it the command follows by polling; work that nothing takes ends the wait with what
to check.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable
from typing import Any

from culm.cli import render
from culm.cli.common import (
    EXIT_OK,
    NotFound,
    Refused,
    UsageError,
    a_count,
    a_text,
    add_broker,
    add_db,
    add_imports,
    an_id,
    broker_url,
    check,
    db_url,
    err,
    open_runtime,
    parse_json_object,
    seconds,
    state_entry,
    workers_run,
)
from culm.cli.loading import import_modules, import_names, split_assignment
from culm.cli.run import (
    Progress,
    Unfinished,
    missing_components,
    progress_by_signal,
    require_components,
    wait_and_conclude,
)

FOLLOW_TIMEOUT = 600.0
RELAY_ROUND = 2.0  # CULM_RELAY_INTERVAL's default: how often a worker's relay looks for work
# The state a node command's target must be in for the engine to take it; in any other, the
# command is only sent (the engine refuses it, naming the state) and nothing else is checked first.
NEEDS = {"retry": "FAILED", "retry-subprocess": "FAILED", "skip": "FAILED", "skip-exclusive-gateway": "FAILED",
         "skip-conditional-parallel-gateway": "FAILED", "force-fail": "RUNNING", "callback": "RUNNING"}


def _callback(rt: Any, args: argparse.Namespace) -> Any:
    from culm import api

    version = args.version or state_entry(rt, args.node)["version"]
    return api.callback(rt, args.node, version, parse_json_object(args.data, "--data") or {})


def _set_context(rt: Any, args: argparse.Namespace) -> Any:
    from culm import api

    pairs = (split_assignment(i, "set-context", f"culm set-context {args.id}") for i in args.values)
    values = {"${" + key + "}": value for key, value in pairs}
    ended = state_entry(rt, args.id).get("state")
    if ended in ("FINISHED", "REVOKED"):
        # The API overwrites an ended pipeline's context, as bamboo's does; nothing reads it any
        # more, so the command refuses rather than report a change that changes nothing.
        raise Refused(f"cannot update the context of pipeline {args.id}: it has ended (state {ended}); "
                      "nothing reads its context any more")
    info = check(api.get_pipeline_debug_info(rt, args.id))
    known = sorted(v["key"] for v in info["context_values"])
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise UsageError(f"set-context: pipeline {args.id} has no context value {', '.join(unknown)} "
                         f"(it has: {', '.join(known) or 'none'}); only existing values can be changed")
    return api.update_context_values(rt, args.id, values)


def _set_outputs(rt: Any, args: argparse.Namespace) -> Any:
    from culm import api

    pairs = (split_assignment(i, "set-outputs", f"culm set-outputs {args.node}") for i in args.values)
    values = {"${" + key + "}": value for key, value in pairs}
    root_id = state_entry(rt, args.node).get("root_id") or args.node
    result = api.update_node_outputs(rt, root_id, args.node, values)
    if result.result and (only_outputs := [k for k in values if k not in result.data]):
        # As in bamboo, a key the root context does not have still goes into the node's outputs;
        # say so, since the nodes after it read the context.
        err(f"note: the pipeline {root_id} has no context value {', '.join(only_outputs)}: set only in "
            f"the outputs of {args.node}")
    return result


def _operations() -> dict[str, tuple[str, str, Callable[[Any, argparse.Namespace], Any]]]:
    """``{command: (target attribute, what it did, call)}``."""
    from culm import api

    return {
        "pause": ("id", "paused", lambda rt, a: api.pause_pipeline(rt, a.id)),
        "resume": ("id", "resumed", lambda rt, a: api.resume_pipeline(rt, a.id)),
        "revoke": ("id", "revoked", lambda rt, a: api.revoke_pipeline(rt, a.id)),
        "retry": ("node", "retried", lambda rt, a: api.retry_node(rt, a.node, parse_json_object(a.data, "--data"))),
        "retry-subprocess": ("node", "retried", lambda rt, a: api.retry_subprocess(rt, a.node)),
        "skip": ("node", "skipped", lambda rt, a: api.skip_node(rt, a.node)),
        "skip-exclusive-gateway": ("node", "skipped",
                                   lambda rt, a: api.skip_exclusive_gateway(rt, a.node, a.flow)),
        "skip-conditional-parallel-gateway": (
            "node", "skipped", lambda rt, a: api.skip_conditional_parallel_gateway(rt, a.node, a.flows, a.converge)),
        "force-fail": ("node", "failed", lambda rt, a: api.forced_fail_activity(rt, a.node, a.ex_data)),
        "callback": ("node", "called back", _callback),
        "pause-node": ("node", "set a pause at", lambda rt, a: api.pause_node_appoint(rt, a.node)),
        "resume-node": ("node", "removed the pause at", lambda rt, a: api.resume_node_appoint(rt, a.node)),
        "set-context": ("id", "updated the context of", _set_context),
        "set-outputs": ("node", "updated the outputs of", _set_outputs),
        "loop-times": ("node", "changed the loop count of",
                       lambda rt, a: api.update_node_loop_times(rt, a.node, a.loop_times)),
    }


def _accepted(res: Any, command: str, target: str) -> None:
    """Raise the refusal of ``command`` on ``target``, its message as the engine gave it when that
    names the target already (``cannot retry node X: ...``), else after ``command target: ``."""
    check(res, "" if names(res.message or "", target) else f"{command} {target}")


def names(message: str, target: str) -> bool:
    """Whether ``message`` names the id ``target`` as a whole (``n1`` is not named by ``n10``)."""
    return re.search(rf"(?<![\w-]){re.escape(target)}(?![\w-])", message) is not None


def _warn_resume_imports(rt: Any, root_id: str, target: str, tree: Any) -> None:
    """After a pause: when `culm resume` here would refuse for want of components (a node waiting
    for a callback, or not reached yet, runs on when resumed), say so now, in one line."""
    missing = missing_components(rt, root_id, tree)
    if missing:
        print(f"note: `culm resume {target}` will need --import MODULE (or $CULM_IMPORTS) naming the module(s) "
              f"that define {', '.join(missing)}: its waiting or unreached nodes run on when resumed",
              file=sys.stderr, flush=True)


def cmd_control(args: argparse.Namespace) -> int:
    attr, done, call = _operations()[args.command]
    target = getattr(args, attr)
    import_modules(import_names(args.imports))
    # With --broker the work is published to the workers; on a server database without, a live
    # `culm worker`'s relay finds it, else this process runs it, as `culm run` does there.
    with open_runtime(args, read_only=True, run=not args.no_follow and not broker_url(args), submits=True) as rt:
        from culm import api

        cluster = workers_run(args, rt)

        try:
            entry: dict | None = state_entry(rt, target)
        except NotFound:
            entry = None  # a node not reached yet (pause-node); the engine knows whether it exists
        root_id = (entry or {}).get("root_id") or target
        if attr == "node" and entry is not None and root_id == target:  # like `culm logs PIPELINE`: exit 2
            raise UsageError(f"{target} is a pipeline: `culm {args.command}` takes one of its nodes "
                             f"(`culm status {target}` lists them)")
        tree = api.get_pipeline_tree(rt, root_id)
        info = render.node_info(tree.data) if tree.result else {}
        kind = info.get(target, ("", ""))[1]
        if attr == "id" and root_id != target and kind not in ("", "SubProcess"):  # the mirror of the above: exit 2
            raise UsageError(f"{target} is a {kind} node of pipeline {root_id}: `culm {args.command}` takes a "
                             f"pipeline or a SubProcess node (`culm {args.command} {root_id}`)")
        runner = getattr(rt, "dispatcher", None) is not None and not cluster
        if args.no_follow or entry is None or args.command in ("pause", "pause-node", "set-context", "set-outputs", "loop-times"):
            _accepted(call(rt, args), args.command, target)
            print(f"{done} {render.label(target, info)}", flush=True)
            if args.command == "pause" and runner:
                _warn_resume_imports(rt, root_id, target, tree.data)
            return EXIT_OK
        # A command its target's state (as read just now) refuses: say why the engine refuses it, not
        # (first) that the components to run what follows are missing. The state read is only a
        # guess: the node may move before the command lands (RUNNING -> FAILED, review 17 R4), so
        # whether to follow is the engine's answer to the command itself, never this read.
        hopeless = entry.get("state") != NEEDS.get(args.command, entry.get("state"))
        if runner and args.command != "revoke" and not hopeless:
            require_components(rt, root_id, tree.data, f"{args.command} {target}",
                               ", or pass --no-follow to only record the command",
                               runs=target if args.command in ("retry", "callback") else None,
                               stops=target if args.command in ("skip", "force-fail") else None)
        progress = Progress(root_id, info)
        progress.hold()  # listening before the command, so that none of its changes is missed
        def begin(left: Unfinished) -> None:
            res = call(rt, args)
            left.unconfirmed = ""
            _accepted(res, args.command, target)
            print(f"{done} {render.label(target, info)}", flush=True)
            progress.release()

        with progress_by_signal(rt, progress) as polled:
            return wait_and_conclude(rt, args, root_id, info, polled, cluster, stop_when_waiting=True,
                                     judge=_accepted_is_done, stalled_after=_stalled_after(args, runner),
                                     begin=begin, sending=f"`culm {args.command} {target}`")


def _stalled_after(args: argparse.Namespace, runner: bool) -> float | None:
    """From when on a follow stops at work nothing takes (no worker runs): at once when the work
    was published (or another process on this SQLite file runs it); without a broker, once the
    workers' relay would have found it (``CULM_RELAY_GRACE`` and a relay round, 2 s, later); never
    when this process runs it."""
    if runner:
        return None
    if broker_url(args) or db_url(args).startswith("sqlite"):
        return 0.0
    try:
        grace = float(os.environ.get("CULM_RELAY_GRACE", "15"))
    except ValueError:
        grace = 15.0
    return grace + 2 * RELAY_ROUND


def _accepted_is_done(_outcome: str, _flat: dict[str, dict]) -> int:
    """A control command the engine accepted exits 0 however the pipeline fares next: the contract
    keeps exit 1 for `culm run` and `culm status`. What failed after it (the retried node failed
    again, the callback's schedule returned False) is printed above, with its ex_data."""
    return EXIT_OK


def register(sub: Any) -> None:
    """Add one command per control operation to the ``culm`` parser."""
    def command(name: str, help_text: str, target: str, target_help: str) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = sub.add_parser(name, help=help_text)
        p.add_argument(target, type=an_id, metavar=target.upper(), help=target_help)
        add_db(p)
        add_broker(p)
        add_imports(p, "module defining components (this process runs the pipeline on after the command, unless "
                    "--broker or a live `culm worker` on a server database does)")
        p.add_argument("--no-follow", action="store_true",
                       help="only record the command; do not follow the pipeline (nor run it on in this process)")
        p.add_argument("--timeout", type=seconds, default=FOLLOW_TIMEOUT, metavar="S",
                       help="stop following after S seconds")
        p.set_defaults(func=cmd_control)
        return p

    pipeline, node = "pipeline (or subprocess node) id", "node id"
    command("pause", "pause a pipeline or subprocess", "id", pipeline)
    command("resume", "resume a paused pipeline or subprocess", "id", pipeline)
    command("revoke", "revoke a pipeline for good", "id", pipeline)
    p = command("retry", "run a failed node again", "node", node)
    p.add_argument("--data", metavar="'{...}'", help="new raw inputs (replace the node's inputs): JSON object or @FILE")
    command("retry-subprocess", "retry a subprocess node that failed on entry", "node", node)
    command("skip", "mark a failed node finished and go on after it", "node", node)
    p = command("skip-exclusive-gateway", "let a failed exclusive gateway go on along one flow", "node", node)
    p.add_argument("--flow", required=True, type=an_id, metavar="F", help="the flow id to take")
    p = command("skip-conditional-parallel-gateway", "let a failed conditional parallel gateway fork along flows",
                "node", node)
    p.add_argument("--flows", required=True, nargs="+", type=an_id, metavar="F", help="the flow ids to take")
    p.add_argument("--converge", required=True, type=an_id, metavar="C", help="the converge gateway id that joins them")
    p = command("force-fail", "fail a running node now", "node", node)
    # Any text, the empty one included, as forced_fail_activity (and bamboo's) takes it and the REST
    # API does; the default is the REST API's and the console's.
    p.add_argument("--ex-data", default="forced to fail by an operator", metavar="TEXT",
                   help="the failure message stored as the node's ex_data (any text, '' included)")
    p = command("callback", "deliver a callback to a waiting node", "node", node)
    p.add_argument("--data", metavar="'{...}'", help="the callback payload: JSON object or @FILE")
    p.add_argument("--version", metavar="V", type=a_text("a version"), help="the node's version (default: its current one)")
    command("pause-node", "set a pause before a node (a breakpoint)", "node", node)
    command("resume-node", "remove a node's pause and let a branch parked there go on", "node", node)
    p = command("set-context", "overwrite context values of a running pipeline", "id", pipeline)
    p.add_argument("values", nargs="+", metavar="KEY=VALUE", help="context key (with or without ${}) and value")
    p = command("set-outputs", "before skipping a failed node: set the root context values and outputs it "
                "would have written", "node", node)
    p.add_argument("values", nargs="+", metavar="KEY=VALUE", help="context key (with or without ${}) and value")
    p = command("loop-times", "change how many iterations a node loop (loop_config) runs in all", "node", node)
    p.add_argument("loop_times", type=a_count, metavar="N", help="the new iteration count, 0 or more")
