"""Print a pytest-benchmark run as a Markdown table: `python bench/table.py RUN.json`.

RUN.json is what `python -m pytest bench/ --benchmark-json RUN.json` wrote. The table names the
machine (CPU model and flags, versions, the fp32 SGEMM roof measured in that run) and gives, per
group, each case's images/s, its ratio to the group's first case, its share of the roof, and
batch-1 latency where measured.
"""

import json
import sys
from collections import defaultdict


def machine_line(info):
    flags = ", ".join(info.get("cpu_flags", [])) or "none of avx2/avx512/amx"
    return (f"Machine: {info.get('cpu_model', info.get('cpu', {}).get('brand_raw', '?'))} ({flags}); "
            f"{info.get('torch_threads', '?')} threads; torch {info.get('torch', '?')}, "
            f"onnxruntime {info.get('onnxruntime', '?')}; fp32 SGEMM roof {info.get('sgemm_roof_gflops', '?')} GFLOP/s")


def table(run):
    lines = [machine_line(run.get("machine_info", {})), f"Run: {run.get('datetime', '?')}", ""]
    groups = defaultdict(list)
    for bench in run["benchmarks"]:
        groups[bench.get("group") or "ungrouped"].append(bench)
    for group, benches in groups.items():
        lines += [f"**{group}**", "", "| case | img/s | vs first | roof share | p50 / p99 ms | rounds |", "|---|---:|---:|---:|---:|---:|"]
        first = benches[0]["extra_info"].get("images_per_s")
        for bench in benches:
            extra = bench["extra_info"]
            speed = extra.get("images_per_s")
            ratio = f"{speed / first:.2f}x" if speed and first else ""
            share = f"{extra['roof_share'] * 100:.0f}%" if "roof_share" in extra else ""
            latency = f"{extra['p50_ms']:.3f} / {extra['p99_ms']:.3f}" if "p50_ms" in extra else ""
            name = bench["name"].split("[", 1)[-1].rstrip("]") if "[" in bench["name"] else bench["name"]
            lines.append(f"| {name} | {speed:,.0f} | {ratio} | {share} | {latency} | {bench['stats']['rounds']} |"
                         if speed else f"| {name} | | | | | {bench['stats']['rounds']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python bench/table.py RUN.json  (from pytest bench/ --benchmark-json RUN.json)", file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            run = json.load(f)
    except (OSError, ValueError) as error:
        print(f"table: cannot read {argv[0]}: {error}", file=sys.stderr)
        return 1
    print(table(run))
    return 0


if __name__ == "__main__":
    sys.exit(main())
