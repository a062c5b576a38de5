"""The Engine: owns the graph cache and the settings the engine steps read; dispatchers drive it."""

from __future__ import annotations

import contextlib
import dataclasses
import os
import socket
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator

from culm._printable import engine_logger
from culm.core import joins
from culm.core.ports import Dispatcher, Lease, RowCopies, Store, Unit, UserData
from culm.core.records import new_id, now
from culm.core.settings import Settings, process_settings
from culm.core.state_tree import StateTrees
from culm.core.step import Step
from culm.model.compiled import Graph, compile_tree

logger = engine_logger("culm.engine")

class Engine:
    """What every engine step reads besides the store: graphs, root data, settings, the lease owner.

    The steps themselves (``walker.execute_step``, ``scheduling.schedule_prepare``/``schedule_apply``)
    run inside a batch transaction of the engine loop (:mod:`culm.core.loop`), which a dispatcher drives.
    """

    def __init__(self, store: Store, dispatcher: Dispatcher | None = None, settings: Settings | None = None) -> None:
        self.store = store
        self.dispatcher = dispatcher
        # None: a copy of the process's defaults (culm.configure, $CULM_*) as they are now; each
        # engine's own, so that changing one runtime's settings leaves the others as they were
        self.settings = settings or dataclasses.replace(process_settings())
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"
        self._graphs: OrderedDict[str, Graph] = OrderedDict()
        self._root_data: OrderedDict[str, UserData] = OrderedDict()
        self._graphs_lock = threading.Lock()
        self.state_trees = StateTrees()  # what get_pipeline_states read last, per pipeline
        # The embedded runner's kept copies of rows (culm.storage.cache), set by the dispatcher
        # that owns them while it runs: a new run's rows go into them as they are written, so the
        # engine's first step of the run reads none of them back.
        self.copies: RowCopies | None = None

    # -- transactions ---------------------------------------------------------------------
    @contextlib.contextmanager
    def step(self, *, new_rows_only: bool = False, graph: Graph | None = None) -> Iterator[Step]:
        """A transaction whose tasks are dispatched and signals sent after it commits.

        Unless it only inserts rows of a new run (``new_rows_only``), it announces that it changes
        existing rows, so an embedded engine drops its copies of them (``culm.storage.cache``);
        one that does writes them into the runner's copies (``copies``) as well.
        ``graph``: a new run's compiled graph, kept once the run is committed and before its tasks
        are dispatched (a distributed dispatcher names the first walk's reads in the message).
        """
        with self.store.transaction(cache=self.copies if new_rows_only else None, adds_only=new_rows_only) as unit:
            if not new_rows_only:
                unit.announce_change()
            step = Step(unit)
            yield step
            joins.settle(step)  # children that reached their converge gateways in its walks
        if graph is not None:
            self.remember_graph(graph)
        # Signals go out before the tasks do: a receiver hears of this commit's state changes
        # before any the engine makes next on the same nodes (commit order, node by node).
        step.send_signals()
        if step.tasks and self.dispatcher is not None:
            self.dispatcher.submit(step.tasks)
        step.run_after()

    def submitting(self) -> contextlib.AbstractContextManager[None]:
        """Wrap the whole of a run_pipeline call in this (the embedded engine batches around it)."""
        if self.dispatcher is None:
            return contextlib.nullcontext()
        return self.dispatcher.submitting()

    # -- graphs ---------------------------------------------------------------------------
    def graph(self, root_id: str, unit: Unit) -> Graph:
        """The compiled graph of a root pipeline (compiled once, then cached)."""
        with self._graphs_lock:
            g = self._graphs.get(root_id)
            if g is not None:
                self._graphs.move_to_end(root_id)
                return g
        stored = unit.get_pipeline(root_id)
        if stored is None:
            raise LookupError(f"pipeline {root_id} is not stored")
        return self._compiled(root_id, stored)

    def known_graph(self, root_id: str) -> Graph | None:
        """The graph of ``root_id`` if it is compiled already (None: it would have to be read)."""
        with self._graphs_lock:
            return self._graphs.get(root_id)

    def read_graphs(self, root_ids: Iterable[str], unit: Unit) -> None:
        """Compile the graphs of ``root_ids`` not compiled yet, their pipelines read in one
        statement (a batch's runs: one round trip, not one per run, on a server database)."""
        with self._graphs_lock:
            missing = [r for r in dict.fromkeys(root_ids) if r not in self._graphs]
        if len(missing) < 2:
            return  # one (or none): graph() reads it as it is needed
        for root_id, stored in unit.get_pipelines(missing).items():
            self._compiled(root_id, stored)

    def _compiled(self, root_id: str, stored: tuple[UserData, UserData, UserData]) -> Graph:
        tree, root_data, options = stored
        self._keep_root_data(root_id, root_data)  # read with the tree: root_data() needs no read of its own
        if "converge_of" in options:  # stored as given to run_pipeline, before normalising
            from culm.model.validator import renormalise

            tree = renormalise(tree, options["converge_of"])
        g = compile_tree(tree)
        self.remember_graph(g)
        return g

    def root_data(self, root_id: str, unit: Unit) -> UserData:
        """A run's root pipeline data (written once at start, so cached like the graph)."""
        with self._graphs_lock:
            data = self._root_data.get(root_id)
        if data is None:
            data = unit.get_root_data(root_id)
            self._keep_root_data(root_id, data)
        return data

    def _keep_root_data(self, root_id: str, data: UserData) -> None:
        with self._graphs_lock:
            self._root_data[root_id] = data
            while len(self._root_data) > 2048:
                self._root_data.popitem(last=False)

    def remember_graph(self, g: Graph) -> None:
        with self._graphs_lock:
            self._graphs[g.root_id] = g
            while len(self._graphs) > 2048:
                self._graphs.popitem(last=False)

    # -- leases --------------------------------------------------------------------------
    def lease(self) -> Lease:
        at = now()
        return self.owner, at + self.settings.lease_seconds, at
