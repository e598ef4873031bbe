"""One-off on the GPU machine: bench/start_cost's phase and step tables for `run --rm` with and
without --gpus all (carried interpreter, the device check's image)."""
import os, sys, types
sys.path.insert(0, os.getcwd())
from bench import start_cost as sc
image, n = sys.argv[1], int(sys.argv[2])
base = sc.PHASE_SCRIPT
assert '["run", "--rm", sys.argv[1], "/bin/true"]' in base
for label, extra in (("none", []), ("gpus-all", ["--gpus", "all"])):
    sc.PHASE_SCRIPT = base.replace('["run", "--rm", sys.argv[1], "/bin/true"]',
                                   '["run", "--rm", *%r, sys.argv[1], "/bin/true"]' % (extra,))
    mc = types.SimpleNamespace(prefix=[], python=sys.executable, env=dict(os.environ))
    sc.one_phase_run(mc, image)            # warm-up
    runs, traces = [], []
    for _ in range(n):
        p, s = sc.one_phase_run(mc, image)
        runs.append(p); traces.append(s)
    print(f"\n### {label}: phases (n={n})\n"); print(sc.phase_table(runs))
    print(f"\n### {label}: steps\n"); print(sc.steps_table(traces, floor_ms=0.5))
