"""An HTML page showing each synthesized item: anatomy reference | pathology reference | result | mask overlay."""
from __future__ import annotations

import html
import json
from pathlib import Path

from mcfast.atomic import write_text

COLUMNS = (("anatomy_ref.png", "anatomy reference"), ("pathology_ref.png", "pathology reference"),
           (None, "result"), ("overlay.png", "mask overlay"))


def _row(folder: Path, run_dir: Path, modality: str) -> str:
    meta = json.loads((folder / "meta.json").read_text())
    result = "lung.png" if modality == "ct" else "image.png"
    cells = []
    for name, title in COLUMNS:
        rel = f"{run_dir.name}/{folder.name}/{name or result}"
        cells.append(f'<figure><img src="{html.escape(rel)}" alt="{title}"><figcaption>{title}</figcaption></figure>')
    if modality == "ct":
        for window in ("soft_tissue", "bone"):
            rel = f"{run_dir.name}/{folder.name}/{window}.png"
            cells.append(f'<figure><img src="{html.escape(rel)}" alt="{window}"><figcaption>{window.replace("_", " ")} '
                         f'window</figcaption></figure>')
    lesions = ", ".join(f"{l['category']} at ({l['center'][0]:.0f}, {l['center'][1]:.0f}) box {l['bbox']}"
                        for l in meta["lesions"]) or "none"
    return (f'<section><h3>{html.escape(run_dir.name)} / {folder.name} — {len(meta["lesions"])} lesion(s): '
            f'{html.escape(lesions)}</h3><div class="row">{"".join(cells)}</div></section>')


def write_contact_sheet(out: Path, runs: list[tuple[Path, str]], title: str = "mcfast demo") -> Path:
    """Write ``out/index.html`` for the item folders of each (run folder, modality)."""
    parts = []
    for run_dir, modality in runs:
        items = sorted(p for p in run_dir.iterdir() if (p / "meta.json").is_file())
        parts.append(f"<h2>{'Lung CT' if modality == 'ct' else 'Mammography'} ({len(items)} images) — "
                     f'<a href="{run_dir.name}/coco.json">coco.json</a></h2>')
        parts += [_row(p, run_dir, modality) for p in items]
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:system-ui,sans-serif;background:#111;color:#ddd;margin:1.5em}}
.row{{display:flex;gap:8px;flex-wrap:wrap}} figure{{margin:0}} img{{width:192px;height:192px;image-rendering:pixelated;
border:1px solid #333}} figcaption{{font-size:12px;text-align:center;color:#aaa}} h3{{font-size:14px;font-weight:500}}
a{{color:#8cf}}</style></head><body><h1>{html.escape(title)}</h1>
<p>Synthetic images from mcfast's small default models (trained only on mcfast's own phantoms), steered by
multi-condition weighted ILVR: the anatomy reference guides the whole image at a coarse scale, each pathology
reference guides only inside its Gaussian-weighted patch. Red outlines are the exact inserted lesion masks.</p>
{''.join(parts)}</body></html>"""
    write_text(out / "index.html", page)
    return out / "index.html"
