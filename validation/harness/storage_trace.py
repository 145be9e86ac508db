#!/usr/bin/python3
"""Op-level exact storage stream of the last step, around one phase's peak.

    /usr/bin/python3 validation/harness/storage_trace.py backward --config validation/configs/tiny-falcon.json \
        --batch 2 --seq 32 --precision fp32 [measure_cpu.py options...]

Runs the measure_cpu.py step (same build, same seed), records the last step with the legacy profiler's
memory report (as the exact storage count does) and prints, for the phase named first, its peak and the
allocations/frees around it: running live bytes, the signed size and the innermost op names. BEFORE=n
(environment) sets how many events before the peak are shown; SMALL=1 also lists every allocation under
6 KB of the phase (e.g. a checkpoint's 5056-byte RNG state). Used to find which tensor a per-phase gap
between `llmem estimate` and the tier's storage peaks is.
"""
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import measure_cpu as mc  # noqa: E402  (mallopt before torch)
import models  # noqa: E402
import torch  # noqa: E402


def main():
    phase = sys.argv[1]
    args = mc.parser().parse_args(sys.argv[2:])
    with open(args.config) as f:
        cfg = json.load(f)
    torch.set_num_threads(args.threads)
    model, opt, batch, hook = mc.build(args, cfg)
    counter = mc.StorageCounter()
    on = [False]

    def mark(key):
        if on[0]:
            counter.set_phase(key)
        models.PHASE_HOOK = ((lambda n: counter.set_phase((key[0], n)))
                             if key[1] == "forward" and on[0] else None)

    def before(step):
        if step == args.steps:
            counter.start()
            on[0] = True

    mc.train_steps(model, opt, batch, args, mark, before)
    recs = torch.autograd._disable_profiler_legacy()
    events = [e for th in recs for e in th]
    cur, key, stream, stack = counter.base, None, [], []
    for e in events:
        kind = e.kind()
        if kind == "push":
            if e.name().startswith("PHASE::"):
                key = e.name().split("::")[2]
            stack.append(e.name())
        elif kind == "pop":
            if stack:
                stack.pop()
        elif kind == "memory_alloc":
            cur += e.cpu_memory_usage()
            stream.append((key, cur, e.cpu_memory_usage(), "/".join(stack[-2:])))
    if os.environ.get("SMALL"):
        for s in stream:
            if s[0] == phase and 0 < abs(s[2]) < 6000:
                print("small", s[1], "%+d" % s[2], s[3])
    idx = [i for i, s in enumerate(stream) if s[0] == phase]
    if not idx:
        sys.exit("no events in phase %r" % phase)
    pk = max(idx, key=lambda i: stream[i][1])
    print("peak", stream[pk][1])
    for i in range(max(0, pk - int(os.environ.get("BEFORE", 25))), min(len(stream), pk + 8)):
        print(("*" if i == pk else " "), stream[i][1], "%+d" % stream[i][2], stream[i][3])


if __name__ == "__main__":
    main()
