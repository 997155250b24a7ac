"""The report of benchmarks/serving.py: the issue's must-show checks computed from its JSON document, the Markdown
table and the plot."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

RUNNERS = {"one": [], "ray": ["--ray"], "ray2": ["--ray", "--ray-deployments", "2"],
           "one-spin": ["--spinning"], "one-nospin": ["--no-spinning"]}  # ONNX Runtime's threads: one-spin: one
#   model, spinning between calls too (in-process clip_rt's default); one-nospin: one model, never spinning; one (the
#   default): batches on a model that never spins, lone requests on a twin spinning inside a call
LABELS = {"one": "clip-rt serve (one process)", "one-spin": "clip-rt serve --spinning",
          "one-nospin": "clip-rt serve --no-spinning", "ray": "clip-rt serve --ray (one deployment)",
          "ray2": "clip-rt serve --ray --ray-deployments 2", "asgi": "no-op uvicorn + FastAPI",
          "noop-ray": "no-op Ray Serve, one deployment", "noop-ray2": "no-op Ray Serve, gateway -> encoder"}


def checks(doc: dict[str, Any]) -> list[tuple[str, bool, str]]:
    """The issue's must-show lines, computed from this run."""
    ip, rows = doc["in_process"], []
    for name, one in doc["runners"].items():
        if not name.startswith("one"):
            continue
        label = " ".join(["one process", *RUNNERS[name]])
        for kind in ("text", "image"):  # against in-process interleaved with this runner's requests
            got, ref = one["one_client"][kind]["p50_ms"], one.get("in_process_paired", ip)[kind]["p50_ms"]
            rows.append((f"{label}, 1 client, {kind}: p50 within 3 ms of in-process", got - ref <= 3.0,
                         f"{got} vs {ref} ms"))
        if not one["load"] or ip["encoder_images_per_s"] is None:
            continue
        top = one["load"][-1]
        paired = one.get("encoder_paired")
        best = paired["mean"] if paired else ip["encoder_images_per_s"]["best"]
        share = top["throughput_per_s"] / best
        where = (f"the encoder at batch {ip['encoder_images_per_s']['best_batch']} right before and after: "
                 f"{paired['before']}, {paired['after']}" if paired else "part 1's sweep")
        rows.append((f"{label}, {top['clients']} clients: >= 85% of the encoder's best", share >= 0.85,
                     f"{top['throughput_per_s']} / {best} images/s = {share:.1%}; {where}"))
        rows.append((f"{label}, load: no failed, lost or mismatched request", all(
            not p["failed"] and not p["lost"] and not p["mismatched"] for p in one["load"]),
            f"min cosine {min(p['min_cosine'] for p in one['load'])}"))
        m = top["malformed"]
        rows.append((f"{label}: every malformed request answered 4xx with a reason",
                     m["sent"] == m["answered_4xx"] > 0 and m["without_reason"] == 0,
                     f"{m['answered_4xx']}/{m['sent']}"))
    for name in ("ray", "ray2"):  # against its no-op floor and in-process, both interleaved with its requests
        r = doc["runners"].get(name)
        if r is None or "floor_paired" not in r:
            continue
        for kind in ("text", "image"):
            got, here = r["one_client"][kind]["p50_ms"], r["in_process_paired"][kind]["p50_ms"]
            bound = r["floor_paired"][kind]["p50_ms"] + here
            rows.append((f"{name}, 1 client, {kind}: p50 within 3 ms of the no-op deployment + in-process",
                         got - bound <= 3.0, f"{got} vs {r['floor_paired'][kind]['p50_ms']} + {here} = {bound:.2f} ms"))
    for name, r in doc["runners"].items():
        s = r["sigterm"]
        if s is None:
            continue
        counted = s["server_count"]
        ok = (s["answered_200_before_signal"] == s["sent_before_signal"]
              and (counted is None or counted["answered"] == counted["accepted"])
              and s["exit_code"] == 0 and s["seconds_to_exit"] < 10 and not s["processes_left"])
        rows.append((f"{name}: SIGTERM under 64-client load", ok,
                     f"{s['answered_200_before_signal']}/{s['sent_before_signal']} requests sent before the signal "
                     f"answered 200 ({s['outcomes_before_signal']}), server's count {counted}, exit "
                     f"{s['exit_code']} after {s['seconds_to_exit']} s, {len(s['processes_left'])} processes left"))
    return rows


def markdown(doc: dict[str, Any]) -> str:
    ip = doc["in_process"]
    lines = [f"# Serving hops: {doc['package']} {doc['precision']}", "", f"Machine: {doc['machine']}. Command: "
             f"`{doc['command']}`.", "", "## 1 client, sequential (p50 / p99 ms)", "",
             "| stack | one caption | one JPEG (decode included) | start-up to first 200 |", "| --- | --- | --- | --- |",
             f"| in-process clip_rt | {ip['text']['p50_ms']} / {ip['text']['p99_ms']} | {ip['image']['p50_ms']} / "
             f"{ip['image']['p99_ms']} | |"]
    for name, r in [*doc["floors"].items(), *((k, v["one_client"]) for k, v in doc["runners"].items())]:
        startup = doc["runners"][name]["startup_s"] if name in doc["runners"] else ""
        lines.append(f"| {LABELS[name]} | {r['text']['p50_ms']} / {r['text']['p99_ms']} | {r['image']['p50_ms']} / "
                     f"{r['image']['p99_ms']} | {startup} |")
        floor = doc["runners"].get(name, {}).get("floor_paired")
        if floor:  # the no-op application on the same Serve proxy, interleaved with this runner's requests
            lines.append(f"| ... its no-op floor, same proxy, interleaved | {floor['text']['p50_ms']} / "
                         f"{floor['text']['p99_ms']} | {floor['image']['p50_ms']} / {floor['image']['p99_ms']} | |")
        here = doc["runners"].get(name, {}).get("in_process_paired")
        if here:  # the reference its checks use: in-process calls interleaved with this runner's requests
            lines.append(f"| ... in-process, interleaved with it | {here['text']['p50_ms']} / {here['text']['p99_ms']} "
                         f"| {here['image']['p50_ms']} / {here['image']['p99_ms']} | |")
    enc = ip["encoder_images_per_s"]
    if enc is None:  # --quick: 1 client only
        lines += ["", "## The issue's must-show checks (1 client only: --quick)", ""]
        lines += [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks(doc)]
        return "\n".join(lines) + "\n"
    lines += ["", f"In-process image encoder, decode included (encode_image_files), images/s by batch: "
              + ", ".join(f"{b}: {v}" for b, v in enc["by_batch"].items()) + f"; best {enc['best']}.", "",
              "## Clients sending one JPEG each per request", "",
              "| runner | clients | requests/s | % of encoder best (part 1) | p50 / p99 ms | "
              "model batch mean (largest) | "
              "failed / lost / mismatched | min cosine | malformed 4xx |", "|" + " --- |" * 9]
    for name, r in doc["runners"].items():
        for p in r["load"]:
            m = p["malformed"]
            lines.append(f"| {name} | {p['clients']} | {p['throughput_per_s']} | "
                         f"{100 * p['throughput_per_s'] / enc['best']:.0f}% | {p['p50_ms']} / {p['p99_ms']} | "
                         f"{p['model_batches']['mean']} ({p['model_batches']['largest']}) | "
                         f"{sum(p['failed'].values())} / {p['lost']} / {p['mismatched']} | {p['min_cosine']} | "
                         f"{m['answered_4xx']}/{m['sent']} |")
    paired = [f"{name}: {r['encoder_paired']['before']} before, {r['encoder_paired']['after']} after"
              for name, r in doc["runners"].items() if r.get("encoder_paired")]
    if paired:  # the bound of the throughput check
        lines += ["", f"The in-process encoder at batch {enc['best_batch']}, images/s, measured right before and right "
                  f"after each runner's largest load point (the throughput check's bound is their mean): "
                  + "; ".join(paired) + "."]
    lines += ["", "## SIGTERM under 64-client load", "", "Sent: the request's body was written to the socket before "
              "the signal (httpcore trace).", "", "| runner | sent before the signal | answered 200 | after the "
              "signal | exit code | seconds to exit | processes left | server's own count (answered / accepted) |",
              "|" + " --- |" * 8]
    for name, r in doc["runners"].items():
        s = r["sigterm"]
        if s is None:
            continue
        c = s["server_count"]
        count = f"{c['answered']} / {c['accepted']}" if c else "(not printed by this runner)"
        lines.append(f"| {name} | {s['sent_before_signal']} | {s['answered_200_before_signal']} | "
                     f"{s['outcomes_after_signal']} | {s['exit_code']} | {s['seconds_to_exit']} | "
                     f"{len(s['processes_left'])} | {count} |")
    lines += ["", "## The issue's must-show checks", ""]
    lines += [f"- {'PASS' if ok else 'FAIL'}: {what} ({detail})" for what, ok, detail in checks(doc)]
    return "\n".join(lines) + "\n"


def plot(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(16, 4.5))
    names = ["in-process", *doc["floors"], *doc["runners"]]
    sources = [doc["in_process"], *doc["floors"].values(), *(r["one_client"] for r in doc["runners"].values())]
    x = np.arange(len(names))
    for i, kind in enumerate(("text", "image")):
        axes[0].bar(x + (i - 0.5) * 0.4, [s[kind]["p50_ms"] for s in sources], 0.4, label=f"{kind} p50")
    axes[0].set_xticks(x, names, rotation=30, fontsize=7)
    axes[0].set_ylabel("ms")
    axes[0].set_title("1 client: one caption, one JPEG")
    axes[0].legend(fontsize=7)
    for name, r in doc["runners"].items():
        c = [p["clients"] for p in r["load"]]
        axes[1].plot(c, [p["throughput_per_s"] for p in r["load"]], "-o", label=name)
        axes[2].plot(c, [p["p50_ms"] for p in r["load"]], "-o", label=f"{name} p50")
        axes[2].plot(c, [p["p99_ms"] for p in r["load"]], "--", alpha=0.6, label=f"{name} p99")
    axes[1].axhline(doc["in_process"]["encoder_images_per_s"]["best"], color="black", ls=":",
                    label="in-process encoder, best batch")
    axes[2].set_yscale("log")
    for ax, title in ((axes[1], "images/s"), (axes[2], "latency, ms")):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("concurrent clients")
        ax.set_title(title)
        ax.legend(fontsize=7)
    fig.suptitle(f"clip-rt serve: {doc['package']} {doc['precision']}, {doc['machine']}", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
