"""The reader web app (FastAPI): sessions by name, one image at a time, answers stored as they come.

Leak and traversal rules: the browser only ever sees opaque image ids; an image is served by looking its id up in
the study database and reading the stored file name from there, never a path taken from the request. Responses
carry no file names, dates, ETags or sizes other than the common PNG size.
"""
from __future__ import annotations

from pathlib import Path
from typing import Literal

from fastapi import Cookie, FastAPI, HTTPException, Response
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from mcfast.errors import InputError
from mcfast.evaluate.turing.page import APP_CSS, APP_JS, INDEX_HTML
from mcfast.evaluate.turing.store import AnswerRejected, Reader, Store
from mcfast.evaluate.turing.study import IMAGES_DIR, open_study

SESSION_COOKIE = "turing_session"
SESSION_MAX_AGE = 60 * 60 * 24 * 90  # a study can run for weeks; the reader resumes by cookie or by name
_SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'",
}


class SessionIn(BaseModel):
    name: str = Field(min_length=1, max_length=200)


class AnswerIn(BaseModel):
    image_id: str = Field(min_length=1, max_length=64)
    answer: Literal["real", "synthetic"]
    confidence: int = Field(ge=1, le=5)
    elapsed_ms: int | None = Field(default=None, ge=0, le=10**9)


def _state(store: Store, reader: Reader | None) -> dict:
    if reader is None:
        return {"reader": None}
    return {"reader": reader.name, **store.progress(reader.reader_id)}


def create_app(study_dir: str | Path) -> FastAPI:
    """The app for the study in ``study_dir`` (which must exist)."""
    study_dir = Path(study_dir)
    store = open_study(study_dir)
    images_dir = study_dir / IMAGES_DIR
    app = FastAPI(title="mcfast Visual Turing Test", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    @app.middleware("http")
    async def security_headers(request, call_next):
        response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def current_reader(token: str | None) -> Reader:
        reader = store.reader_by_token(token)
        if reader is None:
            raise HTTPException(status_code=401, detail="no reader session; enter your name first")
        return reader

    @app.get("/", response_class=HTMLResponse)
    def index() -> HTMLResponse:
        return HTMLResponse(INDEX_HTML)

    @app.get("/static/app.css")
    def css() -> Response:
        return Response(APP_CSS, media_type="text/css")

    @app.get("/static/app.js")
    def js() -> Response:
        return Response(APP_JS, media_type="text/javascript")

    @app.get("/healthz")
    def healthz() -> dict:
        return {"ok": True, "images": store.total()}

    @app.get("/api/state")
    def state(turing_session: str | None = Cookie(default=None)) -> dict:
        return _state(store, store.reader_by_token(turing_session))

    @app.post("/api/session")
    def session(body: SessionIn) -> JSONResponse:
        try:
            reader = store.reader_for_name(body.name)
        except InputError as exc:
            raise HTTPException(status_code=422, detail=str(exc)) from None
        response = JSONResponse(_state(store, reader))
        response.set_cookie(SESSION_COOKIE, reader.token, max_age=SESSION_MAX_AGE, httponly=True,
                            samesite="strict", path="/")
        return response

    @app.post("/api/logout")
    def logout() -> JSONResponse:
        response = JSONResponse({"reader": None})
        response.delete_cookie(SESSION_COOKIE, path="/")
        return response

    @app.post("/api/answer")
    def answer(body: AnswerIn, turing_session: str | None = Cookie(default=None)) -> dict:
        reader = current_reader(turing_session)
        try:
            store.record_answer(reader.reader_id, body.image_id, body.answer, body.confidence, body.elapsed_ms)
        except AnswerRejected as exc:
            raise HTTPException(status_code=409, detail=str(exc)) from None
        return _state(store, reader)

    @app.get("/api/image/{image_id}")
    def image(image_id: str, turing_session: str | None = Cookie(default=None)) -> Response:
        current_reader(turing_session)
        file_name = store.image_file(image_id)  # the DB is the only source of a path
        if file_name is None:
            raise HTTPException(status_code=404, detail="no such image")
        try:
            data = (images_dir / file_name).read_bytes()
        except OSError:
            raise HTTPException(status_code=404, detail="no such image") from None
        # Bytes, not FileResponse: that would add Last-Modified / ETag from the file, a side channel on order.
        return Response(data, media_type="image/png")

    return app


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000) -> None:
    """Run the app with uvicorn until interrupted."""
    import uvicorn

    app = create_app(study_dir)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                date_header=False)
