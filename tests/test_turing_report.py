"""Turing report and CLI: the numbers match the answers given; the HTML is self-contained and escaped."""
import argparse
import json
import re
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
        reader, _ = store.invite([name])[0]
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
    with pytest.raises(InputError, match="--allow-host 'http://lab'"):
        cli("serve", "--study", str(study), "--allow-host", "http://lab")
    with pytest.raises(InputError, match="--url 'ftp://x'"):
        cli("invite", "--study", str(study), "Ann", "--url", "ftp://x")
    with pytest.raises(InputError, match="given twice"):
        cli("create", "--study", str(tmp_path / "y"), "--real", str(tmp_path / "real"), "--synthetic",
            str(tmp_path / "fake"), "--n", "2", "--reader", "Ann", "--reader", "ANN")
    assert not (tmp_path / "y").exists()                      # refused before anything was made
    (tmp_path / "rgb").mkdir()
    Image.new("RGB", (8, 8), (255, 0, 0)).save(tmp_path / "rgb" / "red.png")
    with pytest.raises(InputError, match=r"red\.png: RGB colour image") as info:
        cli("create", "--study", str(tmp_path / "z"), "--real", str(tmp_path / "real"), "--synthetic",
            str(tmp_path / "rgb"), "--n", "2")
    assert "\n" not in str(info.value) and not (tmp_path / "z" / "study.sqlite3").exists()


def printed_codes(text: str) -> dict[str, str]:
    """{name: code} from `invite` output, checking each link carries the same code."""
    codes = {}
    for line in text.splitlines():
        match = re.fullmatch(r"(.+): code (\S+)  link (\S+)#code=(\S+)", line)
        if match:
            assert match.group(2) == match.group(4)
            codes[match.group(1)] = match.group(2)
    return codes


def test_cli_invite_prints_codes_that_sign_in(study, tmp_path, capsys):
    from fastapi.testclient import TestClient

    from mcfast.evaluate.turing.app import create_app

    capsys.readouterr()
    assert cli("invite", "--study", str(study), "Ann", " Bob ", "--url", "http://10.1.2.3:8080") == 0
    out = capsys.readouterr().out
    codes = printed_codes(out)
    assert set(codes) == {"Ann", "Bob"} and "http://10.1.2.3:8080/#code=" in out
    assert all(re.fullmatch(r"([A-HJKMNP-Z2-9]{5}-){3}[A-HJKMNP-Z2-9]{5}", c) for c in codes.values())
    client = TestClient(create_app(study, host="10.1.2.3", port=8080), base_url="http://10.1.2.3:8080")
    assert client.post("/api/session", json={"code": codes["Bob"]}).json()["reader"] == "Bob"
    with pytest.raises(InputError, match="already has a code"):
        cli("invite", "--study", str(study), "Ann")
    assert cli("invite", "--study", str(study), "--renew", "Ann") == 0
    renewed = printed_codes(capsys.readouterr().out)["Ann"]
    assert client.post("/api/session", json={"code": codes["Ann"]}).status_code == 401
    assert client.post("/api/session", json={"code": renewed}).json()["reader"] == "Ann"

    assert cli("create", "--study", str(tmp_path / "s2"), "--real", str(tmp_path / "real"), "--synthetic",
               str(tmp_path / "fake"), "--n", "2", "--size", "16", "--reader", "Cy") == 0
    assert set(printed_codes(capsys.readouterr().out)) == {"Cy"}
