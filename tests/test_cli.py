"""The `mcfast` command line: building the parser (what --help does) must stay light."""
import subprocess
import sys


def test_help_does_not_import_torch():
    # every command registers its options without torch, so `mcfast --help` answers in a fraction of a second
    code = ("import sys; from mcfast.cli import build_parser; build_parser(); "
            "print(sorted(m for m in ('torch', 'mcfast._C') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_help_lists_every_command():
    from mcfast.cli import COMMANDS, build_parser

    text = build_parser().format_help()
    for name in COMMANDS:
        assert name in text


def test_mcfast_warnings_are_one_line_like_errors(monkeypatch, capsys):
    import warnings

    from mcfast import cli
    from mcfast.commands import info
    from mcfast.errors import McfastWarning

    def warn_then_succeed(args):
        warnings.warn("a.dcm: no RescaleSlope; read as slope 1", McfastWarning)
        return 0

    real_register = info.register

    def register(sub):
        real_register(sub)
        sub.choices["info"].set_defaults(func=warn_then_succeed)

    monkeypatch.setattr(info, "register", register)
    assert cli.main(["info", "anything"]) == 0
    err = capsys.readouterr().err
    assert err == "mcfast info: warning: a.dcm: no RescaleSlope; read as slope 1\n"
