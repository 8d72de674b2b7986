"""Shared by the CLI safety tests: the one-line error contract, and the tiny training run they attack."""

from mtp_lab.cli import main as cli_main


def one_line_error(capsys, argv) -> str:
    """Run the command; it must exit 2 with exactly one line, `mtp-lab CMD: error: ...`, on stderr."""
    code = cli_main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "\n" not in err and err.startswith(f"mtp-lab {argv[0]}: error: "), err
    return err


def train_tiny_run(mp, tmp, sample_root) -> list[str]:
    """Train a 2-step tiny run into tmp/run (a checkpoint at each step; token cache in tmp/cache, set through the
    MonkeyPatch `mp`); returns the train arguments without --out."""
    mp.setenv("MTP_LAB_CACHE", str(tmp / "cache"))
    args = ["train", "--preset", "tiny", "--root", str(sample_root), "--tokenizer", str(tmp / "tok.json"),
            "--vocab-size", "300", "--batch-size", "4", "--seq-len", "32", "--eval-batches", "1",
            "--threads", "1"]
    assert cli_main(args + ["--out", str(tmp / "run"), "--steps", "2", "--save-interval", "1"]) == 0
    return args
