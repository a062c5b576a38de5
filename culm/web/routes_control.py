"""Write endpoints: submitting pipelines, every control operation of :mod:`culm.api`, and API tokens."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, Request
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from culm import api
from culm.web import auth
from culm.web.problems import FastJSON, ProblemError, responses, tree_problems, unique_keys, unwrap
from culm.web.routes_read import tree_problems_of
from culm.web.tokens import ROLES, TokenError

router = APIRouter(prefix="/api/v1", dependencies=[Depends(auth.operator), Depends(unique_keys)],
                   responses=responses(401, 403))
tokens_router = APIRouter(prefix="/api/v1/tokens", dependencies=[Depends(auth.admin), Depends(unique_keys)],
                          responses=responses(401, 403))

CONTROL = responses(404, 409)


def _rt(request: Request) -> Any:
    return request.app.state.runtime


class SubmitBody(BaseModel):
    tree: dict[str, Any] = Field(description="a pipeline tree (as `culm run` reads from JSON)")
    data: dict[str, Any] | None = Field(None, description="root pipeline data")
    context: dict[str, Any] | None = Field(None, description="root pipeline context")
    cycle_tolerate: bool = False
    new_ids: bool = Field(False, description="give the pipeline, its nodes and flows fresh ids")
    priority: int = Field(100, ge=0, le=255)
    queue: str = ""


@router.post("/pipelines", status_code=201, summary="Validate a tree and start it",
             responses=responses(409, 413, 422))
def submit(request: Request, body: SubmitBody) -> FastJSON:
    from culm.model import with_new_ids

    tree = with_new_ids(body.tree) if body.new_ids else body.tree
    root_id = tree.get("id")
    if not isinstance(root_id, str) or not root_id:
        what = "the tree has no id" if root_id is None else f"the tree's id must be a non-empty string, not {repr(root_id)[:40]}"
        raise ProblemError(422, what, [{"node_id": None, "message": "the tree needs a string `id`"}])
    runtime = _rt(request)
    # This process runs the components only on an embedded runtime with workers; a broker's
    # workers import their own, so the service cannot judge the codes then.
    if runtime.embedded and runtime.dispatcher is not None:
        problems = tree_problems_of(tree, body.cycle_tolerate)
        if problems:
            raise ProblemError(422, f"invalid pipeline tree: {len(problems)} problem(s)", problems)
    started = api.run_pipeline(_rt(request), tree, root_pipeline_data=body.data, root_pipeline_context=body.context,
                               cycle_tolerate=body.cycle_tolerate, priority=body.priority, queue=body.queue)
    if not started.result and not tree_problems(started.exc) and "already exists" not in started.message:
        # A tree the validator could not even walk (wrong types): still the caller's mistake.
        raise ProblemError(422, started.message, [{"node_id": None, "message": started.message}])
    unwrap(started)
    return FastJSON({"id": root_id}, status_code=201)


def _done(result: Any) -> FastJSON:
    data = unwrap(result)
    return FastJSON({"result": True, "message": result.message, "data": data})


@router.post("/pipelines/{pipeline_id}/pause", summary="Pause a pipeline or subprocess", responses=CONTROL)
def pause_pipeline(request: Request, pipeline_id: str) -> FastJSON:
    return _done(api.pause_pipeline(_rt(request), pipeline_id))


@router.post("/pipelines/{pipeline_id}/resume", summary="Resume a paused pipeline or subprocess", responses=CONTROL)
def resume_pipeline(request: Request, pipeline_id: str) -> FastJSON:
    return _done(api.resume_pipeline(_rt(request), pipeline_id))


@router.post("/pipelines/{pipeline_id}/revoke", summary="Revoke a pipeline for good", responses=CONTROL)
def revoke_pipeline(request: Request, pipeline_id: str) -> FastJSON:
    return _done(api.revoke_pipeline(_rt(request), pipeline_id))


class ContextBody(BaseModel):
    context_values: dict[str, Any] = Field(description='{"${key}": value} for existing context variables')


@router.post("/pipelines/{pipeline_id}/context", summary="Overwrite context variables of a running pipeline",
             responses=responses(404, 413, 422))
def update_context(request: Request, pipeline_id: str, body: ContextBody) -> FastJSON:
    return _done(api.update_context_values(_rt(request), pipeline_id, body.context_values))


class RetryBody(BaseModel):
    inputs: dict[str, Any] | None = Field(None, description="new raw inputs (replace the old ones)")


@router.post("/nodes/{node_id}/retry", summary="Run a FAILED node again, maybe with new inputs",
             responses=responses(404, 409, 413, 422))
def retry_node(request: Request, node_id: str, body: RetryBody | None = None) -> FastJSON:
    return _done(api.retry_node(_rt(request), node_id, body.inputs if body else None))


@router.post("/nodes/{node_id}/skip", summary="Mark a FAILED node FINISHED and go on", responses=CONTROL)
def skip_node(request: Request, node_id: str) -> FastJSON:
    return _done(api.skip_node(_rt(request), node_id))


@router.post("/nodes/{node_id}/retry-subprocess", summary="Retry a subprocess that failed on entry",
             responses=CONTROL)
def retry_subprocess(request: Request, node_id: str) -> FastJSON:
    return _done(api.retry_subprocess(_rt(request), node_id))


class ForcedFailBody(BaseModel):
    ex_data: str = "forced to fail by an operator"


@router.post("/nodes/{node_id}/forced-fail", summary="Fail a RUNNING activity now",
             responses=responses(404, 409, 413, 422))
def forced_fail(request: Request, node_id: str, body: ForcedFailBody | None = None) -> FastJSON:
    return _done(api.forced_fail_activity(_rt(request), node_id, (body or ForcedFailBody()).ex_data))


@router.post("/nodes/{node_id}/pause", summary="Set a breakpoint before a node", responses=CONTROL)
def pause_node(request: Request, node_id: str) -> FastJSON:
    return _done(api.pause_node_appoint(_rt(request), node_id))


@router.post("/nodes/{node_id}/resume", summary="Remove a breakpoint and go on", responses=CONTROL)
def resume_node(request: Request, node_id: str) -> FastJSON:
    return _done(api.resume_node_appoint(_rt(request), node_id))


class CallbackBody(BaseModel):
    version: str | None = Field(None, description="the node's current version (read from its state if absent)")
    data: dict[str, Any] | None = None


@router.post("/nodes/{node_id}/callback", summary="Deliver a callback to a waiting activity",
             responses=responses(404, 409, 413, 422))
def callback(request: Request, node_id: str, body: CallbackBody) -> FastJSON:
    version = body.version
    if version is None:
        state = unwrap(api.get_children_states(_rt(request), node_id))
        if not state:
            raise ProblemError(404, f"node {node_id} has no state: it does not exist or has not been reached")
        version = state[node_id]["version"]
    return _done(api.callback(_rt(request), node_id, version, body.data))


class SkipExclusiveBody(BaseModel):
    flow_id: str


@router.post("/nodes/{node_id}/skip-exclusive-gateway", summary="Let a FAILED exclusive gateway go on along a flow",
             responses=responses(404, 409, 413, 422))
def skip_exclusive(request: Request, node_id: str, body: SkipExclusiveBody) -> FastJSON:
    return _done(api.skip_exclusive_gateway(_rt(request), node_id, body.flow_id))


class SkipConditionalBody(BaseModel):
    flow_ids: list[str]
    converge_gateway_id: str


@router.post("/nodes/{node_id}/skip-conditional-parallel-gateway",
             summary="Let a FAILED conditional parallel gateway fork along flows",
             responses=responses(404, 409, 413, 422))
def skip_conditional(request: Request, node_id: str, body: SkipConditionalBody) -> FastJSON:
    return _done(api.skip_conditional_parallel_gateway(_rt(request), node_id, body.flow_ids,
                                                       body.converge_gateway_id))


class OutputsBody(BaseModel):
    context_values: dict[str, Any] = Field(description='{"${key}": value}: root context values to overwrite '
                                                       "(existing keys only) and outputs to record")


@router.post("/nodes/{node_id}/outputs", summary="Before skipping a FAILED node: set the context values and "
             "outputs it would have written", responses=responses(404, 409, 413, 422))
def update_node_outputs(request: Request, node_id: str, body: OutputsBody) -> FastJSON:
    state = unwrap(api.get_children_states(_rt(request), node_id))
    if not state:
        raise ProblemError(404, f"node {node_id} has no state: it does not exist or has not been reached")
    root_id = state[node_id]["root_id:"] or node_id
    return _done(api.update_node_outputs(_rt(request), root_id, node_id, body.context_values))


class LoopTimesBody(BaseModel):
    loop_times: int = Field(ge=0, description="how many iterations the node loop runs in all")


@router.post("/nodes/{node_id}/loop-times", summary="Change how many iterations a node loop runs",
             responses=responses(404, 409, 413, 422))
def update_node_loop_times(request: Request, node_id: str, body: LoopTimesBody) -> FastJSON:
    return _done(api.update_node_loop_times(_rt(request), node_id, body.loop_times))


class PreviewBody(BaseModel):
    tree: dict[str, Any]
    node_id: str
    subprocess_stack: list[str] = []
    data: dict[str, Any] | None = None
    parent_params: dict[str, Any] | None = None


PREVIEW_RETRY_AFTER = 2  # seconds: a preview takes 10 s at most, most take far less


@router.post("/preview", summary="What a node's inputs render to, without running it",
             responses=responses(404, 413, 422, 429))
async def preview(request: Request, body: PreviewBody) -> FastJSON:
    # Async so that a refused preview never waits for (or holds) a thread of the pool.
    slots = request.app.state.preview_slots
    if not slots.acquire(blocking=False):
        most = request.app.state.max_previews
        raise ProblemError(429, f"too many previews: {most} are being rendered, the most this server renders at "
                                f"once (each may take up to 10 s); try again in {PREVIEW_RETRY_AFTER} s",
                           headers={"Retry-After": str(PREVIEW_RETRY_AFTER)})
    try:
        result = await run_in_threadpool(api.preview_node_inputs, _rt(request), body.tree, body.node_id,
                                         body.subprocess_stack, body.data, body.parent_params)
    finally:
        slots.release()
    return FastJSON(unwrap(result))


# -- tokens (admin) ---------------------------------------------------------------------------


class TokenBody(BaseModel):
    role: str = Field(description=f"one of {', '.join(ROLES)}")
    name: str = Field("", max_length=255)


@tokens_router.get("", summary="Every API token (never their secrets)")
def list_tokens(request: Request) -> FastJSON:
    return FastJSON([t.as_dict() for t in request.app.state.tokens.list()])


@tokens_router.post("", status_code=201, summary="Create a token; its text is shown only in this answer",
                    responses=responses(413, 422))
def create_token(request: Request, body: TokenBody) -> FastJSON:
    try:
        text, info = request.app.state.tokens.create(body.role, body.name)
    except TokenError as exc:
        raise ProblemError(422, str(exc)) from exc
    return FastJSON({**info.as_dict(), "token": text}, status_code=201)


@tokens_router.delete("/{token_id}", summary="Revoke a token", responses=responses(404, 409))
def revoke_token(request: Request, token_id: str) -> FastJSON:
    try:
        info = request.app.state.tokens.revoke(token_id)
    except TokenError as exc:
        raise ProblemError(404 if "no token" in str(exc) else 409, str(exc)) from exc
    return FastJSON(info.as_dict())
