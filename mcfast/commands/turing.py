"""`mcfast turing`: Visual Turing Test — create a study, serve it to readers, report the results."""
from __future__ import annotations

import argparse
import ipaddress
import urllib.parse

from mcfast.errors import InputError

DEFAULT_STUDY = "turing-study"
DEFAULT_URL = "http://127.0.0.1:8000/"


def _add_study_options(parser: argparse.ArgumentParser, creating: bool) -> None:
    need = "required" if creating else "only to create the study when --study holds none yet"
    parser.add_argument("--real", metavar="DIR", required=creating,
                        help=f"folder of real images: PNG (shown as is), NPY in HU or DICOM ({need})")
    parser.add_argument("--synthetic", metavar="DIR", required=creating,
                        help=f"folder of synthetic images, same formats ({need})")
    parser.add_argument("--n", type=int, default=None,
                        help="number of images shown, half real and half synthetic (even; default 30)")
    parser.add_argument("--seed", type=int, default=None,
                        help="seed of the selection, CT windows, order and image ids (default 0)")
    parser.add_argument("--size", type=int, default=None,
                        help="every image is re-encoded as a SIZE x SIZE grayscale PNG, stored uncompressed so all "
                             "have one byte length (default 512)")
    parser.add_argument("--modality", choices=("ct", "mg"), default=None,
                        help="ct: NPY/DICOM hold HU, shown in a window drawn from lung / soft tissue / bone; "
                             "mg: mammograms, NPY stretched to its range, DICOM shown with its own VOI LUT or window "
                             "(default ct)")


def _add_url_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--url", default=DEFAULT_URL,
                        help="address readers open, used to print each reader's link URL#code=CODE "
                             f"(default {DEFAULT_URL})")


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "turing", help="Visual Turing Test: readers label real vs synthetic images in a browser",
        description="Visual Turing Test. `create` renders a balanced, shuffled study; `invite` gives readers their "
                    "sign-in codes and links; `serve` runs the reader web page (creating the study first when "
                    "needed); `report` computes accuracy, sensitivity, specificity, binomial tests and Fleiss' kappa.")
    sub = parser.add_subparsers(dest="turing_command", metavar="ACTION", required=True)

    create = sub.add_parser("create", help="create a study folder (rendered images + SQLite database)",
                            description="Pick n/2 real and n/2 synthetic images, draw CT windows, shuffle, "
                                        "render to PNG of one size under opaque ids, record all in STUDY/study.sqlite3."
                                        " Colour images are refused.")
    create.add_argument("--study", metavar="DIR", default=DEFAULT_STUDY,
                        help=f"study folder to create (default ./{DEFAULT_STUDY})")
    _add_study_options(create, creating=True)
    create.add_argument("--reader", metavar="NAME", action="append", default=[],
                        help="invite a reader right away and print their code and link (repeatable; "
                             "`invite` adds more later)")
    _add_url_option(create)
    create.set_defaults(func=run, turing_command="create")

    invite = sub.add_parser("invite", help="give readers their sign-in codes and links",
                            description="Print a random sign-in code and a personal link for each NAME. The name is "
                                        "what the report shows; the code is what signs the reader in. Codes are "
                                        "stored only as hashes, so they are shown once: keep the output or use "
                                        "--renew for a lost one.")
    invite.add_argument("names", metavar="NAME", nargs="+", help="reader name (1 to 60 characters)")
    invite.add_argument("--study", metavar="DIR", default=DEFAULT_STUDY,
                        help=f"study folder (default ./{DEFAULT_STUDY})")
    invite.add_argument("--renew", action="store_true",
                        help="replace the code of existing readers: their old code and browser sessions stop "
                             "working, their answers stay")
    _add_url_option(invite)
    invite.set_defaults(func=run, turing_command="invite")

    serve = sub.add_parser("serve", help="serve the reader web page",
                           description="Serve the study to readers at http://HOST:PORT/. Readers sign in with "
                                       "the code or link from `invite`; answers are saved one by one and a reader "
                                       "resumes where they stopped, also after a server restart. Requests for any "
                                       "other host name than HOST are refused (DNS rebinding).")
    serve.add_argument("--study", metavar="DIR", default=DEFAULT_STUDY,
                       help=f"study folder; created from --real/--synthetic when it holds no study "
                            f"(default ./{DEFAULT_STUDY})")
    _add_study_options(serve, creating=False)
    serve.add_argument("--host", default="127.0.0.1",
                       help="address to listen on (default 127.0.0.1, this machine only; the page is plain HTTP, "
                            "so only open it to a trusted network)")
    serve.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    serve.add_argument("--allow-host", metavar="NAME", action="append", default=[],
                       help="also accept requests addressed to this host name (the name readers type, e.g. a lab "
                            "DNS name; IP literals of HOST and localhost are always accepted; repeatable)")
    serve.set_defaults(func=run, turing_command="serve")

    report = sub.add_parser("report", help="write the HTML report and the JSON of its numbers",
                            description="Accuracy, sensitivity (synthetic called Fake), specificity (real called "
                                        "Real) with 95% Wilson intervals and exact binomial tests against 0.5, per "
                                        "reader and pooled; Fleiss' kappa between readers who answered every image.")
    report.add_argument("--study", metavar="DIR", default=DEFAULT_STUDY, help="study folder")
    report.add_argument("--out", metavar="HTML", default="turing-report.html", help="HTML report to write")
    report.add_argument("--json", metavar="FILE", default=None,
                        help="JSON of the numbers (default: the --out path with .json)")
    report.set_defaults(func=run, turing_command="report")


def _check_port(host: str, port: int) -> None:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise InputError(f"--host {host!r}: expected an IP address such as 127.0.0.1") from None
    if not 1 <= port <= 65535:
        raise InputError(f"--port {port}: expected 1 to 65535")


def _check_url(url: str) -> str:
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc or parts.query or parts.fragment:
        raise InputError(f"--url {url!r}: expected the address readers open, such as {DEFAULT_URL}")
    return url if url.endswith("/") else url + "/"


def _print_invites(issued, url: str) -> None:
    for reader, code in issued:
        print(f"{reader.name}: code {code}  link {url}#code={code}")
    print("codes are shown only this once (the study keeps their hashes); "
          "`mcfast turing invite --renew NAME` replaces a lost one")


def run(args: argparse.Namespace) -> int:
    from mcfast.evaluate.turing import study as study_mod
    from mcfast.evaluate.turing.store import normalize_names

    if args.turing_command == "create":
        url = _check_url(args.url)
        names = normalize_names(args.reader)  # bad or repeated names are refused before any work
        options = {k: getattr(args, k) for k in ("n", "seed", "size", "modality") if getattr(args, k) is not None}
        store = study_mod.create_study(args.study, args.real, args.synthetic, **options)
        print(f"created study {args.study}: {store.total()} images")
        if names:
            _print_invites(store.invite(names), url)
        else:
            print(f"invite readers with: mcfast turing invite --study {args.study} NAME ...")
        return 0
    if args.turing_command == "invite":
        url = _check_url(args.url)
        _print_invites(study_mod.open_study(args.study).invite(args.names, renew=args.renew), url)
        return 0
    if args.turing_command == "serve":
        from mcfast.evaluate.turing.app import host_checker, serve

        _check_port(args.host, args.port)
        host_checker(args.host, args.port, args.allow_host)  # refuses a malformed --allow-host before any work
        store, created = study_mod.open_or_create(args.study, args.real, args.synthetic, n=args.n, seed=args.seed,
                                                  size=args.size, modality=args.modality)
        shown = "127.0.0.1" if args.host in ("0.0.0.0", "::") else args.host
        shown = f"[{shown}]" if ":" in shown else shown
        invited = sum(has_code for _, has_code in store.readers())
        hint = "" if invited else f"; no reader has a code yet: mcfast turing invite --study {args.study} NAME"
        print(f"{'created' if created else 'opened'} study {args.study} ({store.total()} images, {invited} readers "
              f"invited); readers open http://{shown}:{args.port}/ with their code{hint}  "
              "(Ctrl+C stops, answers are kept)", flush=True)
        serve(args.study, host=args.host, port=args.port, allow_hosts=args.allow_host)
        return 0
    from mcfast.evaluate.turing.report import write_report

    numbers = write_report(study_mod.open_study(args.study), args.out, args.json)
    pooled = numbers["pooled"]
    acc = pooled["accuracy"]["value"]
    print(f"wrote {args.out}: {len(numbers['readers'])} readers, {pooled['answers']} answers, pooled accuracy "
          f"{'–' if acc is None else f'{acc:.3f}'}")
    return 0
