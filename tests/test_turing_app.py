"""Turing web app through FastAPI's TestClient: sessions, answers, resume, no leaks, no path traversal."""
import io
import threading

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, PngImagePlugin

from mcfast.evaluate.turing.app import SESSION_COOKIE, create_app
from mcfast.evaluate.turing.render import png_chunk_types
from mcfast.evaluate.turing.store import AnswerRejected
from mcfast.evaluate.turing.study import create_study

STATE_KEYS = {"reader", "answered", "total", "image_id", "window"}


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


def login(client, name="Ann"):
    res = client.post("/api/session", json={"name": name})
    assert res.status_code == 200, res.text
    return res.json()


def test_session_answer_and_finish(study):
    client = TestClient(create_app(study))
    assert client.get("/api/state").json() == {"reader": None}
    assert client.post("/api/answer", json={"image_id": "x", "answer": "real", "confidence": 3}).status_code == 401
    state = login(client, "  Ann   Lee ")
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


def test_resume_after_restart_by_cookie_and_by_name(study):
    client = TestClient(create_app(study))
    state = login(client)
    for _ in range(2):
        state = client.post("/api/answer", json={"image_id": state["image_id"], "answer": "real",
                                                 "confidence": 4}).json()
    cookie = client.cookies.get(SESSION_COOKIE)
    restarted = TestClient(create_app(study))            # a new app on the same folder = a server restart
    restarted.cookies.set(SESSION_COOKIE, cookie)
    assert restarted.get("/api/state").json() == state
    other_browser = TestClient(create_app(study))
    assert login(other_browser, "ann") == state            # names are case-insensitive: same reader resumes
    assert login(TestClient(create_app(study)), "Bob")["answered"] == 0


@pytest.mark.parametrize("body", [
    {"image_id": "x", "answer": "real", "confidence": 0},
    {"image_id": "x", "answer": "real", "confidence": 6},
    {"image_id": "x", "answer": "maybe", "confidence": 3},
    {"image_id": "x" * 65, "answer": "real", "confidence": 3},
    {"image_id": "x", "answer": "real"},
])
def test_answer_validation(study, body):
    client = TestClient(create_app(study))
    login(client)
    assert client.post("/api/answer", json=body).status_code == 422
    assert client.get("/api/state").json()["answered"] == 0


@pytest.mark.parametrize("name", ["", "   ", "x" * 61, "tab\x07bell"])
def test_bad_names_are_refused(study, name):
    res = TestClient(create_app(study)).post("/api/session", json={"name": name})
    assert res.status_code == 422


def test_nothing_leaks_which_is_which(study, tmp_path):
    client = TestClient(create_app(study))
    texts = [client.get(path).text for path in ("/", "/static/app.css", "/static/app.js")]
    state = login(client)
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
    client = TestClient(create_app(study))
    assert client.get(f"/api/image/{client.app.state.store.images()[0].image_id}").status_code == 401
    login(client)
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
    reader = store.reader_for_name("Racer")
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
