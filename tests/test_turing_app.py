"""Turing web app through FastAPI's TestClient: codes and sessions, answers, resume, no leaks, no path traversal,
Host checks, image responses that do not tell the classes apart."""
import io
import sqlite3
import threading
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from mcfast.errors import InputError
from mcfast.evaluate.turing.app import SESSION_COOKIE, create_app, host_checker
from mcfast.evaluate.turing.render import png_chunk_types, stored_png_length
from mcfast.evaluate.turing.store import AnswerRejected
from mcfast.evaluate.turing.study import create_study, open_study

STATE_KEYS = {"reader", "answered", "total", "image_id", "window"}
BASE_URL = "http://127.0.0.1:8000"  # create_app's default bound address: TestClient sends it as the Host


def client_for(study, **kwargs) -> TestClient:
    return TestClient(create_app(study, **kwargs), base_url=BASE_URL)


def invite(study, *names, renew=False) -> dict[str, str]:
    """{name: code} for readers invited into ``study`` (what `mcfast turing invite` prints)."""
    return {reader.name: code for reader, code in open_study(study).invite(list(names), renew=renew)}


@pytest.fixture()
def study(tmp_path):
    """6 images: real PNGs of odd sizes with metadata, synthetic PNGs 64², names that give the class away."""
    rng = np.random.default_rng(0)
    real, fake = tmp_path / "REALDIR", tmp_path / "FAKEDIR"
    real.mkdir()
    fake.mkdir()
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "acquired-on-scanner")
    for i in range(3):
        Image.fromarray((rng.random((30, 50)) * 255).astype(np.uint8)).save(real / f"real_case{i}.png", pnginfo=info)
        Image.fromarray((rng.random((64, 64)) * 255).astype(np.uint8)).save(fake / f"fake_sample{i}.png")
    create_study(tmp_path / "study", real, fake, n=6, seed=0, size=40, progress=False)
    return tmp_path / "study"


def login(client, code):
    res = client.post("/api/session", json={"code": code})
    assert res.status_code == 200, res.text
    return res.json()


def test_session_answer_and_finish(study):
    code = invite(study, "  Ann   Lee ")["Ann Lee"]
    client = client_for(study)
    assert client.get("/api/state").json() == {"reader": None}
    assert client.post("/api/answer", json={"image_id": "x", "answer": "real", "confidence": 3}).status_code == 401
    state = login(client, f"  {code.lower()} ")          # typed: case, spaces and dashes do not matter
    assert state["reader"] == "Ann Lee" and state["answered"] == 0 and state["total"] == 6
    assert set(state) == STATE_KEYS
    cookie = client.cookies.get(SESSION_COOKIE)
    assert cookie and len(cookie) >= 32
    seen = []
    for k in range(6):
        image_id = state["image_id"]
        seen.append(image_id)
        res = client.post("/api/answer", json={"image_id": image_id, "answer": ["real", "synthetic"][k % 2],
                                               "confidence": 1 + k % 5, "elapsed_ms": 1200})
        assert res.status_code == 200, res.text
        state = res.json()
        assert state["answered"] == k + 1
        # The same image cannot be answered twice.
        assert client.post("/api/answer", json={"image_id": image_id, "answer": "real",
                                                "confidence": 3}).status_code == 409
    assert state["image_id"] is None
    assert len(set(seen)) == 6
    store = client.app.state.store
    assert [a.image_id for a in store.answers()] == seen
    assert [a.confidence for a in store.answers()] == [1, 2, 3, 4, 5, 1]


def test_resume_after_restart_by_cookie_and_by_code(study):
    codes = invite(study, "Ann", "Bob")
    client = client_for(study)
    state = login(client, codes["Ann"])
    for _ in range(2):
        state = client.post("/api/answer", json={"image_id": state["image_id"], "answer": "real",
                                                 "confidence": 4}).json()
    cookie = client.cookies.get(SESSION_COOKIE)
    restarted = client_for(study)                         # a new app on the same folder = a server restart
    restarted.cookies.set(SESSION_COOKIE, cookie)
    assert restarted.get("/api/state").json() == state
    other_browser = client_for(study)
    assert login(other_browser, codes["Ann"]) == state    # the code, on any browser, resumes the same reader
    assert other_browser.cookies.get(SESSION_COOKIE) != cookie      # with a session of its own
    assert login(client_for(study), codes["Bob"])["answered"] == 0
    # Signing out ends that session only, server side too: a copied cookie does not come back to life.
    client.post("/api/logout")
    replay = client_for(study)
    replay.cookies.set(SESSION_COOKIE, cookie)
    assert replay.get("/api/state").json() == {"reader": None}
    assert other_browser.get("/api/state").json()["reader"] == "Ann"


def test_a_name_is_not_a_login(study):
    codes = invite(study, "Alice")
    alice = client_for(study)
    login(alice, codes["Alice"])
    alice.post("/api/answer", json={"image_id": alice.get("/api/state").json()["image_id"], "answer": "real",
                                    "confidence": 3})
    intruder = client_for(study)
    for body in ({"name": "  ALICE "}, {"name": "Alice"}):   # the old name sign-in is gone
        assert intruder.post("/api/session", json=body).status_code == 422
    for code in ("  ALICE ", "Alice", "alice", codes["Alice"][:-1], codes["Alice"][:-1] + "2", "x" * 200):
        res = intruder.post("/api/session", json={"code": code})
        assert res.status_code == 401, code
        assert SESSION_COOKIE not in res.headers.get("set-cookie", "")
    assert intruder.get("/api/state").json() == {"reader": None}
    assert intruder.post("/api/answer", json={"image_id": "x", "answer": "real", "confidence": 3}).status_code == 401
    forged = client_for(study)
    forged.cookies.set(SESSION_COOKIE, codes["Alice"])        # the code is not a session token either
    assert forged.get("/api/state").json() == {"reader": None}
    assert [a.reader for a in open_study(study).answers()] == ["Alice"]


def test_codes_and_sessions_are_stored_hashed(study):
    codes = invite(study, "Ann")
    client = client_for(study)
    login(client, codes["Ann"])
    cookie = client.cookies.get(SESSION_COOKIE)
    with sqlite3.connect(study / "study.sqlite3") as con:
        dump = "\n".join(con.iterdump())
    for secret in (codes["Ann"], codes["Ann"].replace("-", ""), cookie):
        assert secret not in dump
    assert "Ann" in dump


def test_invite_rules(study):
    codes = invite(study, "Ann")
    with pytest.raises(InputError, match="'Ann' already has a code; use --renew"):
        invite(study, "Bob", "ann")
    with pytest.raises(InputError, match="given twice"):
        invite(study, "Cy", "CY")
    with pytest.raises(InputError, match="--renew: no reader named 'Dee'"):
        invite(study, "Dee", renew=True)
    with pytest.raises(InputError, match="reader name"):
        invite(study, "tab\x07bell")
    assert [r.name for r, _ in open_study(study).readers()] == ["Ann"]   # a refused invite changes nothing
    client = client_for(study)
    login(client, codes["Ann"])
    new = invite(study, "ANN", renew=True)["Ann"]
    assert new != codes["Ann"]
    assert client.get("/api/state").json() == {"reader": None}           # renewing ends the old sessions
    assert client.post("/api/session", json={"code": codes["Ann"]}).status_code == 401
    assert login(client, new)["reader"] == "Ann"


@pytest.mark.parametrize("body", [
    {"image_id": "x", "answer": "real", "confidence": 0},
    {"image_id": "x", "answer": "real", "confidence": 6},
    {"image_id": "x", "answer": "maybe", "confidence": 3},
    {"image_id": "x" * 65, "answer": "real", "confidence": 3},
    {"image_id": "x", "answer": "real"},
])
def test_answer_validation(study, body):
    client = client_for(study)
    login(client, invite(study, "Ann")["Ann"])
    assert client.post("/api/answer", json=body).status_code == 422
    assert client.get("/api/state").json()["answered"] == 0


@pytest.mark.parametrize("name", ["", "   ", "x" * 61, "tab\x07bell"])
def test_bad_names_are_refused(study, name):
    with pytest.raises(InputError, match="reader name"):
        invite(study, name)


@pytest.mark.parametrize("body", [{"code": ""}, {"code": "x" * 201}, {}, {"name": "Ann"}])
def test_bad_session_bodies_are_refused(study, body):
    assert client_for(study).post("/api/session", json=body).status_code == 422


def test_nothing_leaks_which_is_which(study, tmp_path):
    client = client_for(study)
    texts = [client.get(path).text for path in ("/", "/static/app.css", "/static/app.js")]
    state = login(client, invite(study, "Ann")["Ann"])
    sizes, lengths = set(), []
    while state["image_id"]:
        assert set(state) == STATE_KEYS and state["window"] is None
        res = client.get(f"/api/image/{state['image_id']}")
        assert res.status_code == 200 and res.headers["content-type"] == "image/png"
        for header in ("last-modified", "etag", "content-disposition", "server", "date"):
            assert header not in res.headers
        assert png_chunk_types(res.content) == ["IHDR", "IDAT", "IEND"]
        assert b"scanner" not in res.content
        with Image.open(io.BytesIO(res.content)) as img:
            sizes.add((img.size, img.mode))
        texts.append(res.headers.get("content-type", ""))
        state = client.post("/api/answer", json={"image_id": state["image_id"], "answer": "real",
                                                 "confidence": 2}).json()
        texts.append(str(state))
    assert sizes == {((40, 40), "L")}
    joined = "\n".join(texts)
    for secret in ("real_case", "fake_sample", "REALDIR", "FAKEDIR", str(tmp_path), "truth", "source"):
        assert secret not in joined


def test_no_path_traversal(study):
    client = client_for(study)
    assert client.get(f"/api/image/{client.app.state.store.images()[0].image_id}").status_code == 401
    login(client, invite(study, "Ann")["Ann"])
    first = client.app.state.store.images()[0]
    (study / "images" / "planted.png").write_bytes((study / "images" / first.file).read_bytes())
    probes = ["/api/image/..%2Fstudy.sqlite3", "/api/image/%2e%2e%2fstudy.sqlite3", "/api/image/../study.sqlite3",
              "/api/image/..%2F..%2F..%2Fetc%2Fpasswd", "/api/image/%2Fetc%2Fpasswd", "/api/image/planted",
              "/api/image/planted.png", f"/api/image/{first.file}", f"/api/image/{first.image_id}%00",
              "/api/image/study.sqlite3", "/study.sqlite3", f"/images/{first.file}", "/static/../study.sqlite3",
              "/static/%2e%2e/study.sqlite3", "/docs", "/openapi.json"]
    for probe in probes:
        res = client.get(probe)
        assert res.status_code == 404, probe
        assert b"SQLite format" not in res.content and b"root:" not in res.content
    assert client.get(f"/api/image/{first.image_id}").status_code == 200


def test_concurrent_answers_store_exactly_one(study):
    store = create_app(study).state.store
    reader, _ = store.invite(["Racer"])[0]
    image_id = store.progress(reader.reader_id)["image_id"]
    outcomes = []

    def attempt(answer):
        try:
            store.record_answer(reader.reader_id, image_id, answer, 3)
            outcomes.append("ok")
        except AnswerRejected:
            outcomes.append("rejected")

    threads = [threading.Thread(target=attempt, args=(a,)) for a in ["real", "synthetic"] * 4]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert sorted(outcomes) == ["ok"] + ["rejected"] * 7
    assert len(store.answers()) == 1


def smooth_and_noisy_study(root, fmt: str, size: int = 64):
    """Real images very smooth (gradients), synthetic ones pure noise: compressed, their sizes would differ 10x."""
    rng = np.random.default_rng(3)
    real, fake = root / "real", root / "fake"
    real.mkdir()
    fake.mkdir()
    ramp = np.add.outer(np.arange(48.0), np.arange(48.0)) / 94.0
    for i in range(4):
        smooth, noisy = ramp * (0.5 + 0.1 * i), rng.random((48, 48))
        if fmt == "png":
            Image.fromarray((smooth * 255).astype(np.uint8)).save(real / f"r{i}.png")
            Image.fromarray((noisy * 255).astype(np.uint8)).save(fake / f"s{i}.png")
        else:  # CT in HU, each shown in a drawn window
            np.save(real / f"r{i}.npy", -1000.0 + 2000.0 * smooth)
            np.save(fake / f"s{i}.npy", -1000.0 + 2000.0 * noisy)
    create_study(root / "study", real, fake, n=8, seed=1, size=size, progress=False)
    return root / "study"


@pytest.mark.parametrize("fmt", ["png", "npy"])
def test_image_responses_do_not_tell_the_classes_apart(tmp_path, fmt):
    study = smooth_and_noisy_study(tmp_path, fmt)
    truth = {im.image_id: im.truth for im in open_study(study).images()}
    client = client_for(study)
    state = login(client, invite(study, "Ann")["Ann"])
    responses = {}
    while state["image_id"]:
        responses[state["image_id"]] = client.get(f"/api/image/{state['image_id']}")
        state = client.post("/api/answer", json={"image_id": state["image_id"], "answer": "real",
                                                 "confidence": 2}).json()
    assert sorted(truth.values()) == sorted(truth[i] for i in responses)   # every image was served
    packed = {t: [len(zlib.compress(np.asarray(Image.open(io.BytesIO(r.content))).tobytes(), 6))
                  for i, r in responses.items() if truth[i] == t] for t in ("real", "synthetic")}
    # The inputs are as different in smoothness as the (compressed, real would be far smaller) ...
    assert max(packed["real"]) * 3 < min(packed["synthetic"])
    # ... yet every response has the same status, the same headers in the same order and the same length.
    headers = {tuple(r.headers.multi_items()) for r in responses.values()}
    assert len(headers) == 1, headers
    assert {r.status_code for r in responses.values()} == {200}
    assert {len(r.content) for r in responses.values()} == {stored_png_length(64, 64)}
    names = {k for k, _ in next(iter(headers))}
    assert names == {"content-length", "content-type", "cache-control", "x-content-type-options",
                     "referrer-policy", "content-security-policy"}
    assert dict(next(iter(headers)))["content-length"] == str(stored_png_length(64, 64))
    assert "no-transform" in dict(next(iter(headers)))["cache-control"]


def test_older_compressed_images_are_rewritten_fixed_size(tmp_path):
    study = smooth_and_noisy_study(tmp_path, "png")
    first = next(im for im in open_study(study).images() if im.truth == "real")   # smooth: compresses well
    path = study / "images" / first.file
    with Image.open(path) as img:
        pixels = np.asarray(img).copy()
    Image.fromarray(pixels).save(path, compress_level=9)      # as an older mcfast wrote it
    assert len(path.read_bytes()) < stored_png_length(64, 64) // 2
    client = client_for(study)
    assert len(path.read_bytes()) == stored_png_length(64, 64)
    with Image.open(path) as img:
        np.testing.assert_array_equal(np.asarray(img), pixels)  # same pixels, only the encoding changed
    login(client, invite(study, "Ann")["Ann"])
    assert len(client.get(f"/api/image/{first.image_id}").content) == stored_png_length(64, 64)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + b"short")           # changed on disk while serving: not served
    assert client.get(f"/api/image/{first.image_id}").status_code == 500


@pytest.mark.parametrize("host", ["evil.example:8000", "127.0.0.1.nip.io:8000", "127.0.0.1:9000", "127.0.0.1",
                                  "localhost.evil.example:8000", "[::1]:8000", "", "127.0.0.1:8000:8000"])
def test_wrong_host_header_is_refused(study, host):
    code = invite(study, "Ann")["Ann"]
    client = client_for(study)
    state = login(client, code)
    probes = [("GET", "/", None), ("GET", "/api/state", None), ("GET", "/healthz", None),
              ("GET", f"/api/image/{state['image_id']}", None), ("POST", "/api/session", {"code": code}),
              ("POST", "/api/answer", {"image_id": state["image_id"], "answer": "real", "confidence": 3})]
    for method, path, body in probes:
        res = client.request(method, path, json=body, headers={"host": host})
        assert res.status_code == 421, (host, path)
        assert "set-cookie" not in res.headers and b"Turing" not in res.content
    assert client.get("/api/state").json()["answered"] == 0       # the refused answer was not stored


def test_host_rules_follow_the_bound_address(study):
    assert client_for(study).get("/", headers={"host": "localhost:8000"}).status_code == 200
    lan = client_for(study, host="0.0.0.0", port=8080, allow_hosts=["Turing.Lab"])
    for host in ("192.168.1.20:8080", "[fe80::1]:8080", "localhost:8080", "turing.lab:8080", "TURING.LAB.:8080"):
        assert lan.get("/healthz", headers={"host": host}).status_code == 200, host
    for host in ("evil.example:8080", "turing.lab:8000", "turing.lab.evil.example:8080"):
        assert lan.get("/healthz", headers={"host": host}).status_code == 421, host
    one_ip = client_for(study, host="10.0.0.5", port=80)
    assert one_ip.get("/healthz", headers={"host": "10.0.0.5"}).status_code == 200   # no port: 80
    assert one_ip.get("/healthz", headers={"host": "10.0.0.6"}).status_code == 421
    assert one_ip.get("/healthz", headers={"host": "localhost"}).status_code == 421
    for bad in ("http://turing.lab", "turing.lab:8080", "turing lab", "a/b"):
        with pytest.raises(InputError, match="--allow-host"):
            host_checker("0.0.0.0", 8080, [bad])
    with pytest.raises(InputError, match="--host 'turing.lab'"):
        host_checker("turing.lab", 8080)


V1_READERS = """CREATE TABLE readers (
    reader_id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL UNIQUE COLLATE NOCASE,
    token TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
)"""


def test_schema_1_study_is_upgraded_keeping_every_answer(study):
    images = open_study(study).images()
    db = study / "study.sqlite3"
    with sqlite3.connect(db) as con:                         # turn the new study into one made by schema 1
        con.execute("DROP TABLE sessions")
        con.execute("DROP TABLE readers")
        con.execute(V1_READERS)
        con.executemany("INSERT INTO readers VALUES (?, ?, ?, ?)",
                        [(1, "Ann", "old-token-ann", "t"), (2, "Bob", "old-token-bob", "t")])
        con.executemany("INSERT INTO answers VALUES (?, ?, ?, ?, ?, ?)",
                        [(1, images[0].image_id, "real", 3, None, "t"), (1, images[1].image_id, "real", 4, 9, "t"),
                         (2, images[0].image_id, "synthetic", 1, None, "t")])
        con.execute("UPDATE meta SET value = '1' WHERE key = 'schema_version'")
    con.close()
    before = [("Ann", images[0].image_id, "real", 3), ("Ann", images[1].image_id, "real", 4),
              ("Bob", images[0].image_id, "synthetic", 1)]
    client = client_for(study)
    store = client.app.state.store
    assert store.meta()["schema_version"] == "2"
    assert [(a.reader, a.image_id, a.answer, a.confidence) for a in store.answers()] == before
    assert [(r.name, has_code) for r, has_code in store.readers()] == [("Ann", False), ("Bob", False)]
    client.cookies.set(SESSION_COOKIE, "old-token-ann")    # a name-era cookie no longer signs in
    assert client.get("/api/state").json() == {"reader": None}
    state = login(client, invite(study, "ann")["Ann"])       # no --renew needed: Ann had no code
    assert state["reader"] == "Ann" and state["answered"] == 2
    assert invite(study, "Cy")["Cy"]                          # ids keep counting after the rebuild
    assert [r.reader_id for r, _ in store.readers()] == [1, 2, 3]
    open_study(study)                                         # opening again: already schema 2, nothing to do
