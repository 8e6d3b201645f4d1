"""The reader web app (FastAPI): sign-in by reader code, one image at a time, answers stored as they come.

Leak and traversal rules: the browser only ever sees opaque image ids; an image is served by looking its id up in
the study database and reading the stored file name from there, never a path taken from the request. Every image
is a stored (uncompressed) PNG of the study's one size, so every image response has the same length and the same
headers; none carries file names, dates or ETags.

A reader signs in with the code from ``mcfast turing invite`` (typed, or from their link's ``#code=``), never with
a name. Requests whose Host header is not the address the server is bound to are refused, so a page on another
site cannot reach the app through a domain name re-pointed at this machine (DNS rebinding).
"""
from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from typing import Iterable, Literal

from mcfast.extras import require

require("fastapi", extra="turing", feature="the Visual Turing Test app")
from fastapi import Cookie, FastAPI, HTTPException, Response  # noqa: E402
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from mcfast.errors import InputError
from mcfast.evaluate.turing.page import APP_CSS, APP_JS, INDEX_HTML
from mcfast.evaluate.turing.render import stored_png_length
from mcfast.evaluate.turing.store import AnswerRejected, Reader, Store
from mcfast.evaluate.turing.study import IMAGES_DIR, canonicalize_images, open_study

SESSION_COOKIE = "turing_session"
SESSION_MAX_AGE = 60 * 60 * 24 * 90  # a study can run for weeks; the reader resumes by cookie or by their code
WILDCARD_HOSTS = ("0.0.0.0", "::")
_SECURITY_HEADERS = {
    # no-transform: a proxy that compressed the images would make their lengths follow their content again.
    "Cache-Control": "no-store, no-transform",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": "default-src 'self'; img-src 'self'; style-src 'self'; script-src 'self'; "
                               "frame-ancestors 'none'",
}


class SessionIn(BaseModel):
    code: str = Field(min_length=1, max_length=200)


class AnswerIn(BaseModel):
    image_id: str = Field(min_length=1, max_length=64)
    answer: Literal["real", "synthetic"]
    confidence: int = Field(ge=1, le=5)
    elapsed_ms: int | None = Field(default=None, ge=0, le=10**9)


def _state(store: Store, reader: Reader | None) -> dict:
    if reader is None:
        return {"reader": None}
    return {"reader": reader.name, **store.progress(reader.reader_id)}


_HOST_HEADER = re.compile(r"\[([0-9a-f:.]+)\](?::(\d{1,5}))?|([a-z0-9._-]+)(?::(\d{1,5}))?")
_HOST_NAME = re.compile(r"[a-z0-9]([a-z0-9-]*[a-z0-9])?(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*\.?")


def _split_host(value: str) -> tuple[str, int | None] | None:
    """``host[:port]`` of a Host header (IPv6 in brackets) as (lower-case host, port or None); None if malformed."""
    match = _HOST_HEADER.fullmatch(value.strip().lower())
    if match is None:
        return None
    port = match.group(2) or match.group(4)
    return match.group(1) or match.group(3), int(port) if port else None


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def host_checker(host: str, port: int, allow_hosts: Iterable[str] = ()):
    """A predicate on Host header values: True for the address the server is bound to.

    Accepted, all on ``port`` (a Host without a port means 80): the bound IP (any IP literal when bound to 0.0.0.0
    or ::, since a browser sends a literal only when the reader typed one), ``localhost`` when bound to a loopback
    or wildcard address (browsers resolve it to this machine themselves), and each name in ``allow_hosts``. Any
    other name is refused: it is one a DNS server could point at this machine, the DNS rebinding route.
    """
    allowed = set()
    for name in allow_hosts:
        cleaned = str(name).strip().lower().strip("[]")
        if not (_is_ip(cleaned) or _HOST_NAME.fullmatch(cleaned)):
            raise InputError(f"--allow-host {name!r}: expected a host name or IP address such as turing.lab "
                             "(no scheme, port or path)")
        allowed.add(str(ipaddress.ip_address(cleaned)) if _is_ip(cleaned) else cleaned.rstrip("."))
    bound = host.strip().lower().strip("[]")
    if bound != "localhost" and not _is_ip(bound):
        raise InputError(f"--host {host!r}: expected an IP address such as 127.0.0.1")
    wildcard = bound in WILDCARD_HOSTS
    if wildcard or bound == "localhost" or (_is_ip(bound) and ipaddress.ip_address(bound).is_loopback):
        allowed |= {"localhost", "127.0.0.1", "::1"} if bound == "localhost" else {"localhost"}
    if bound != "localhost" and not wildcard:
        allowed.add(str(ipaddress.ip_address(bound)))

    def accepts(value: str | None) -> bool:
        parts = _split_host(value or "")
        if parts is None or (parts[1] or 80) != port:
            return False
        name = parts[0].rstrip(".")  # "turing.lab." is the same name as "turing.lab"
        if _is_ip(name):
            name = str(ipaddress.ip_address(name))
            return wildcard or name in allowed
        return name in allowed

    return accepts


def create_app(study_dir: str | Path, *, host: str = "127.0.0.1", port: int = 8000,
               allow_hosts: Iterable[str] = ()) -> FastAPI:
    """The app for the study in ``study_dir`` (which must exist), to be served on ``host``:``port``.

    Requests must name that address in their Host header (see :func:`host_checker`); ``allow_hosts`` adds host
    names readers use to reach it (a DNS name on the lab network, say). Images of a study made by an older mcfast
    are first rewritten in the fixed-size form (:func:`study.canonicalize_images`).
    """
    study_dir = Path(study_dir)
    store = open_study(study_dir)
    canonicalize_images(study_dir, store)
    size = int(store.meta()["size"])
    image_length = stored_png_length(size, size)
    images_dir = study_dir / IMAGES_DIR
    host_ok = host_checker(host, port, allow_hosts)
    app = FastAPI(title="mcfast Visual Turing Test", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.store = store

    @app.middleware("http")
    async def security_headers(request, call_next):
        if not host_ok(request.headers.get("host")):
            # 421 Misdirected Request: this server does not answer for that name (and nothing of the study leaks).
            response = Response("unexpected Host header; open the study at the address it is served on\n",
                                status_code=421, media_type="text/plain")
        else:
            response = await call_next(request)
        for key, value in _SECURITY_HEADERS.items():
            response.headers.setdefault(key, value)
        return response

    def current_reader(token: str | None) -> Reader:
        reader = store.reader_by_token(token)
        if reader is None:
            raise HTTPException(status_code=401, detail="no reader session; enter your reader code first")
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
        signed_in = store.sign_in(body.code)
        if signed_in is None:
            raise HTTPException(status_code=401, detail="unknown reader code; check it, or ask the study's "
                                                        "organiser for your link")
        reader, token = signed_in
        response = JSONResponse(_state(store, reader))
        response.set_cookie(SESSION_COOKIE, token, max_age=SESSION_MAX_AGE, httponly=True,
                            samesite="strict", path="/")
        return response

    @app.post("/api/logout")
    def logout(turing_session: str | None = Cookie(default=None)) -> JSONResponse:
        store.sign_out(turing_session)
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
        if len(data) != image_length:
            # Checked at start (canonicalize_images); a file changed since must not be served with its own length.
            raise HTTPException(status_code=500, detail="study image changed on disk; restart the server")
        # Bytes, not FileResponse: that would add Last-Modified / ETag from the file, a side channel on order.
        return Response(data, media_type="image/png")

    return app


def serve(study_dir: str | Path, host: str = "127.0.0.1", port: int = 8000, allow_hosts: Iterable[str] = ()) -> None:
    """Run the app with uvicorn until interrupted."""
    uvicorn = require("uvicorn", extra="turing", feature="mcfast turing serve")

    app = create_app(study_dir, host=host, port=port, allow_hosts=allow_hosts)
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, server_header=False,
                date_header=False)
