"""The one-line error contract of the command line, shared by the CLI safety tests."""

from mtp_lab.cli import main as cli_main


def one_line_error(capsys, argv) -> str:
    """Run the command; it must exit 2 with exactly one line, `mtp-lab CMD: error: ...`, on stderr."""
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and err.startswith(f"mtp-lab {argv[0]}: error: "), err
    return err
