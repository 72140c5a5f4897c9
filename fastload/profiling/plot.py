"""The report as a picture: throughput against ``num_workers`` with every ceiling drawn across it, and the
per-sample CPU cost of each stage. Needs matplotlib (``pip install 'fastload[profile]'``)."""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .report import ProfileReport


def matplotlib_available() -> bool:
    import importlib.util
    return importlib.util.find_spec("matplotlib") is not None


_COLORS = {"storage": "#1f77b4", "cpu": "#d62728", "transfer": "#9467bd", "step": "#2ca02c"}
_KIND_COLORS = {"read": "#1f77b4", "decode": "#d62728", "augment": "#ff7f0e", "convert": "#8c564b",
                "normalize": "#e377c2", "collate": "#7f7f7f", "fetch": "#bcbd22"}


def plot_report(report: ProfileReport, path: str | os.PathLike) -> bool:
    """Write the PNG; False (and no file) when matplotlib is missing or there is nothing to draw."""
    try:
        import matplotlib
        matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    sw = report.measured_sweep()
    points = [p for p in (sw.points if sw else []) if p.samples_s]
    cpu = report.measured_cpu()
    cmp_ = cpu.compare if cpu else None
    stage_sets = []
    if cpu and cpu.stages:
        label = "PIL pipeline" if cmp_ else "one process"
        stage_sets.append((label, cpu.stages))
    if cmp_ and cmp_.fastload_stages:
        stage_sets.append(("fastload ops", cmp_.fastload_stages))
    if not points and not stage_sets:
        return False
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), gridspec_kw={"width_ratios": [3, 2]})
    ax = axes[0]
    verdict = report.verdict
    ceil = verdict.ceilings
    if points:
        base_pf = next((p.prefetch for p in points if p.workers), None)
        main = sorted((p for p in points if p.workers == 0 or p.prefetch == base_pf), key=lambda p: p.workers)
        ax.plot([p.workers for p in main], [p.samples_s for p in main], "o-", color="black",
                label="measured (loader alone)", zorder=3)
        extra = [p for p in points if not any(p is q for q in main)]
        for p in extra:
            ax.plot([p.workers], [p.samples_s], "s", color="gray", zorder=3)
            ax.annotate(f"prefetch {p.prefetch}", (p.workers, p.samples_s), textcoords="offset points",
                        xytext=(6, -10), fontsize=8, color="gray")
        busy = [p for p in points if (p.other_cores_busy or 0) >= 0.25]
        for k, p in enumerate(busy):
            ax.plot([p.workers], [p.samples_s], "o", ms=13, mfc="none", mec="#ff7f0e", zorder=4,
                    label="other processes used >= 0.25 cores" if k == 0 else None)
            ax.annotate(f"others: {p.other_cores_busy:.2f} cores", (p.workers, p.samples_s),
                        textcoords="offset points", xytext=(6, 6), fontsize=7, color="#ff7f0e")
        knee = sw.knee
        if knee is not None:
            ax.annotate("knee", (knee.workers, knee.samples_s), textcoords="offset points", xytext=(-10, 10),
                        fontsize=9, arrowprops={"arrowstyle": "->"})
        top = max(p.samples_s for p in points)
        xmax = max(p.workers for p in points)
        ymax = top
        for k in ("storage", "cpu", "transfer", "step"):
            c = ceil.get(k)
            if not c:
                continue
            lab = {"storage": "storage", "cpu": "CPU", "transfer": "transfer", "step": "step demand"}[k]
            if c.simulated:
                lab += " (simulated)"
            nominal = c.nominal_samples_s
            lines = [(nominal if nominal is not None else c.samples_s, "--", lab if k == "step" else f"{lab} ceiling")]
            if nominal is not None:
                lines.append((c.samples_s, ":", "CPU left by other processes"))
            for y, style, text in lines:
                if y <= 3 * top:
                    ax.axhline(y, ls=style, color=_COLORS[k], lw=1.3, label=f"{text} {y:,.0f}/s")
                    ymax = max(ymax, y)
                else:
                    ax.plot([], [], ls=style, color=_COLORS[k], label=f"{text} {y:,.0f}/s (off scale)")
        if cmp_ and cmp_.fastload_ceiling_s:
            y = cmp_.fastload_ceiling_s
            ax.axhline(y, ls="-.", color="#8b0000", lw=1.3, label=f"CPU ceiling with fastload ops {y:,.0f}/s")
            ymax = max(ymax, y)
        ax.set_xticks(sorted({p.workers for p in points}))
        ax.set_xlim(-0.3, xmax + 0.3)
        ax.set_ylim(0, ymax * 1.15)
        ax.set_xlabel("num_workers")
        ax.set_ylabel("samples / s")
        ax.set_title("end-to-end throughput vs workers")
        ax.legend(fontsize=8, loc="best", framealpha=0.9)
        ax.grid(alpha=0.3)
    else:
        ax.set_axis_off()
        ax.text(0.5, 0.5, "no worker sweep", ha="center", va="center")
    ax = axes[1]
    if stage_sets:
        seen = set()
        for row, (label, stages) in enumerate(stage_sets):
            left = 0.0
            for s in stages:
                kind = s.kind.value
                ax.barh(row, s.cpu_ms, left=left, color=_KIND_COLORS.get(kind, "#17becf"), edgecolor="white",
                        label=kind if kind not in seen else None)
                seen.add(kind)
                if s.cpu_ms > 0.08 * sum(x.cpu_ms for x in stages):
                    ax.text(left + s.cpu_ms / 2, row, s.name.split(":")[0].split(" (")[0], ha="center",
                            va="center", fontsize=7, color="white")
                left += s.cpu_ms
            ax.text(left, row, f" {left:.2f} ms", va="center", fontsize=8)
        ax.set_yticks(range(len(stage_sets)), [s[0] for s in stage_sets])
        ax.invert_yaxis()
        ax.set_xlabel("CPU ms per sample (one process)")
        ax.set_title("where a sample's CPU time goes")
        ax.legend(fontsize=8, loc="lower right")
        ax.set_xlim(0, max(sum(x.cpu_ms for x in st) for _, st in stage_sets) * 1.3)
    else:
        ax.set_axis_off()
    head = verdict.headline
    bound = verdict.bound
    fig.suptitle(f"fastload profile: {bound}-bound", fontsize=12, fontweight="bold")
    if head:
        import textwrap
        fig.text(0.5, 0.005, "\n".join(textwrap.wrap(head, 160)), ha="center", va="bottom", fontsize=8)
    fig.tight_layout(rect=(0, 0.07, 1, 0.95))
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True
