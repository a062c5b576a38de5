import sys, time, tempfile, os
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import culm
from culm import api
from bench.trees import normal_pipeline, executed_nodes
n = int(sys.argv[1]) if len(sys.argv) > 1 else 100
d = tempfile.mkdtemp()
rt = culm.Runtime(f"sqlite:///{d}/b.db")
trees = [normal_pipeline() for _ in range(n)]
print("nodes per tree", executed_nodes(trees[0]))
t0 = time.perf_counter()
for t in trees:
    r = api.run_pipeline(rt, t); assert r.result, r.message
rt.wait_idle(120)
el = time.perf_counter() - t0
states = [api.get_pipeline_states(rt, t["id"]).data[t["id"]]["state"] for t in trees]
print(set(states), f"{el:.3f}s", f"{n*17/el:.0f} nodes/s")
rt.close()
