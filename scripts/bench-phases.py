#!/usr/bin/env python3
"""Where `docker run` spends its time under runvm: the phase table and the
timeline chart of `make bench`.

Input (stdin), one line per run under runvm:
    <client start ms> <client end ms> <the supervisor's stderr line>
where the supervisor's line (RUNVM_DEBUG=phases) holds
`t0=<unix ms> supervisor=<ms> helpers=<ms> ...` (ms since t0), and one
line per run under runc:
    runc <client start ms> <client end ms>

Prints the median, min and max of each phase and writes the medians as an
SVG timeline, runvm's phases above runc's whole run, to the path given.
"""

import re
import statistics
import sys

# (name in the supervisor's line, what the phase is): each phase ends at
# its mark and starts at the previous one's.
PHASES = [
    ("t0", "docker and containerd, until runvm create starts"),
    ("rewritten", "runvm create: the bundle rewritten for the VM"),
    ("supervisor", "runc create and start, until the supervisor runs"),
    ("helpers", "supervisor set-up: network capture, sockets, virtiofsd"),
    ("qemu", "QEMU started"),
    ("kernel", "QEMU set-up, firmware, kernel loading"),
    ("init", "guest kernel boot, until /init"),
    ("ready", "agent: early mounts, modules, host channel open"),
    ("request", "the host's start request reaches the agent"),
    ("prepared", "container set-up in the guest: root, mounts, network"),
    ("workload", "the workload's process starts"),
    ("exited", "workload runs, exit status reaches the host"),
    ("stopped", "VM power-off, QEMU and virtiofsd stop"),
    ("end", "runc and runvm delete, docker returns"),
]
COLOURS = ["#9e9e9e", "#a1887f", "#8d6e63", "#ffb74d", "#fff176", "#e57373", "#ba68c8",
           "#64b5f6", "#90caf9", "#4dd0e1", "#4db6ac", "#81c784", "#aed581", "#bdbdbd"]


def parse(lines):
    runs, runc = [], []
    for line in lines:
        parts = line.split()
        if len(parts) >= 3 and parts[0] == "runc":
            runc.append(int(parts[2]) - int(parts[1]))
            continue
        if len(parts) < 3:
            continue
        start, end = int(parts[0]), int(parts[1])
        marks = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(-?\d+)", line))
        if "t0" not in marks:
            continue
        t0 = marks.pop("t0")
        at = {"t0": t0 - start, "end": end - start}
        for name, _ in PHASES[1:-1]:
            if name in marks:
                at[name] = t0 - start + marks[name]
        if all(name in at for name, _ in PHASES):
            runs.append(at)
    return runs, runc


def durations(run):
    out, prev = [], 0
    for name, _ in PHASES:
        out.append(run[name] - prev)
        prev = run[name]
    return out


def svg(medians, runc_ms, path):
    total = sum(medians)
    width, left, bar_h = 900, 70, 34
    scale = (width - left - 20) / max(total, runc_ms or 0, 1)
    rows = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" '
            f'height="{150 + 18 * len(PHASES)}" font-family="sans-serif" font-size="12">',
            '<text x="10" y="20" font-size="14">docker run --rm busybox true: '
            'median of each phase (ms)</text>']
    x = left
    rows.append(f'<text x="10" y="{52}">runvm</text>')
    for (name, _), d, colour in zip(PHASES, medians, COLOURS):
        w = max(d * scale, 0)
        rows.append(f'<rect x="{x:.1f}" y="30" width="{w:.1f}" height="{bar_h}" '
                    f'fill="{colour}" stroke="#333" stroke-width="0.5"><title>{name}: {d} ms</title></rect>')
        x += w
    rows.append(f'<text x="{x + 4:.1f}" y="52">{total} ms</text>')
    if runc_ms:
        rows.append(f'<text x="10" y="{96}">runc</text>')
        rows.append(f'<rect x="{left}" y="74" width="{runc_ms * scale:.1f}" height="{bar_h}" '
                    f'fill="#546e7a"/><text x="{left + runc_ms * scale + 4:.1f}" y="96">{runc_ms} ms</text>')
    # Seconds on an axis.
    for s in range(0, int(max(total, runc_ms or 0) / 1000) + 1):
        tx = left + s * 1000 * scale
        rows.append(f'<line x1="{tx:.1f}" y1="112" x2="{tx:.1f}" y2="117" stroke="#333"/>'
                    f'<text x="{tx - 4:.1f}" y="129">{s} s</text>')
    y = 150
    for (name, what), d, colour in zip(PHASES, medians, COLOURS):
        rows.append(f'<rect x="10" y="{y - 10}" width="12" height="12" fill="{colour}" stroke="#333" stroke-width="0.5"/>'
                    f'<text x="28" y="{y}">{name}: {what} ({d} ms)</text>')
        y += 18
    rows.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(rows) + "\n")


def main():
    runs, runc = parse(sys.stdin)
    if not runs:
        sys.exit("bench-phases: no run printed its phases (RUNVM_DEBUG=phases)")
    table = list(zip(*(durations(r) for r in runs)))
    medians = [int(statistics.median(col)) for col in table]
    total = [r["end"] for r in runs]
    print(f"{'phase (ends when)':<12} {'median':>7} {'min':>6} {'max':>6}  what")
    for (name, what), col, med in zip(PHASES, table, medians):
        print(f"{name:<12} {med:>5} ms {min(col):>6} {max(col):>6}  {what}")
    print(f"{'total':<12} {int(statistics.median(total)):>5} ms {min(total):>6} {max(total):>6}  "
          f"docker run, end to end (n={len(runs)})")
    runc_ms = int(statistics.median(runc)) if runc else None
    if runc_ms:
        print(f"{'runc total':<12} {runc_ms:>5} ms {min(runc):>6} {max(runc):>6}  the same under runc")
    if len(sys.argv) > 1:
        svg(medians, runc_ms, sys.argv[1])
        print(f"timeline chart: {sys.argv[1]}")


if __name__ == "__main__":
    main()
