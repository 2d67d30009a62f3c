"""The metric contract: validity conditions and deterministic log parsing."""

from __future__ import annotations

import math

import pytest

from speedrunner.tasks.metrics import Condition, Parser, compile_pattern, parse_metrics

LOG = """\
step 1 val_loss 4.10 train_time 1000ms
step 2 val_loss 3.50 train_time 2000ms
step 3 val_loss 3.27 train_time 3000ms
final answer: 77031
"""


@pytest.mark.parametrize("text,expected", [
    ("val_loss <= 3.28", Condition("val_loss", "<=", 3.28)),
    ("val_loss<=3.28", Condition("val_loss", "<=", 3.28)),
    ("  exit_code == 0  ", Condition("exit_code", "==", 0.0)),
    ("answer != -1", Condition("answer", "!=", -1.0)),
    ("acc >= .5", Condition("acc", ">=", 0.5)),
    ("t < 1e3", Condition("t", "<", 1000.0)),
    ("t > 2.5E-2", Condition("t", ">", 0.025)),
    ("_x1 == +7", Condition("_x1", "==", 7.0)),
])
def test_condition_parse_good(text, expected):
    assert Condition.parse(text) == expected


@pytest.mark.parametrize("text", [
    "", "val_loss", "val_loss <= ", "val_loss => 3", "val_loss = 3", "3.28 >= val_loss", "val_loss <= 3.2.8",
    "val loss <= 3", "val_loss <= 3 or 1", "__import__('os').system('x') == 0", "val_loss <= 3.2.8",
])
def test_condition_parse_bad(text):
    with pytest.raises(ValueError) as ei:
        Condition.parse(text)
    msg = str(ei.value)
    assert repr(text) in msg
    assert "val_loss <= 3.28" in msg  # the message shows the expected form


@pytest.mark.parametrize("op,value,ok", [
    ("<=", 3.28, True), ("<", 3.27, False), ("==", 3.27, True), ("!=", 3.27, False), (">", 3.0, True),
    (">=", 3.28, False),
])
def test_condition_check_operators(op, value, ok):
    c = Condition("val_loss", op, value)
    assert (c.check({"val_loss": 3.27}) is None) is ok


def test_condition_check_failure_message():
    msg = Condition.parse("val_loss <= 3.28").check({"val_loss": 3.5})
    assert msg == "val_loss = 3.5 fails val_loss <= 3.28"
    msg = Condition.parse("exit_code == 0").check({"exit_code": 1.0})
    assert msg == "exit_code = 1 fails exit_code == 0"


def test_condition_check_missing_metric():
    assert Condition.parse("val_loss <= 3.28").check({"other": 1.0}) == "val_loss not found in the log"


@pytest.mark.parametrize("op", ["<=", ">=", "!=", "==", "<", ">"])
def test_condition_nan_never_passes(op):
    # NaN != 3 is True in Python; a NaN metric must still fail every condition
    msg = Condition("val_loss", op, 3.0).check({"val_loss": float("nan")})
    assert msg == "val_loss is NaN"


def test_condition_str():
    assert str(Condition.parse("val_loss<=3.28")) == "val_loss <= 3.28"
    assert str(Condition.parse("answer == 77031")) == "answer == 77031"


def test_parser_last_match_by_default():
    p = Parser(compile_pattern(r"val_loss (?P<val_loss>[0-9.]+) train_time (?P<train_time>\d+)ms"))
    assert p.parse(LOG) == {"val_loss": 3.27, "train_time": 3000.0}


def test_parser_first_match():
    p = Parser(compile_pattern(r"val_loss (?P<val_loss>[0-9.]+)"), match="first")
    assert p.parse(LOG) == {"val_loss": 4.10}


def test_parser_is_line_anchored_multiline():
    p = Parser(compile_pattern(r"^final answer: (?P<answer>\d+)$"))
    assert p.parse(LOG) == {"answer": 77031.0}


def test_parser_no_match_gives_nothing():
    p = Parser(compile_pattern(r"^runtime_ms: (?P<runtime_ms>[0-9.]+)"))
    assert p.parse(LOG) == {}
    assert p.parse("") == {}


def test_parser_unparsable_number_is_nan():
    p = Parser(compile_pattern(r"loss (?P<loss>\S+)"))
    out = p.parse("loss 3.1.4\n")
    assert math.isnan(out["loss"])
    assert Condition.parse("loss < 10").check(out) == "loss is NaN"


def test_parser_optional_group_that_did_not_match_is_left_out():
    p = Parser(compile_pattern(r"loss (?P<loss>[0-9.]+)(?: acc (?P<acc>[0-9.]+))?"))
    assert p.parse("loss 2.5\n") == {"loss": 2.5}


def test_parser_reads_nan_and_inf_literals_as_floats():
    p = Parser(compile_pattern(r"loss (?P<loss>\S+)"))
    assert math.isnan(p.parse("loss nan\n")["loss"])
    assert p.parse("loss inf\n")["loss"] == math.inf


def test_compile_pattern_needs_a_named_group():
    with pytest.raises(ValueError, match="no named group"):
        compile_pattern(r"val_loss ([0-9.]+)")


def test_parse_metrics_sources_and_later_parser_wins():
    parsers = [
        Parser(compile_pattern(r"val_loss (?P<val_loss>[0-9.]+)")),
        Parser(compile_pattern(r"^warn: (?P<warnings>\d+)"), source="stderr"),
        Parser(compile_pattern(r"^override val_loss (?P<val_loss>[0-9.]+)"), source="stderr"),
    ]
    logs = {"stdout": LOG, "stderr": "warn: 2\noverride val_loss 9.5\n"}
    assert parse_metrics(parsers, logs) == {"val_loss": 9.5, "warnings": 2.0}
    # a missing log parses as empty
    assert parse_metrics(parsers, {"stdout": LOG}) == {"val_loss": 3.27}


def test_parsing_is_deterministic():
    p = Parser(compile_pattern(r"val_loss (?P<val_loss>[0-9.]+)"))
    assert all(p.parse(LOG) == {"val_loss": 3.27} for _ in range(5))


def test_condition_between_two_metrics():
    c = Condition.parse("train_time <= wall_ms")
    assert c.other == "wall_ms" and c.names == ["train_time", "wall_ms"]
    assert c.check({"train_time": 900.0, "wall_ms": 1000.0}) is None
    msg = c.check({"train_time": 1500.0, "wall_ms": 1000.0})
    assert msg and "train_time = 1500" in msg and "wall_ms = 1000" in msg
    assert c.check({"train_time": 1.0}) == "wall_ms not found in the log"
