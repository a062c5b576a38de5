"""Read endpoints: pipelines, state trees, nodes, histories, logs, components, validation, live changes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import PlainTextResponse, StreamingResponse
from pydantic import BaseModel, Field

from culm import api
from culm.core import waits
from culm.errors import NodeNotReachedError
from culm.model.limits import MAX_LOG_PAGE_LINES
from culm.web import auth, live
from culm.web.problems import FastJSON, ProblemError, responses, unique_keys, unwrap
from culm.web.tokens import TokenInfo

# Viewer is the lowest role: any live token may read, so these answer 401 but never 403.
router = APIRouter(prefix="/api/v1", dependencies=[Depends(auth.viewer)], responses=responses(401))

LIST_LIMIT_MAX = 500
STATES = ("CREATED", "READY", "RUNNING", "SUSPENDED", "BLOCKED", "FINISHED", "FAILED", "REVOKED")


def _rt(request: Request) -> Any:
    return request.app.state.runtime


@router.get("/me", summary="The role of the presented token")
def me(info: Annotated[TokenInfo, Depends(auth.viewer)]) -> FastJSON:
    return FastJSON({"id": info.id, "role": info.role, "name": info.name})


@router.get("/pipelines", summary="List pipelines, newest first, with counts per state",
            responses=responses(422))
def list_pipelines(
    request: Request,
    state: str | None = Query(None, description=f"one of {', '.join(STATES)}"),
    name: str | None = Query(None, max_length=255, description="part of the pipeline's name"),
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: int = Query(50, ge=1, le=LIST_LIMIT_MAX),
    offset: int = Query(0, ge=0, le=2**62),  # as culm.api.list_pipelines takes it
) -> FastJSON:
    if state is not None and state not in STATES:
        raise ProblemError(422, f"state must be one of {', '.join(STATES)}, got {state!r}")
    found = api.list_pipelines(_rt(request), state=state, name=name, created_after=created_after,
                                   created_before=created_before, limit=limit, offset=offset)
    data = unwrap(found)
    # A RUNNING pipeline may be stuck on failed nodes (bamboo keeps it RUNNING): each such item says
    # how many, so that the list shows which pipelines wait for an operator; and which of its nodes
    # wait for a callback (someone, or some system, has to send it).
    # Each such node by name and id: the name says which step it is, the id is what a command takes.
    waits.mark_list_items(_rt(request).store, data["items"])
    return FastJSON({**data, "limit": limit, "offset": offset})


_TIMES = ("created_time", "started_time", "archived_time")


def _plain_times(entry: dict[str, Any]) -> dict[str, Any]:
    # Three datetimes per node: converting them here costs a third less than the encoder's
    # per-value fallback on a 1,000-node tree.
    out = dict(entry)
    for key in _TIMES:
        value = out.get(key)
        if isinstance(value, datetime):
            out[key] = value.isoformat()
    return out


def _states(request: Request, pipeline_id: str) -> dict[str, Any]:
    data = unwrap(api.get_pipeline_states(_rt(request), pipeline_id))
    if not data:
        raise ProblemError(404, f"no pipeline with id {pipeline_id}")
    root = _plain_times(data[pipeline_id])
    root["children"] = {key: _plain_times(entry) for key, entry in root["children"].items()}
    return root


@router.get("/pipelines/{pipeline_id}", summary="A pipeline's state tree (flat children), with wait reasons",
            responses=responses(404))
def pipeline_states(request: Request, pipeline_id: str) -> FastJSON:
    return FastJSON(_states(request, pipeline_id))


@router.get("/pipelines/{pipeline_id}/tree", summary="The tree a pipeline was started with",
            responses=responses(404))
def pipeline_tree(request: Request, pipeline_id: str) -> FastJSON:
    return FastJSON(unwrap(api.get_pipeline_tree(_rt(request), pipeline_id)))


@router.get("/pipelines/{pipeline_id}/debug", summary="Context values and processes of a pipeline",
            responses=responses(404))
def pipeline_debug(request: Request, pipeline_id: str) -> FastJSON:
    return FastJSON(unwrap(api.get_pipeline_debug_info(_rt(request), pipeline_id)))


@router.get("/nodes/{node_id}", summary="A node: definition, raw data, state, execution data, histories, logs",
            responses=responses(404))
def node(request: Request, node_id: str) -> FastJSON:
    """404 for a node not reached yet too, its detail saying so (``get_node_debug_info`` refuses it)."""
    rt = _rt(request)
    info = unwrap(api.get_node_debug_info(rt, node_id))
    info["histories"] = unwrap(api.get_node_histories(rt, node_id))
    info["logs"] = unwrap(api.get_node_logs(rt, node_id))
    children = unwrap(api.get_children_states(rt, node_id))
    if info["state"] is not None and children:
        info["state"]["children"] = children[node_id]["children"]
    return FastJSON(info)


@router.get("/nodes/{node_id}/state", summary="A node's state with its direct children", responses=responses(404))
def node_state(request: Request, node_id: str) -> FastJSON:
    data = unwrap(api.get_children_states(_rt(request), node_id))
    if not data:
        raise ProblemError(404, f"node {node_id} has no state: it does not exist or has not been reached")
    return FastJSON(data[node_id])


@router.get("/nodes/{node_id}/execution-data", summary="Rendered inputs and outputs of the node's latest run",
            responses=responses(404))
def execution_data(request: Request, node_id: str) -> FastJSON:
    return FastJSON(unwrap(api.get_execution_data(_rt(request), node_id)))


@router.get("/nodes/{node_id}/data", summary="Raw (not rendered) inputs and output mapping of a node",
            responses=responses(404))
def raw_data(request: Request, node_id: str) -> FastJSON:
    return FastJSON(unwrap(api.get_data(_rt(request), node_id)))


def _known_node(request: Request, node_id: str) -> None:
    """404 for an id no stored tree has; a node not reached yet passes (its histories are ``[]``
    and its logs empty, as ``culm.api`` answers)."""
    found = api.get_data(_rt(request), node_id)
    if not isinstance(found.exc, NodeNotReachedError):
        unwrap(found)


@router.get("/nodes/{node_id}/histories", summary="Earlier runs of a node, oldest first", responses=responses(404))
def histories(request: Request, node_id: str, loop: int = -1, short: bool = False) -> FastJSON:
    _known_node(request, node_id)
    fn = api.get_node_short_histories if short else api.get_node_histories
    return FastJSON(unwrap(fn(_rt(request), node_id, loop)))


@router.get("/nodes/{node_id}/logs", summary="Lines the node's component logged (current version by default)",
            response_class=PlainTextResponse, responses=responses(404))
def logs(
    request: Request,
    node_id: str,
    version: str | None = None,
    offset: int | None = Query(None, ge=0, description="first line to return (0-based); absent: the last lines"),
    limit: int | None = Query(None, ge=1, le=MAX_LOG_PAGE_LINES, description="most lines to return"),
) -> PlainTextResponse:
    """Without ``offset`` and ``limit``: what ``culm.api.get_node_logs`` returns (every line, or the
    last ones under a first line saying how many were left out). With either: that page's lines
    only; the headers ``X-Culm-Log-Total`` (lines the run logged) and ``X-Culm-Log-Offset`` (the
    first returned line's number) let a client page on."""
    _known_node(request, node_id)
    rt = _rt(request)
    if offset is None and limit is None:
        return PlainTextResponse(unwrap(api.get_node_logs(rt, node_id, version)))
    page = unwrap(api.get_node_log_page(rt, node_id, version, offset, limit or 1000))
    return PlainTextResponse("\n".join(page["lines"]), headers={
        "X-Culm-Log-Total": str(page["total"]), "X-Culm-Log-Offset": str(page["offset"])})


def component_catalogue() -> list[dict[str, Any]]:
    """Every registered component with its input and output formats."""
    from culm.components import library

    items = []
    for cls in library.all():
        try:
            inputs, outputs = cls.inputs_format(), cls.outputs_format()
        except Exception as exc:  # noqa: BLE001 - one broken component must not hide the others
            inputs, outputs = [], [{"error": f"{type(exc).__name__}: {exc}"}]
        service = cls.bound_service
        schedules = bool(getattr(service, "__need_schedule__", False))
        items.append({"code": cls.code, "name": cls.name, "version": cls.version, "group": cls.group_name,
                      "description": cls.desc, "inputs_format": inputs, "outputs_format": outputs,
                      "need_schedule": schedules,
                      "callback": schedules and getattr(service, "interval", 0) is None})
    return sorted(items, key=lambda c: (c["group"] or "", c["code"], c["version"]))


@router.get("/components", summary="The component catalogue with input and output formats")
def components() -> FastJSON:
    return FastJSON(component_catalogue())


class ValidateBody(BaseModel):
    tree: dict[str, Any] = Field(description="a pipeline tree")
    cycle_tolerate: bool = False


def tree_problems_of(tree: dict[str, Any], cycle_tolerate: bool, components: bool = True) -> list[dict[str, Any]]:
    """Every problem of ``tree`` as ``{"node_id", "message"}``, as ``culm validate`` finds them.

    Raises:
        ProblemError: 422 when the tree cannot even be walked.
    """
    from culm.validator import tree_problems

    try:
        problems = tree_problems(tree, cycle_tolerate=cycle_tolerate, components=components)
    except Exception as exc:  # noqa: BLE001 - a tree the validator cannot even walk is a bad tree
        raise ProblemError(422, f"the tree cannot be read: {type(exc).__name__}: {exc}") from exc
    return [{"node_id": p.where, "message": p.message} for p in problems]


@router.post("/validate", summary="Every problem of a tree, each naming its node or flow id",
             responses=responses(413, 422), dependencies=[Depends(unique_keys)])
def validate(body: ValidateBody) -> FastJSON:
    problems = tree_problems_of(body.tree, body.cycle_tolerate)
    return FastJSON({"valid": not problems, "problems": problems})


@router.get("/events", summary="Live state changes as server-sent events (text/event-stream)",
            response_class=StreamingResponse,
            responses={200: {"content": {"text/event-stream": {}}, "description": "a stream of `state` events"}})
async def events(request: Request, root_id: str | None = Query(None, description="one pipeline; all roots if absent"),
                 ) -> StreamingResponse:
    hub: live.ChangeHub = request.app.state.hub
    try:
        sub = hub.subscribe(root_id, auth.client_key(request))
    except live.TooManyStreams as exc:
        raise ProblemError(429, f"{exc}: close one first (the console holds one per tab)") from None
    return StreamingResponse(_stream(request, sub), media_type="text/event-stream",
                             headers={"Cache-Control": "no-store", "X-Accel-Buffering": "no"})


async def _stream(request: Request, sub: live.Subscription) -> AsyncIterator[str]:
    try:
        yield "retry: 2000\nevent: hello\ndata: {}\n\n"
        while not await request.is_disconnected():
            yield await sub.take(15.0) or ": keep-alive\n\n"
    except asyncio.CancelledError:
        pass
    finally:
        sub.close()
