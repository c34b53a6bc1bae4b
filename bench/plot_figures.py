"""Draw docs/benchmarks.png from docs/figures.json: commit-to-searchable lag, and search
latency against index size. `make bench` runs it after the measurements."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

DOCS = Path(__file__).resolve().parents[1] / "docs"


def main() -> None:
    figures = json.loads((DOCS / "figures.json").read_text())
    fig, (lag_ax, search_ax) = plt.subplots(1, 2, figsize=(12, 4.5))

    lag = figures["lag_ms"]
    names = list(lag)
    positions = range(len(names))
    lag_ax.bar([p - 0.2 for p in positions], [lag[n]["p50"] for n in names], 0.4, label="p50")
    lag_ax.bar([p + 0.2 for p in positions], [lag[n]["p95"] for n in names], 0.4, label="p95")
    lag_ax.set_xticks(list(positions), names, fontsize=8)
    lag_ax.set_ylabel("ms from COMMIT to searchable")
    lag_ax.set_title("Commit-to-searchable lag, one-field UPDATE\n(real model, CPU, 1 worker)")
    lag_ax.legend()

    search = figures["search_p50_ms"]
    sizes = search["sizes"]
    for name, values in search.items():
        if name == "sizes":
            continue
        style = "--" if name.startswith("exact") else "-"
        search_ax.plot(sizes, values, style, marker="o", label=name)
    search_ax.set_xscale("log")
    search_ax.set_yscale("log")
    search_ax.set_xlabel("field records in idxr.search_index")
    search_ax.set_ylabel("p50 latency, top-10 (ms)")
    search_ax.set_title("Search latency vs index size")
    search_ax.legend(fontsize=7)

    fig.tight_layout()
    out = DOCS / "benchmarks.png"
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
