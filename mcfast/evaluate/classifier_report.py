"""The classifier study's outputs: its table in markdown and the files of a finished study (results.json,
table.md, the AUC plot, the synthetic provenance copy).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np


def _fmt_p(p: float) -> str:
    return "–" if p is None or not np.isfinite(p) else (f"{p:.3f}" if p >= 0.001 else "< 0.001")


def results_table_markdown(results: dict) -> str:
    """The study table in markdown (one row per increment; mean over seeds, bootstrap interval, paired test)."""
    ci = int(round(results["config"]["study"]["ci"] * 100))
    seeds = results["config"]["study"]["seeds"]
    lines = [f"| synthetic added | real train (abnormal) | synthetic (abnormal) | share | AUC mean ± sd | AUC {ci}% CI | "
             f"F1 mean ± sd | F1 {ci}% CI | ΔAUC vs real-only [{ci}% CI], p | ΔF1 vs real-only [{ci}% CI], p |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    n_real_abn = results["splits"]["train"]["abnormal"]
    for r in results["rows"]:
        cap = " (capped)" if r["capped"] else ""
        pt = r.get("paired_vs_real_only")
        if pt and "auc" in pt:
            a, f = pt["auc"], pt["f1"]
            d_auc = f"{a['delta']:+.3f} [{a['delta_lo']:+.3f}, {a['delta_hi']:+.3f}], p {_fmt_p(a['p'])}"
            d_f1 = f"{f['delta']:+.3f} [{f['delta_lo']:+.3f}, {f['delta_hi']:+.3f}], p {_fmt_p(f['p'])}"
        else:
            d_auc = d_f1 = "(reference)" if r["increment"] == 0 else "–"
        lines.append(f"| +{r['increment']:.0%} | {r['n_real_train']} ({n_real_abn}) | "
                     f"{r['n_synthetic']} ({r.get('n_synthetic_abnormal', 0):g}){cap} | "
                     f"{r['synthetic_share']:.2f} | {r['auc_mean']:.3f} ± {r['auc_std']:.3f} | "
                     f"[{r['auc_lo']:.3f}, {r['auc_hi']:.3f}] | {r['f1_mean']:.3f} ± {r['f1_std']:.3f} | "
                     f"[{r['f1_lo']:.3f}, {r['f1_hi']:.3f}] | {d_auc} | {d_f1} |")
    for s in results["skipped"]:
        lines.append(f"| +{s['increment']:.0%} | – | – | – | pending: {s['reason']} | | | | | |")
    sp = results["splits"]
    lines.append("")
    lines.append("Split (women / images / abnormal): " + "; ".join(
        f"{k} {sp[k]['groups']} / {sp[k]['n']} / {sp[k]['abnormal']} ({sp[k]['abnormal'] / max(sp[k]['n'], 1):.0%})"
        for k in ("train", "val", "test")) + ".")
    pool = results.get("synthetic_pool")
    if pool:
        share = pool.get("abnormal_share_used")
        lines.append(f"Synthetic pool: {pool['n']} images, {pool['abnormal']} abnormal "
                     f"({pool['abnormal'] / max(pool['n'], 1):.0%}); each increment draws "
                     + (f"{share:.0%} abnormal (the real training share)" if share is not None else "at random")
                     + ", nested across increments.")
    n_pb = results["config"]["study"].get("n_paired_bootstrap", "")
    lines.append(f"Seeds {seeds}; intervals: stratified bootstrap over test images of the "
                 f"seed-mean metric ({results['config']['study']['n_bootstrap']} resamples). "
                 "F1 at the threshold that maximised F1 on the validation split. Δ vs real-only: paired "
                 f"two-level bootstrap ({n_pb} resamples of test images, stratified, and of seed pairs; each "
                 "row's seed s is paired with real-only seed s), two-sided p.")
    return "\n".join(lines) + "\n"


def write_results(results: dict, out_dir: str | Path, stem: str | None = None) -> dict[str, Path]:
    """results.json, table.md, auc_vs_synthetic.png and the synthetic provenance copy; with ``stem`` (the
    report copy, ``study.report_name`` in ``study.report_dir``) STEM.json, STEM.md, STEM.png and
    STEM_provenance.json."""
    from mcfast.atomic import write_text
    from mcfast.evaluate.plots import plot_auc_vs_share

    out = Path(out_dir)
    names = ({"json": "results.json", "table": "table.md", "plot": "auc_vs_synthetic.png",
              "provenance": "synthetic_provenance.json"} if stem is None else
             {"json": f"{stem}.json", "table": f"{stem}.md", "plot": f"{stem}.png",
              "provenance": f"{stem}_provenance.json"})
    paths = {key: out / names[key] for key in ("json", "table", "plot")}
    write_text(paths["json"], json.dumps(results, indent=1))
    write_text(paths["table"], f"# {results['name']}\n\n" + results_table_markdown(results))
    plot_auc_vs_share(results, paths["plot"])
    if results.get("provenance"):
        paths["provenance"] = out / names["provenance"]
        write_text(paths["provenance"], json.dumps(results["provenance"]["content"], indent=1))
    return paths
