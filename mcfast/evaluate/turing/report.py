"""Turn a study's answers into numbers (JSON) and a self-contained HTML report with embedded plots."""
from __future__ import annotations

import base64
import datetime as _dt
import html
import io
import json
import math
from collections import defaultdict
from pathlib import Path

import numpy as np

from mcfast.extras import require

require("matplotlib", extra="turing", feature="the Turing report")
from matplotlib.figure import Figure  # noqa: E402

from mcfast.atomic import write_text
from mcfast.evaluate.turing.stats import Proportion, fleiss_kappa, performance, rating_table
from mcfast.evaluate.turing.store import CONFIDENCE_LEVELS, Answer, Store


def _clean(value):
    """JSON has no NaN: write it as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def _accuracy_by(answers: list[Answer], key) -> dict[str, dict]:
    groups: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        groups[key(a)].append(a)
    return {name: vars(Proportion.of(sum(a.answer == a.truth for a in group), len(group)))
            for name, group in sorted(groups.items())}


def analyse(store: Store) -> dict:
    """All numbers of the report: per reader, pooled, by confidence and window, Fleiss' kappa, per image."""
    images = store.images()
    answers = store.answers()
    total = len(images)
    per_reader: dict[str, list[Answer]] = defaultdict(list)
    for a in answers:
        per_reader[a.reader].append(a)

    readers = []
    for name, given in per_reader.items():
        perf = performance([a.truth for a in given], [a.answer for a in given], [a.confidence for a in given])
        readers.append({"reader": name, "complete": len(given) == total, **perf.to_dict()})
    pooled = performance([a.truth for a in answers], [a.answer for a in answers], [a.confidence for a in answers])

    complete = {r["reader"] for r in readers if r["complete"]}
    if len(complete) >= 2:
        table, items, raters = rating_table({name: {a.image_id: a.answer for a in per_reader[name]}
                                             for name in complete})
        kappa = {"value": fleiss_kappa(table), "readers": raters, "items": len(items), "note": ""}
    else:
        kappa = {"value": math.nan, "readers": sorted(complete), "items": 0,
                 "note": "needs at least two readers who answered every image"}

    called_fake: dict[str, int] = defaultdict(int)
    answered: dict[str, int] = defaultdict(int)
    for a in answers:
        answered[a.image_id] += 1
        called_fake[a.image_id] += a.answer == "synthetic"
    per_image = [{"position": im.position, "image_id": im.image_id, "truth": im.truth, "window": im.window,
                  "source": im.source, "answers": answered[im.image_id], "called_fake": called_fake[im.image_id]}
                 for im in images]

    meta = store.meta()
    return _clean({
        "study": {k: meta[k] for k in ("n", "seed", "size", "modality", "real_dir", "synthetic_dir", "created_at")
                  if k in meta},
        "generated_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "images": total,
        "positive_class": "synthetic",
        "readers": readers,
        "pooled": {"readers": len(readers), **pooled.to_dict()},
        "accuracy_by_confidence": {str(level): vars(Proportion.of(
            sum(a.answer == a.truth for a in answers if a.confidence == level),
            sum(a.confidence == level for a in answers))) for level in CONFIDENCE_LEVELS},
        "accuracy_by_window": _accuracy_by(answers, lambda a: a.window or "as_is"),
        "fleiss_kappa": kappa,
        "per_image": per_image,
    })


# ---- plots ------------------------------------------------------------------------------------------------------
def _png(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def _errors(props: list[dict]) -> np.ndarray:
    values = np.array([p["value"] if p["value"] is not None else np.nan for p in props], dtype=float)
    low = np.array([p["low"] if p["low"] is not None else np.nan for p in props], dtype=float)
    high = np.array([p["high"] if p["high"] is not None else np.nan for p in props], dtype=float)
    # Clip: Wilson bounds of 0/n or n/n can sit a rounding error inside the estimate.
    return np.clip(np.nan_to_num(np.vstack([values - low, high - values])), 0.0, None)


def _value(p: dict) -> float:
    return p["value"] if p["value"] is not None else np.nan  # no answers: no bar (the table shows "–")


def _plot_accuracy(numbers: dict) -> str:
    rows = numbers["readers"] + [{"reader": "pooled", **numbers["pooled"]}]
    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.2))
    ax = fig.add_subplot()
    props = [r["accuracy"] for r in rows]
    x = np.arange(len(rows))
    ax.bar(x, [_value(p) for p in props], yerr=_errors(props), capsize=4,
           color=["#4c78a8"] * (len(rows) - 1) + ["#f58518"])
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
    crowded = len(rows) > 5
    ax.set_xticks(x, [r["reader"] for r in rows], rotation=30 if crowded else 0, ha="right" if crowded else "center")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy (95% Wilson CI)")
    return _png(fig)


def _plot_sens_spec(numbers: dict) -> str:
    rows = numbers["readers"] + [{"reader": "pooled", **numbers["pooled"]}]
    fig = Figure(figsize=(max(4.0, 0.9 * len(rows) + 2), 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(rows))
    for offset, key, color in ((-0.2, "sensitivity", "#e45756"), (0.2, "specificity", "#54a24b")):
        props = [r[key] for r in rows]
        ax.bar(x + offset, [_value(p) for p in props], width=0.4, yerr=_errors(props), capsize=3, color=color,
               label=f"{key} ({'fake called Fake' if key == 'sensitivity' else 'real called Real'})")
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(x, [r["reader"] for r in rows])
    ax.set_ylim(0, 1.05)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=8, frameon=False)
    return _png(fig)


def _plot_confidence(numbers: dict) -> str:
    levels = list(numbers["accuracy_by_confidence"])
    props = [numbers["accuracy_by_confidence"][k] for k in levels]
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.add_subplot()
    x = np.arange(len(levels))
    ax.bar(x, [_value(p) for p in props], yerr=_errors(props), capsize=4, color="#72b7b2")
    for xi, p in zip(x, props):
        ax.annotate(f"n={p['trials']}", (xi, 0.02), ha="center", fontsize=8)
    ax.axhline(0.5, color="k", linestyle="--", linewidth=1)
    ax.set_xticks(x, levels)
    ax.set_xlabel("confidence (1 = guess, 5 = certain)")
    ax.set_ylabel("pooled accuracy")
    ax.set_ylim(0, 1)
    return _png(fig)


# ---- HTML -------------------------------------------------------------------------------------------------------
def _fmt_prop(p: dict) -> str:
    if p["value"] is None:
        return "–"
    return f"{p['value']:.3f} [{p['low']:.3f}, {p['high']:.3f}] <small>({p['successes']}/{p['trials']})</small>"


def _fmt(value, spec: str) -> str:
    return "–" if value is None else format(value, spec)


def _row(label: str, r: dict, extra: str = "") -> str:
    return (f"<tr><td>{html.escape(label)}{extra}</td><td>{r['answers']}</td><td>{_fmt_prop(r['accuracy'])}</td>"
            f"<td>{_fmt_prop(r['sensitivity'])}</td><td>{_fmt_prop(r['specificity'])}</td>"
            f"<td>{_fmt(r['p_value'], '.3g')}</td><td>{_fmt(r['mean_confidence'], '.2f')}</td></tr>")


def render_html(numbers: dict) -> str:
    """A self-contained HTML page (plots embedded as base64 PNG)."""
    rows = "".join(_row(r["reader"], r, "" if r["complete"] else " <small>(incomplete)</small>")
                   for r in numbers["readers"])
    rows += _row("pooled", numbers["pooled"])
    kappa = numbers["fleiss_kappa"]
    if kappa["value"] is not None:
        kappa_text = (f"Fleiss' κ = <b>{kappa['value']:.3f}</b> over {kappa['items']} images and "
                      f"{len(kappa['readers'])} readers ({html.escape(', '.join(kappa['readers']))}).")
    else:
        reason = kappa["note"] or "undefined: every rating in one category"
        kappa_text = f"Fleiss' κ: not available ({html.escape(reason)})."
    windows = "".join(f"<tr><td>{html.escape(w)}</td><td>{_fmt_prop(p)}</td></tr>"
                      for w, p in numbers["accuracy_by_window"].items())
    study = numbers["study"]
    plots = "".join(f'<figure><img alt="{alt}" src="data:image/png;base64,{data}">'
                    f'<figcaption>{alt}</figcaption></figure>'
                    for alt, data in (("Accuracy per reader (dashed: chance)", _plot_accuracy(numbers)),
                                      ("Sensitivity and specificity per reader", _plot_sens_spec(numbers)),
                                      ("Pooled accuracy by confidence", _plot_confidence(numbers))))
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>Visual Turing Test report</title>
<style>
body {{ font: 15px/1.45 system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; color: #222; padding: 0 1rem; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #ccc; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f3f3f3; }} small {{ color: #666; }}
figure {{ display: inline-block; margin: .5rem 1rem .5rem 0; }}
figcaption {{ text-align: center; color: #555; font-size: .9rem; }} img {{ max-width: 100%; }}
</style></head><body>
<h1>Visual Turing Test report</h1>
<p>{numbers['images']} images ({html.escape(study.get('modality', '?'))}, seed {html.escape(study.get('seed', '?'))}),
{len(numbers['readers'])} readers, {numbers['pooled']['answers']} answers.
Generated {html.escape(numbers['generated_at'])}.</p>
<p>Synthetic is the positive class: <b>sensitivity</b> = synthetic images called Fake, <b>specificity</b> = real images
called Real. Intervals are 95% Wilson score intervals; <b>p</b> is the exact two-sided binomial test of accuracy
against 0.5 (pooled answers are not independent across readers; read the pooled p-value with that in mind).</p>
<table><tr><th>reader</th><th>answers</th><th>accuracy</th><th>sensitivity</th><th>specificity</th><th>p (vs 0.5)</th>
<th>mean confidence</th></tr>{rows}</table>
<p>{kappa_text}</p>
<h2>Plots</h2>{plots}
<h2>Accuracy by display window</h2>
<table><tr><th>window</th><th>accuracy</th></tr>{windows}</table>
</body></html>
"""


def write_report(store: Store, out_html: str | Path, out_json: str | Path | None = None) -> dict:
    """Write the HTML report and the JSON of its numbers (default: ``out_html`` with ``.json``); return the numbers."""
    numbers = analyse(store)
    out_html = Path(out_html)
    out_json = Path(out_json) if out_json is not None else out_html.with_suffix(".json")
    write_text(out_json, json.dumps(numbers, indent=2, allow_nan=False) + "\n")
    write_text(out_html, render_html(numbers))
    return numbers
