"""The task.yaml schema and its loader.

A task is data: a ``task.yaml`` plus a template folder. ``extends:`` lets a family of tasks (a ladder)
share one base file. Every mistake in a task file is reported as ``<file>: field '<a.b>': <what is
expected>``; nothing here raises a bare traceback at a user.
"""

from __future__ import annotations

import string
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from speedrunner.core.errors import TaskError
from speedrunner.tasks.metrics import Condition, Parser, compile_pattern

TASK_FILE = "task.yaml"
# Measured by the harness for every run, usable in metric and valid_if like parsed values.
BUILTIN_METRICS = ("exit_code", "wall_s", "wall_ms", "cpu_s")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class MetricSpec(_Strict):
    name: str = Field(description="the primary metric, a named group of a parser (or 'wall_s')")
    direction: Literal["minimize", "maximize"] = "minimize"
    kind: Literal["time", "loss", "score", "other"] = "other"
    unit: str = ""


class ParserSpec(_Strict):
    pattern: str
    match: Literal["last", "first"] = "last"
    source: Literal["stdout", "stderr"] = "stdout"

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        try:
            compile_pattern(v)
        except Exception as e:  # re.error or our own ValueError
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


class SuspiciousSpec(_Strict):
    pattern: str
    message: str

    @field_validator("pattern")
    @classmethod
    def _compiles(cls, v: str) -> str:
        import re

        try:
            re.compile(v)
        except re.error as e:
            raise ValueError(f"invalid regular expression: {e}") from None
        return v


class ReevalSpec(_Strict):
    """How the harness re-evaluates a node itself (see scoring/reeval.py)."""

    export_env: str | None = None  # env var through which the harness asks the script to export its model
    evaluator: str | None = None  # "package.module:function" scoring the export on held-out data
    evaluator_args: dict[str, Any] = Field(default_factory=dict)  # placeholders allowed in string values
    max_test_gap: float | None = None  # invalid when test loss > reported val_loss + this
    mismatch_tolerance: float = 0.1  # flag when the node's own metric differs from the re-runs by more


class RequirementsSpec(BaseModel):
    """What a task needs. ``pip`` (and ``inherit``) are acted on: the executor runs the task's nodes in a
    virtual environment with those packages (execution/envs.py). Every other key (``python``, ``torch``,
    ``cuda``, ``triton``, ``gpu``, ``gpus``, as the upstream importer writes them) is informative."""

    model_config = ConfigDict(extra="allow")

    pip: list[str] = Field(default_factory=list)  # pip requirement specifiers, e.g. "six==1.16.0"
    inherit: bool = True  # the environment also sees speedrunner's own packages (after its own)

    @field_validator("pip")
    @classmethod
    def _specifiers(cls, v: list[str]) -> list[str]:
        for item in v:
            if not isinstance(item, str) or not item.strip():
                raise ValueError("each entry must be a requirement such as 'six==1.16.0'")
            if item.strip().startswith("-"):
                raise ValueError(f"{item!r}: pip options are not allowed here; list requirement specifiers "
                                 "such as 'six==1.16.0'")
        return v


class SizeSpec(_Strict):
    vars: dict[str, Any] = Field(default_factory=dict)
    timeout_s: float | None = None
    description: str = ""


class TaskSpec(_Strict):
    name: str
    description: str
    rules: str = ""
    template: str = "template"
    template_include: list[str] = Field(default_factory=lambda: ["*"])  # which template files a node gets
    command: list[str]
    timeout_s: float = 600.0
    env: dict[str, str] = Field(default_factory=dict)
    metric: MetricSpec
    parsers: list[ParserSpec] = Field(default_factory=list)
    valid_if: list[str] = Field(default_factory=lambda: ["exit_code == 0"])
    protected: list[str] = Field(default_factory=list)
    hidden: list[str] = Field(default_factory=list)  # absolute paths the node cannot read (sandbox)
    suspicious: list[SuspiciousSpec] = Field(default_factory=list)
    reeval: ReevalSpec = Field(default_factory=ReevalSpec)
    editable: list[str] = Field(default_factory=lambda: ["*.py"])
    hints: str | None = None
    reference: str | None = None
    data: str | None = None
    vars: dict[str, Any] = Field(default_factory=dict)
    sizes: dict[str, SizeSpec] = Field(default_factory=dict)
    default_size: str | None = None
    record: int | None = None
    suite: str | None = None
    # What the task needs: pip packages for its own environment (acted on), and what it was measured with
    # (python, torch, cuda, triton, gpu, gpus; informative).
    requirements: RequirementsSpec = Field(default_factory=RequirementsSpec)
    # Launch with torchrun: this many processes per node (None: run the command as it is), on nnodes nodes.
    nproc_per_node: int | None = Field(default=None, ge=1)
    nnodes: int = Field(default=1, ge=1)

    @field_validator("command")
    @classmethod
    def _nonempty(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError("must list the program and its arguments, e.g. ['{python}', 'solve.py']")
        return v

    @field_validator("valid_if")
    @classmethod
    def _conditions(cls, v: list[str]) -> list[str]:
        for text in v:
            if "{" in text:
                continue  # checked after placeholders are filled
            Condition.parse(text)
        return v


@dataclass
class Task:
    """A loaded task with placeholders filled for one size. Paths are absolute."""

    id: str
    name: str
    root: Path
    spec_path: Path
    description: str
    rules: str
    template_dir: Path
    template_include: list[str]
    command: list[str]
    timeout_s: float
    env: dict[str, str]
    metric: MetricSpec
    parsers: list[Parser]
    conditions: list[Condition]
    protected: list[str]  # globs over the workspace; absolute paths (e.g. {data_dir}/val.bin) are outside files
    editable: list[str]
    hints_dir: Path | None
    reference_dir: Path | None
    data: str | None
    size: str | None
    vars: dict[str, Any]
    record: int | None = None
    suite: str | None = None
    suspicious: list[tuple[str, str]] = field(default_factory=list)  # (regex, message) over changed lines
    hidden: list[str] = field(default_factory=list)  # absolute paths made unreadable inside the sandbox
    reeval: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    # torchrun: processes per node (None: the command runs as it is) and nodes
    nproc_per_node: int | None = None
    nnodes: int = 1
    # the task.yaml's requirements mapping: ``pip``/``inherit`` build the task's environment; the rest informs
    requirements: dict[str, Any] = field(default_factory=dict)

    @property
    def distributed(self) -> bool:
        """Launched with torchrun: the task declares nproc_per_node or more than one node."""
        return self.nproc_per_node is not None or self.nnodes > 1

    def better(self, a: float, b: float) -> bool:
        """True when metric value ``a`` is strictly better than ``b``."""
        return a < b if self.metric.direction == "minimize" else a > b

    def summary_line(self) -> str:
        return f"{self.id} ({self.metric.name}, {self.metric.direction})"


def _load_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        raise TaskError(f"{path}: file not found") from None
    except yaml.YAMLError as e:
        raise TaskError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise TaskError(f"{path}: expected a mapping of fields (name, description, command, metric, ...)")
    return data


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def read_spec(path: Path, _seen: tuple[Path, ...] = ()) -> dict[str, Any]:
    """Read a task.yaml, following ``extends:`` (relative to the file). Path fields in a base file
    stay relative to the file that is being loaded, which lets a ladder share one base."""
    path = path.resolve()
    if path in _seen:
        raise TaskError(f"{path}: 'extends' forms a cycle: {' -> '.join(map(str, _seen + (path,)))}")
    data = _load_yaml(path)
    parent = data.pop("extends", None)
    if parent is None:
        return data
    if not isinstance(parent, str):
        raise TaskError(f"{path}: field 'extends' must be a relative path to another task file")
    target = (path.parent / parent).resolve()
    if not target.is_file():
        raise TaskError(f"{path}: field 'extends': {target} not found; give a path relative to {path.parent}")
    base = read_spec(target, _seen + (path,))
    return _deep_merge(base, data)


def _format_error(path: Path, err: ValidationError) -> str:
    lines = [f"{path}: invalid task file"]
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        got_s = f" (got {got!r})" if e["type"] != "missing" and not isinstance(got, dict) else ""
        lines.append(f"  field '{loc}': {e['msg']}{got_s}")
    return "\n".join(lines)


class _Fill(string.Formatter):
    def __init__(self, path: Path, where: str, values: dict[str, Any]):
        self.path, self.where, self.values = path, where, values

    def get_value(self, key, args, kwargs):  # noqa: D401 - string.Formatter API
        if key not in self.values:
            known = ", ".join(sorted(self.values))
            raise TaskError(f"{self.path}: field '{self.where}': unknown placeholder {{{key}}}; known: {known}")
        return self.values[key]


def _fill(path: Path, where: str, text: str, values: dict[str, Any]) -> str:
    try:
        return _Fill(path, where, values).format(text)
    except (ValueError, IndexError) as e:
        raise TaskError(f"{path}: field '{where}': bad placeholder in {text!r}: {e}") from None


def _number(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    return text


def load_task(spec_path: Path, task_id: str, size: str | None = None, data_dir: Path | None = None) -> Task:
    spec_path = spec_path.resolve()
    raw = read_spec(spec_path)
    try:
        spec = TaskSpec.model_validate(raw)
    except ValidationError as e:
        raise TaskError(_format_error(spec_path, e)) from None
    root = spec_path.parent

    size = size or spec.default_size
    timeout = spec.timeout_s
    values: dict[str, Any] = dict(spec.vars)
    if spec.sizes:
        if size is None:
            raise TaskError(f"{spec_path}: task {task_id} has sizes {sorted(spec.sizes)} but no 'default_size'; "
                            "set default_size in the task file or choose one with task.size=...")
        if size not in spec.sizes:
            raise TaskError(
                f"{spec_path}: task {task_id} has no size {size!r}; choose one of {sorted(spec.sizes)} "
                f"(override with task.size=...)"
            )
        values.update(spec.sizes[size].vars)
        if spec.sizes[size].timeout_s:
            timeout = spec.sizes[size].timeout_s
    else:
        size = None  # a task without sizes has exactly one: a requested size does not apply to it
    values.update(
        python=sys.executable,
        size=size or "",
        data_dir=str(data_dir) if data_dir else "",
        record=spec.record if spec.record is not None else "",
        next_record=(spec.record + 1) if spec.record is not None else "",
    )

    def rel(p: str | None, where: str, must_exist: bool = True) -> Path | None:
        if p is None:
            return None
        p = _fill(spec_path, where, p, values)
        q = (root / p).resolve()
        if must_exist and not q.exists():
            raise TaskError(f"{spec_path}: field '{where}': {q} does not exist")
        return q

    template = rel(spec.template, "template")
    assert template is not None
    if not template.is_dir():
        raise TaskError(f"{spec_path}: field 'template': {template} is not a folder")
    command = [_fill(spec_path, f"command[{i}]", c, values) for i, c in enumerate(spec.command)]
    env = {k: _fill(spec_path, f"env.{k}", v, values) for k, v in spec.env.items()}
    conditions = []
    for i, text in enumerate(spec.valid_if):
        filled = _fill(spec_path, f"valid_if[{i}]", text, values)
        try:
            conditions.append(Condition.parse(filled))
        except ValueError as e:
            raise TaskError(f"{spec_path}: field 'valid_if[{i}]': {e}") from None
    parsers = [Parser(compile_pattern(p.pattern), p.match, p.source) for p in spec.parsers]
    produced = {name for p in parsers for name in p.pattern.groupindex} | set(BUILTIN_METRICS)
    if spec.metric.name not in produced:
        raise TaskError(
            f"{spec_path}: field 'metric.name': {spec.metric.name!r} is produced by no parser; "
            f"parsers give {sorted(produced)}"
        )
    for c in conditions:
        for name in c.names:
            if name not in produced:
                raise TaskError(f"{spec_path}: field 'valid_if': {name!r} is produced by no parser; "
                                f"parsers give {sorted(produced)}")
    return Task(
        id=task_id,
        name=spec.name,
        root=root,
        spec_path=spec_path,
        description=spec.description.strip(),
        rules=spec.rules.strip(),
        template_dir=template,
        template_include=list(spec.template_include),
        command=command,
        timeout_s=float(timeout),
        env=env,
        metric=spec.metric,
        parsers=parsers,
        conditions=conditions,
        protected=[_fill(spec_path, f"protected[{i}]", p, values) for i, p in enumerate(spec.protected)],
        suspicious=[(s.pattern, s.message) for s in spec.suspicious],
        hidden=[_fill(spec_path, f"hidden[{i}]", h, values) for i, h in enumerate(spec.hidden)],
        reeval={**spec.reeval.model_dump(), "evaluator_args": {
            k: _number(_fill(spec_path, f"reeval.evaluator_args.{k}", v, values)) if isinstance(v, str) else v
            for k, v in spec.reeval.evaluator_args.items()}},
        editable=list(spec.editable),
        hints_dir=rel(spec.hints, "hints"),
        reference_dir=rel(spec.reference, "reference"),
        data=spec.data,
        size=size,
        vars=values,
        record=spec.record,
        suite=spec.suite,
        nproc_per_node=spec.nproc_per_node,
        nnodes=spec.nnodes,
        requirements=spec.requirements.model_dump(exclude_defaults=True),
    )
