"""The synthetic pool of a classifier study, made from the study's training-split women only.

    python scripts/synth_classifier_set.py --config configs/eval_classifier_mias224.toml [--threads 2]
    python scripts/synth_classifier_set.py --config ... --plan-only   # write the filtered references, no sampling
    torchrun --nproc_per_node 2 scripts/synth_classifier_set.py --config ... --threads 1  # two 1-thread processes

Reads the evaluation config: ``[data]`` gives the split (the fixed test women and the seeded train / val
split of the others, exactly as ``mcfast evaluate classifier`` makes it), ``[synthesis]`` the model, the
base recipe, the prepared films and how many images per class. It writes into ``data.synthetic_dir``:

- ``refs/anatomy/manifest.json``: the prepared films (``synthesis.prepared``) of the classifier's
  *training* women, NORM films only with ``synthesis.anatomy = "normal"`` (an abnormal film's own mass
  would survive ILVR guidance and make a "normal" image abnormal) — the recipe's ``[anatomy]``
  becomes ``source = "prepared"`` on it;
- ``refs/lesions/manifest.json``: the training women's films, the MIAS mass source (``source = "mias"``
  draws only the masses of the films a manifest lists);
- ``abnormal/`` (``n_abnormal`` items, one mass each) and ``normal/`` (``n_normal`` items, the same recipe
  without ``[[pathology]]``), each an ordinary resumable ``mcfast synthesize`` folder;
- ``labels.json`` (written last, when both are complete) and ``provenance.json`` (both runs'
  provenance, the women each reference set came from).

Re-running resumes: finished items are skipped (``synthesize``), and a folder made with another
recipe or count is refused. The validation and test women never lend anatomy or lesions.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def training_films(cfg) -> tuple[set[str], dict[str, int], dict[str, list[str]]]:
    """(training film names, label of every film, women per split) of the study's split, pixel-free."""
    import numpy as np

    from mcfast.errors import InputError
    from mcfast.evaluate.data import mias_index
    from mcfast.evaluate.splits import group_name, mias_woman, study_split

    if cfg.data.dataset != "mias":
        raise InputError("synth_classifier_set.py serves data.dataset = 'mias'")
    files, labels = mias_index(cfg.data.root, cfg.data.abnormal)
    names = [f.stem for f in files]
    groups = np.array([mias_woman(n) for n in names], dtype=object)
    y = np.array([labels[n] for n in names])
    split = study_split(y, groups, cfg.data)
    women = {k: sorted({group_name(g) for g in groups[v].tolist()}) for k, v in split.items()}
    return {names[i] for i in split["train"]}, labels, women


def filtered_manifest(prepared: Path, keep, out: Path) -> int:
    """``out/manifest.json``: the items of ``prepared``'s manifest whose film ``keep(stem)`` accepts, with
    absolute file paths (no copies, no symlinks); returns how many."""
    from mcfast.atomic import write_text
    from mcfast.errors import InputError
    from mcfast.io.datasets import read_manifest

    manifest = read_manifest(prepared)
    items = []
    for it in manifest["items"]:
        film = Path(it.get("source", ""))
        if keep(film.stem):
            items.append({**it, "file": str((prepared / it["file"]).resolve())})
    if not items:
        raise InputError(f"{prepared}: no film of the training women in its manifest")
    write_text(out / "manifest.json", json.dumps({**manifest, "items": items,
                                                  "counts": {"items": len(items)},
                                                  "filtered_from": str(prepared.resolve())}, indent=1))
    return len(items)


def recipes(cfg, refs: Path):
    """(abnormal recipe, normal recipe): the base recipe at synthesis.image_size on the filtered references."""
    import copy

    from mcfast.errors import InputError
    from mcfast.evaluate.realism_sets import scaled_recipe
    from mcfast.synthesis.recipe import validate

    base = scaled_recipe(Path(cfg.synthesis.recipe), cfg.synthesis.image_size)
    if base.modality != "mg" or not base.pathology or base.pathology[0].source != "mias":
        raise InputError(f"{cfg.synthesis.recipe}: expected an mg recipe whose first [[pathology]] is source 'mias'")
    base.anatomy.source, base.anatomy.path = "prepared", str(refs / "anatomy")
    base.pathology = [base.pathology[0]]
    base.pathology[0].path = str(refs / "lesions")
    base.pathology[0].count = (1, 1)
    base.sampler.batch_size = cfg.synthesis.batch_size
    abnormal = copy.deepcopy(base)
    abnormal.seed = cfg.synthesis.seed
    normal = copy.deepcopy(base)
    normal.pathology = []
    normal.seed = cfg.synthesis.seed + 1000  # other noise than the abnormal items of the same index
    return validate(abnormal), validate(normal)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", type=Path, required=True, help="evaluation TOML with [data] and [synthesis]")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: study.threads)")
    ap.add_argument("--device", default=None, help="cpu (default) or cuda")
    ap.add_argument("--plan-only", action="store_true", help="write the filtered references and stop")
    args = ap.parse_args(argv)

    import torch

    from mcfast.atomic import write_text
    from mcfast.errors import InputError
    from mcfast.evaluate.config import load_config
    from mcfast.synthesis.pipeline import synthesize

    cfg = load_config(args.config)
    y = cfg.synthesis
    if not cfg.data.synthetic_dir:
        raise InputError(f"{args.config}: data.synthetic_dir names the folder to write")
    torch.set_num_threads(args.threads or cfg.study.threads)
    out = Path(cfg.data.synthetic_dir)
    refs = out / "refs"
    train, labels, women = training_films(cfg)
    prepared = Path(y.prepared)
    n_anat = filtered_manifest(prepared, lambda s: s in train and (y.anatomy == "all" or labels[s] == 0),
                               refs / "anatomy")
    n_les = filtered_manifest(prepared, lambda s: s in train, refs / "lesions")
    write_text(refs / "split.json", json.dumps({"women": women, "training_films": sorted(train)}, indent=1))
    print(f"references: {n_anat} anatomy films, {n_les} lesion films, of {len(women['train'])} training women "
          f"(val {len(women['val'])}, test {len(women['test'])} women never used)", file=sys.stderr)
    abnormal, normal = recipes(cfg, refs)
    if args.plan_only:
        return 0
    provenance = {"config": str(args.config), "synthesis": cfg.to_dict()["synthesis"], "women": women,
                  "reference_films": {"anatomy": n_anat, "lesions": n_les}, "runs": {}}
    entries = []
    for name, recipe, n, label in (("abnormal", abnormal, y.n_abnormal, "abnormal"),
                                   ("normal", normal, y.n_normal, "normal")):
        if n == 0:
            continue
        folder = out / name
        t0 = time.perf_counter()
        result = synthesize(y.checkpoint, recipe, n, folder, device=args.device, precision=y.precision,
                            batch_size=y.batch_size, progress=True, channels_last=True)
        took = time.perf_counter() - t0
        provenance["runs"][name] = {"n": n, "written_now": result.written, "seconds_now": round(took, 1),
                                    "seconds_per_image": round(took / result.written, 2) if result.written else None,
                                    "provenance": json.loads((folder / "provenance.json").read_text())}
        entries += [{"file": f"{name}/{i:06d}/image.npy", "label": label, "group": f"{name}/{i:06d}"}
                    for i in range(n)]
    if int(os.environ.get("RANK", "0")) != 0:
        return 0  # under torchrun the other ranks only sample; rank 0 writes the labels and provenance
    missing = [e["file"] for e in entries if not (out / e["file"]).is_file()]
    if missing:
        raise InputError(f"{out}: {len(missing)} items missing after synthesis (e.g. {missing[0]}); run again")
    write_text(out / "provenance.json", json.dumps(provenance, indent=1))
    write_text(out / "labels.json", json.dumps({"images": entries}, indent=1))
    print(f"wrote {len(entries)} labelled synthetic images to {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(REPO))
    raise SystemExit(main())
