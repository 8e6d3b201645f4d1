"""Turing report and CLI: the numbers match the answers given; the HTML is self-contained and escaped."""
import argparse
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mcfast.commands import turing as turing_cmd
from mcfast.errors import InputError
from mcfast.evaluate.turing.study import open_study


def cli(*argv):
    parser = argparse.ArgumentParser(prog="mcfast")
    turing_cmd.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["turing", *argv])
    return args.func(args)


@pytest.fixture()
def study(tmp_path):
    rng = np.random.default_rng(1)
    for kind in ("real", "fake"):
        (tmp_path / kind).mkdir()
        for i in range(4):
            Image.fromarray((rng.random((20, 20)) * 255).astype(np.uint8)).save(tmp_path / kind / f"{i}.png")
    assert cli("create", "--study", str(tmp_path / "s"), "--real", str(tmp_path / "real"), "--synthetic",
               str(tmp_path / "fake"), "--n", "6", "--seed", "5", "--size", "16") == 0
    return tmp_path / "s"


def test_report_numbers_match_answers(study, tmp_path):
    store = open_study(study)
    images = store.images()
    # Truth from where each source lives, independent of the stored label.
    truth = ["real" if Path(im.source).parent.name == "real" else "synthetic" for im in images]
    a_answers = ["real", "real", "real", "synthetic", "synthetic", "synthetic"]
    b_answers = ["real", "real", "synthetic", "synthetic", "synthetic", "real"]
    for name, given in (("A", a_answers), ("B", b_answers), ("<b>Eve</b>", a_answers[:2])):
        reader = store.reader_for_name(name)
        for k, (im, answer) in enumerate(zip(images, given)):
            store.record_answer(reader.reader_id, im.image_id, answer, 1 + k % 5)

    out = tmp_path / "rep" / "report.html"
    assert cli("report", "--study", str(study), "--out", str(out)) == 0
    numbers = json.loads(out.with_suffix(".json").read_text())
    rows = {r["reader"]: r for r in numbers["readers"]}
    for name, given in (("A", a_answers), ("B", b_answers), ("<b>Eve</b>", a_answers[:2])):
        pairs = list(zip(truth, given))
        row = rows[name]
        assert row["answers"] == len(given)
        assert row["accuracy"]["successes"] == sum(t == g for t, g in pairs)
        assert row["sensitivity"]["successes"] == sum(t == g == "synthetic" for t, g in pairs)
        assert row["sensitivity"]["trials"] == sum(t == "synthetic" for t, _ in pairs)
        assert row["specificity"]["successes"] == sum(t == g == "real" for t, g in pairs)
        assert row["complete"] == (len(given) == 6)
    pooled = numbers["pooled"]
    assert pooled["answers"] == 14
    assert pooled["accuracy"]["successes"] == sum(r["accuracy"]["successes"] for r in rows.values())
    # Two complete readers agree on 4 of 6 images, each says real 3 times: κ = (2/3 − 1/2) / (1 − 1/2) = 1/3.
    assert numbers["fleiss_kappa"]["readers"] == ["A", "B"]
    assert numbers["fleiss_kappa"]["value"] == pytest.approx(1 / 3)
    assert sum(numbers["accuracy_by_confidence"][str(c)]["trials"] for c in range(1, 6)) == 14
    assert [im["called_fake"] for im in numbers["per_image"]] == [
        (a == "synthetic") + (b == "synthetic") for a, b in zip(a_answers, b_answers)]

    page = out.read_text()
    assert page.count("data:image/png;base64,") == 3
    assert "&lt;b&gt;Eve&lt;/b&gt;" in page and "<b>Eve</b>" not in page
    assert "0.333" in page


def test_report_without_answers(study, tmp_path):
    assert cli("report", "--study", str(study), "--out", str(tmp_path / "r.html"), "--json",
               str(tmp_path / "n.json")) == 0
    numbers = json.loads((tmp_path / "n.json").read_text())
    assert numbers["readers"] == [] and numbers["pooled"]["answers"] == 0
    assert numbers["pooled"]["accuracy"]["value"] is None and numbers["fleiss_kappa"]["value"] is None
    assert (tmp_path / "r.html").read_text().startswith("<!doctype html>")


def test_cli_errors_are_one_line(tmp_path, study):
    with pytest.raises(InputError, match="no Turing study database here"):
        cli("report", "--study", str(tmp_path / "none"), "--out", str(tmp_path / "r.html"))
    with pytest.raises(InputError, match="--port 70000"):
        cli("serve", "--study", str(study), "--port", "70000")
    with pytest.raises(InputError, match="created with n = 6, not 8"):
        cli("serve", "--study", str(study), "--n", "8", "--port", "1")
    with pytest.raises(SystemExit):
        cli("create", "--study", str(tmp_path / "x"))          # --real / --synthetic are required
