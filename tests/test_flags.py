"""The shared argument checks (config.check_int, check_choice) and the command-line flags built from the config
dataclasses (mtp_lab.commands.flags)."""

import argparse

import pytest

from mtp_lab.commands.flags import add_dataclass_flags, dataclass_values, field_comments
from mtp_lab.config import FP8Scope, ModelConfig, check_choice, check_int
from mtp_lab.distill import DistillConfig
from mtp_lab.train import TrainConfig


def test_check_int_accepts_real_integers_only():
    assert check_int("k", 3, minimum=1) == 3
    assert check_int("k", 0) == 0
    for bad in (0, -1, True, 2.0, "2", None):
        with pytest.raises(ValueError, match=r"k must be a positive integer \(drafts\), got"):
            check_int("k", bad, minimum=1, note=" (drafts)")
    with pytest.raises(ValueError, match="must be an integer >= 2, got 1"):
        check_int("n", 1, minimum=2)


def test_check_choice_lists_the_literal_values():
    assert check_choice("fp8", "mtp", FP8Scope) == "mtp"
    with pytest.raises(ValueError, match="unknown fp8 'MTP'; fp8 must be one of 'none', 'main', 'mtp', 'all'"):
        check_choice("fp8", "MTP", FP8Scope)


def test_field_comments_are_the_help():
    comments = field_comments(TrainConfig)
    assert comments["lr"] == "peak learning rate"
    assert "betas" not in comments                         # no comment beside it
    assert field_comments(ModelConfig)["mtp_input_norm"].startswith("True: feed MTP module k the hidden state AFTER")
    assert field_comments(ModelConfig)["mtp_input_norm"].endswith("(vLLM/SGLang); False: the state before it "
                                                                  "(an early vLLM variant)")   # continuation joined


def parser_for(cls, **kw) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(exit_on_error=False)
    add_dataclass_flags(p, cls, **kw)
    return p


def test_flags_from_a_dataclass_types_choices_defaults_and_names():
    p = parser_for(TrainConfig, skip={"betas"}, keep_defaults=False, rename={"lam": "lambda"})
    args = p.parse_args(["--seq-len", "64", "--lambda", "0.2", "--precision", "fp32"])
    assert (args.seq_len, args.lam, args.precision, args.steps) == (64, 0.2, "fp32", None)
    assert dataclass_values(args, TrainConfig, skip={"betas"}) == {"seq_len": 64, "lam": 0.2, "precision": "fp32"}
    with pytest.raises(argparse.ArgumentError, match="invalid choice"):
        p.parse_args(["--precision", "fp16"])            # the Literal's values are the choices
    with pytest.raises(argparse.ArgumentError, match="invalid int value"):
        p.parse_args(["--steps", "1.5"])
    distill = parser_for(DistillConfig).parse_args([])  # keep_defaults: the field defaults, shown in --help
    assert DistillConfig(**dataclass_values(distill, DistillConfig)) == DistillConfig()
    assert "(default: 300)" in parser_for(DistillConfig).format_help()


def test_a_field_without_a_flag_type_is_refused():
    with pytest.raises(TypeError, match="no command-line flag for a field of type"):
        parser_for(TrainConfig)                           # betas: tuple[float, float]


def test_nested_literals_are_flattened():
    p = parser_for(ModelConfig, only=("fp8",), keep_defaults=False)
    assert p.parse_args(["--fp8", "all"]).fp8 == "all"
