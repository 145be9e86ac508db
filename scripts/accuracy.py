#!/usr/bin/env python3
"""Regenerates docs/ACCURACY.md from `llmem validate --format json`.

Usage: python3 scripts/accuracy.py [path/to/llmem]
"""
import collections
import csv
import json
import statistics
import subprocess
import sys

LLMEM = sys.argv[1] if len(sys.argv) > 1 else "build/ci/tools/llmem/llmem"
TIERS = [
    ("CPU tier (validation/data/cpu_tier.csv)", "validation/data/cpu_tier.csv"),
    ("Published measurements (../shared/validation/published.csv)", "../shared/validation/published.csv"),
    ("Further published measurements (validation/data/published_extra.csv)",
     "validation/data/published_extra.csv"),
]


def run(path):
    out = subprocess.run([LLMEM, "validate", path, "--format", "json"], check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out)


def stats(rows):
    errs = sorted(abs(r["error_pct"]) for r in rows)
    if not errs:
        return "—", "—", "—", 0
    p90 = errs[max(0, int(-(-0.9 * len(errs) // 1)) - 1)]
    return (f"{statistics.median(errs):.2f} %", f"{p90:.2f} %", f"{errs[-1]:.2f} %",
            sum(1 for r in rows if r["error_pct"] < 0))


def reason(r):
    # Every reason lives in llmem validate (src/validate/known_gaps.cc), which
    # shows it with the row as "why".
    return r.get("why") or "not yet investigated"


def confidence(path):
    """(line -> confidence) from the notes column of a measurement file."""
    out = {}
    try:
        with open(path, newline="") as f:
            reader = csv.DictReader(f)
            for row in reader:
                notes = row.get("notes") or ""
                out[reader.line_num] = notes.split(";")[0].replace("confidence=", "").strip()
    except OSError:
        pass
    return out


def source(url):
    u = url.lower()
    for name in ("torchtune", "litgpt", "peft", "transformers", "deepspeed", "2404.10933"):
        if name in u:
            return {"2404.10933": "LLMem paper"}.get(name, {"litgpt": "LitGPT"}.get(name, name))
    return "other"


def framework_section(path, doc):
    conf = confidence(path)
    rows = [r for r in doc["rows"] if source(r.get("source_url", "")) in ("torchtune", "LitGPT")]
    lines = ["### torchtune and LitGPT rows", "",
             "Framework profiles `--framework torchtune|litgpt` (docs/frameworks.md). Per source, "
             "rows compared; then all of them with confidence=high.", "",
             "| source | compared | skipped | median | p90 | max | under |", "|---|---|---|---|---|---|---|"]
    groups = collections.defaultdict(list)
    for r in rows:
        groups[source(r["source_url"])].append(r)
    high = []
    for name in sorted(groups):
        comp = [r for r in groups[name] if "error_pct" in r]
        high += [r for r in comp if conf.get(r["line"]) == "high"]
        med, p90, mx, under = stats(comp)
        skipped = sum(1 for r in groups[name] if "skipped_reason" in r)
        lines.append(f"| {name} | {len(comp)} | {skipped} | {med} | {p90} | {mx} | {under} |")
    med, p90, mx, under = stats(high)
    lines.append(f"| **both, confidence=high** | {len(high)} | | {med} | {p90} | {mx} | {under} |")
    lines += ["", "| line | source | model | setting | counter | measured GiB | estimate GiB | error | why (> 5 %) |",
              "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "error_pct" in r:
            lines.append(compared_line(r, [source(r["source_url"])]))
    band = [r for r in rows if "band_error_pct" in r]
    if band:
        lines += ["", "#### Counter not named",
                  "",
                  "torchtune's README tables quote a peak without saying whether it is allocated, active or "
                  "reserved memory. Those rows are compared with the band [allocated, reserved] llmem "
                  "estimates and kept out of the statistics above; the distance is to the nearer end "
                  "(0 inside).", "",
                  "| line | model | setting | measured GiB | allocated GiB | reserved GiB | distance | why (> 5 %) |",
                  "|---|---|---|---|---|---|---|---|"]
        for r in band:
            why = reason(r) if abs(r["band_error_pct"]) > 5 else ""
            lines.append(f"| {r['line']} | {r['model']} | {r['setting']} | {r['measured_bytes'] / 2**30:.2f} | "
                         f"{r['estimated_allocated_bytes'] / 2**30:.2f} | "
                         f"{r['estimated_reserved_bytes'] / 2**30:.2f} | {r['band_error_pct']:+.2f} % | {why} |")
    lines.append("")
    return lines


def compared_line(r, extra):
    """One compared row of a per-source table: line, `extra` columns, model, setting, counter,
    measured, estimate, error and the reason when it is above 5 %."""
    why = reason(r) if abs(r["error_pct"]) > 5 else ""
    cells = [str(r["line"]), *extra, r["model"], r["setting"], r["counter"],
             f"{r['measured_bytes'] / 2**30:.2f}", f"{r['estimated_bytes'] / 2**30:.2f}",
             f"{r['error_pct']:+.2f} %", why]
    return "| " + " | ".join(cells) + " |"


def rows_table(rows, title, intro):
    """A section listing compared rows one line each (nothing when there are none)."""
    if not rows:
        return []
    lines = ([f"### {title}", ""] if title else []) + [intro, "",
             "| line | model | setting | counter | measured GiB | estimate GiB | error | why (> 5 %) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [compared_line(r, []) for r in rows]
    lines.append("")
    return lines


def peft_section(doc):
    """The Hugging Face / PEFT rows (PEFT's README and accelerate docs), one line each."""
    rows = [r for r in doc["rows"] if source(r.get("source_url", "")) == "peft" and "error_pct" in r]
    return rows_table(rows, "Hugging Face / PEFT rows",
                      "PEFT v0.2.0's README and `docs/source/accelerate/{deepspeed,fsdp}.md` "
                      "(docs/distributed.md, published rows).")


def extra_section(doc):
    """Every row of the project's own collection of published figures."""
    rows = [r for r in doc["rows"] if "error_pct" in r]
    return rows_table(rows, "",
                      "Collected for this project from public sources; each row's notes give the "
                      "source, how the figure was read and the setting (Liger-Kernel's Hugging Face "
                      "example: docs/frameworks.md, \"Liger\").")


def main():
    lines = ["# Accuracy", "",
             "Generated by `python3 scripts/accuracy.py` from `llmem validate`; do not edit by hand.",
             "Error = (estimate − measured) / measured; negative is an under-prediction (a missed OOM).",
             "Each row is compared like with like: allocated with allocated, reserved with reserved,",
             "device (nvidia-smi) with device. The CPU tier compares exact live tensor-storage bytes.", ""]
    for title, path in TIERS:
        doc = run(path)
        s = doc["summary"]
        lines += [f"## {title}", "",
                  f"Compared {s['compared']}, skipped {s['skipped']}. |error| median "
                  f"{s['median_abs_pct']:.2f} %, p90 {s['p90_abs_pct']:.2f} %, max {s['max_abs_pct']:.2f} %; "
                  f"under-predictions {s['under_predictions']} (beyond 1 %: {s['under_predictions_beyond_1pct']})."
                  + (f" Counter not named: {s['band_rows']} rows compared with [allocated, reserved], "
                     f"{s['band_within']} inside." if s.get("band_rows") else ""), ""]
        compared = [r for r in doc["rows"] if "error_pct" in r]
        if compared:
            groups = collections.defaultdict(list)
            for r in compared:
                key = r["model"].split("/")[-1].replace(".json", "")
                groups[key].append(r)
            lines += ["| model | rows | median | p90 | max | under |", "|---|---|---|---|---|---|"]
            for key in sorted(groups):
                med, p90, mx, under = stats(groups[key])
                lines.append(f"| {key} | {len(groups[key])} | {med} | {p90} | {mx} | {under} |")
            lines.append("")
        if path.endswith("published_extra.csv"):
            lines += extra_section(doc)
        elif "published" in path:
            lines += framework_section(path, doc)
            lines += peft_section(doc)
        skipped = collections.Counter(r["skipped_reason"].split(":")[0] for r in doc["rows"]
                                      if "skipped_reason" in r)
        if skipped:
            lines += ["Skipped rows, by reason:", ""]
            for reason, n in skipped.most_common():
                lines.append(f"- {n} × {reason}")
            lines.append("")
    with open("docs/ACCURACY.md", "w") as f:
        f.write("\n".join(lines))


if __name__ == "__main__":
    main()
