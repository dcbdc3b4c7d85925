"""A strict validator for the requests the launch scripts send through the Stubber harness.

botocore's ParamValidator (botocore/validate.py) checks types, unknown keys, required members,
tagged unions and the `min` bound of strings, lists and numbers, nothing else: not `max`, not
`pattern`, not `enum`, and neither bound of a map. SageMaker's service checks all of them, and
more rules that no shape can carry. This module checks both:

1. `model_violations`: every constraint of the service model that botocore skips.
2. `RULES`: SageMaker's documented cross-field rules and quotas, each with its source.

`violations()` runs both; tests/sagemaker_stub.py calls it on every captured request.

Patterns: the model's patterns are Java regexes (SageMaker validates with java.util.regex and
the whole value must match: `^[a-zA-Z0-9](-*[a-zA-Z0-9])*` rejects `my_job`, see
https://github.com/aws/sagemaker-python-sdk/issues/384). `python_pattern` translates what
Python's `re` reads differently; a pattern it cannot translate is counted in
`uncompilable_patterns` (and in `UNCHECKED` when a value meets it), never passed silently.
"""
from __future__ import annotations

import collections
import dataclasses
import decimal
import functools
import math
import re
import unicodedata
import warnings
from typing import Callable, Iterator

# --- 1. Service-model constraints botocore skips ------------------------------------------------

NUMERIC = ("integer", "long", "float", "double")
# Patterns a value met but that could not be compiled: (shape name, pattern) -> times.
UNCHECKED: collections.Counter = collections.Counter()


def model_violations(operation_name: str, params: dict, service_model) -> list[str]:
    """max / pattern / enum / map-size violations of `params` against the operation's input shape."""
    shape = service_model.operation_model(operation_name).input_shape
    out: list[str] = []
    if shape is not None:
        _walk(params, shape, "", out)
    return out


def _walk(value, shape, path: str, out: list[str]) -> None:
    # Values of the wrong type are botocore's to report; skip them here.
    kind = shape.type_name
    if kind == "structure":
        if isinstance(value, dict) and not getattr(shape, "is_document_type", False):
            for key, member in value.items():
                if key in shape.members:
                    _walk(member, shape.members[key], f"{path}.{key}" if path else key, out)
    elif kind == "list":
        if isinstance(value, (list, tuple)):
            _check_max(len(value), shape, path, "max items", out)
            for i, item in enumerate(value):
                _walk(item, shape.member, f"{path}[{i}]", out)
    elif kind == "map":
        if isinstance(value, dict):
            _check_min(len(value), shape, path, "min entries", out)  # botocore checks no bound of a map
            _check_max(len(value), shape, path, "max entries", out)
            for key, item in value.items():
                _walk(key, shape.key, f"{path} (key {key!r})", out)
                _walk(item, shape.value, f"{path}.{key}", out)
    elif kind == "string":
        if isinstance(value, str):
            _check_string(value, shape, path, out)
    elif kind in NUMERIC:
        if isinstance(value, (int, float, decimal.Decimal)) and not isinstance(value, bool):
            _check_max(value, shape, path, "max value", out)
    elif kind == "blob":
        if isinstance(value, (bytes, bytearray, str)):  # a file object's length is unknown here
            _check_max(len(value), shape, path, "max length", out)


def _check_max(measure, shape, path: str, rule: str, out: list[str]) -> None:
    top = shape.metadata.get("max")
    if top is not None and measure > top:
        out.append(f"{path}: {rule} {top} exceeded ({measure})")


def _check_min(measure, shape, path: str, rule: str, out: list[str]) -> None:
    low = shape.metadata.get("min")
    if low is not None and measure < low:
        out.append(f"{path}: {rule} {low} not reached ({measure})")


def _check_string(value: str, shape, path: str, out: list[str]) -> None:
    _check_max(len(value), shape, path, "max length", out)
    enum = shape.metadata.get("enum")
    if enum and value not in enum:
        out.append(f"{path}: enum: {_short(value)} is not one of {enum}")
    java = shape.metadata.get("pattern")
    if java is not None:
        compiled = compile_pattern(java)
        if compiled is None:
            UNCHECKED[(shape.name, java)] += 1
        elif not compiled.fullmatch(value):
            out.append(f"{path}: pattern: {_short(value)} does not match {java}")


def _short(value: str, limit: int = 80) -> str:
    return repr(value if len(value) <= limit else value[:limit] + "...")


# --- Java regex -> Python re --------------------------------------------------------------------

class Untranslatable(ValueError):
    """A Java regex construct with no faithful Python `re` translation."""


# Java's `.` stops at every line terminator, Python's at \n only.
JAVA_DOT = r"[^\n\r\x85\u2028\u2029]"
# java.util.regex POSIX classes are US-ASCII only.
POSIX = {"Lower": "a-z", "Upper": "A-Z", "ASCII": r"\x00-\x7f", "Alpha": "a-zA-Z", "Digit": "0-9",
         "Alnum": "a-zA-Z0-9", "Punct": r"\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e", "Graph": r"\x21-\x7e",
         "Print": r"\x20-\x7e", "Blank": r" \t", "Cntrl": r"\x00-\x1f\x7f", "XDigit": "0-9a-fA-F",
         "Space": r" \t\n\x0b\f\r"}
JAVA_CLASSES = {"h": r" \t\xa0\u1680\u180e\u2000-\u200a\u202f\u205f\u3000",
                "v": r"\n\x0b\f\r\x85\u2028\u2029"}
QUANTIFIER = re.compile(r"(\*|\+|\?|\{(\d+)(?:,\d*)?\})[?+]?")
# Neither has a Python equivalent: \G (end of previous match), \X (grapheme cluster), \b{g}.
UNSUPPORTED_ESCAPES = set("GX")


@functools.cache
def compile_pattern(java: str) -> re.Pattern | None:
    """The compiled Python translation of a model pattern, or None if it cannot be compiled."""
    return None if pattern_problem(java) else _compile(java)


@functools.cache
def pattern_problem(java: str) -> str | None:
    """Why `java` cannot be checked in Python (None when it can)."""
    try:
        _compile(java)
    except (Untranslatable, re.error, FutureWarning) as e:
        return f"{type(e).__name__}: {e}"
    return None


def _compile(java: str) -> re.Pattern:
    # ASCII: Java's \w \d \s \b are ASCII-only unless UNICODE_CHARACTER_CLASS is set.
    # FutureWarning from re means Python may one day read the class differently: treat as failure.
    with warnings.catch_warnings():
        warnings.simplefilter("error", FutureWarning)
        return re.compile(python_pattern(java), re.ASCII)


def python_pattern(java: str) -> str:
    """Translate a java.util.regex pattern into Python `re` syntax with the same meaning."""
    out: list[str] = []
    i, n = 0, len(java)
    while i < n:
        c = java[i]
        if c == "\\":
            text, i = _escape(java, i, in_class=False)
            out.append(text)
        elif c == "[":
            text, i = _char_class(java, i)
            out.append(text)
        elif c == ".":
            out.append(JAVA_DOT)
            i += 1
        elif c in "^$":
            text, i = _anchor(java, i)
            out.append(text)
        elif java.startswith("(?<", i) and i + 3 < n and java[i + 3] not in "=!":
            out.append("(?P<")  # Java's named group (?<name>...)
            i += 3
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _anchor(java: str, i: int) -> tuple[str, int]:
    # Java lets a quantifier follow ^ or $ (the model has `(...)${1,256}`); Python does not.
    # Repeating a zero-width assertion at least once is the assertion; zero times is nothing.
    found = QUANTIFIER.match(java, i + 1)
    if not found:
        return java[i], i + 1
    quantifier = found.group(1)
    least = int(found.group(2)) if found.group(2) else (1 if quantifier == "+" else 0)
    return (java[i] if least >= 1 else ""), found.end()


def _char_class(java: str, i: int) -> tuple[str, int]:
    out = ["["]
    i += 1
    if java.startswith("^", i):
        out.append("^")
        i += 1
    first = True
    while i < len(java):
        c = java[i]
        if c == "]" and not first:
            out.append("]")
            return "".join(out), i + 1
        if c == "[":
            raise Untranslatable(f"nested character class (Java union) at {i}")
        if java.startswith("&&", i):
            raise Untranslatable(f"character class intersection && at {i}")
        if c == "\\":
            text, i = _escape(java, i, in_class=True)
            out.append(text)
        else:
            out.append(c)
            i += 1
        first = False
    raise Untranslatable("unterminated character class")


def _escape(java: str, i: int, in_class: bool) -> tuple[str, int]:
    """One escape starting at java[i] == '\\': its Python text and the index after it."""
    if i + 1 >= len(java):
        raise Untranslatable("trailing backslash")
    c = java[i + 1]
    if c in "pP":
        return _property(java, i, in_class)
    if c in "uxc0e":
        point, end = _code_point(java, i)
        if point is not None:
            return _cp(point), end
    if c == "Q":  # \Q...\E quotes everything between
        end = java.find("\\E", i + 2)
        literal = java[i + 2:] if end < 0 else java[i + 2:end]
        return re.escape(literal), len(java) if end < 0 else end + 2
    if c in "hHvV":
        body = JAVA_CLASSES[c.lower()]
        return _class_text(body, negated=c.isupper(), in_class=in_class), i + 2
    if not in_class:
        if c == "z":
            return r"\Z", i + 2
        if c == "Z":
            return r"(?=[\n\r\x85\u2028\u2029]?\Z)", i + 2
        if c == "R":
            return r"(?:\r\n|[\n\x0b\f\r\x85\u2028\u2029])", i + 2
        if c == "k" and java.startswith("<", i + 2):
            end = java.index(">", i)
            return f"(?P={java[i + 3:end]})", end + 1
    if c in UNSUPPORTED_ESCAPES:
        raise Untranslatable(f"\\{c} at {i}")
    return java[i:i + 2], i + 2  # \d \s \w \b \. \/ \1 ...: the same in Python (unknown letters fail there)


def _code_point(java: str, i: int) -> tuple[int | None, int]:
    c = java[i + 1]
    if c == "u":
        high = int(java[i + 2:i + 6], 16)
        # A \uD8xx\uDCxx surrogate pair is one supplementary code point in Java.
        if 0xD800 <= high <= 0xDBFF and java.startswith("\\u", i + 6):
            low = int(java[i + 8:i + 12], 16)
            if 0xDC00 <= low <= 0xDFFF:
                return 0x10000 + ((high - 0xD800) << 10) + (low - 0xDC00), i + 12
        return high, i + 6
    if c == "x" and java.startswith("{", i + 2):
        end = java.index("}", i)
        return int(java[i + 3:end], 16), end + 1
    if c == "0":  # Java's \0ooo is octal; Python's \0 is NUL followed by digits
        digits = re.match(r"[0-7]{1,3}", java[i + 2:])
        if not digits:
            raise Untranslatable(f"\\0 without octal digits at {i}")
        return int(digits.group(), 8), i + 2 + len(digits.group())
    if c == "c":
        return ord(java[i + 2]) ^ 64, i + 3
    if c == "e":
        return 0x1B, i + 2
    return None, i  # \xHH: the same in Python


def _property(java: str, i: int, in_class: bool) -> tuple[str, int]:
    negated = java[i + 1] == "P"
    if java.startswith("{", i + 2):
        end = java.index("}", i)
        name, after = java[i + 3:end], end + 1
    else:
        name, after = java[i + 2], i + 3
    return _class_text(_property_body(name), negated, in_class), after


def _class_text(body: str, negated: bool, in_class: bool) -> str:
    if in_class:
        if negated:
            raise Untranslatable("negated class escape inside a character class")
        return body
    return f"[{'^' if negated else ''}{body}]"


def _property_body(name: str) -> str:
    if name in POSIX:
        return POSIX[name]
    for prefix in ("Is", "gc=", "general_category="):
        if name.startswith(prefix) and _is_category(name[len(prefix):]):
            name = name[len(prefix):]
    if not _is_category(name):
        raise Untranslatable(f"\\p{{{name}}} (scripts, blocks and java* properties are not translated)")
    return _category_ranges(name)


def _is_category(name: str) -> bool:
    return len(name) in (1, 2) and name[0] in "LMNPSZC" and (len(name) == 1 or name.isalpha())


@functools.cache
def _category_ranges(category: str) -> str:
    """A class body of every code point whose Unicode general category starts with `category`
    (Python's Unicode database, which may be a version apart from the service's Java)."""
    merged: list[list[int]] = []
    for start, end, cat in _category_runs():
        if cat.startswith(category):
            if merged and merged[-1][1] == start - 1:
                merged[-1][1] = end
            else:
                merged.append([start, end])
    return "".join(_cp(s) if s == e else f"{_cp(s)}-{_cp(e)}" for s, e in merged)


@functools.cache
def _category_runs() -> list[tuple[int, int, str]]:
    runs, start, current = [], 0, unicodedata.category("\0")
    for point in range(1, 0x110000):
        cat = unicodedata.category(chr(point))
        if cat != current:
            runs.append((start, point - 1, current))
            start, current = point, cat
    runs.append((start, 0x10FFFF, current))
    return runs


def _cp(point: int) -> str:
    return f"\\U{point:08x}"


def uncompilable_patterns(service_model) -> dict[str, str]:
    """Every pattern of the service model that cannot be checked here, with the reason."""
    found = {}
    for name in service_model.shape_names:
        java = service_model.shape_for(name).metadata.get("pattern")
        if java is not None and pattern_problem(java):
            found[java] = pattern_problem(java)
    return found


# --- 2. Cross-field rules the model cannot express ---------------------------------------------

API = "https://docs.aws.amazon.com/sagemaker/latest/APIReference/"
DG = "https://docs.aws.amazon.com/sagemaker/latest/dg/"
TUNING = ("CreateHyperParameterTuningJob",)
TRAINING = ("CreateTrainingJob", "CreateHyperParameterTuningJob")


@dataclasses.dataclass(frozen=True)
class Rule:
    id: str
    operations: tuple[str, ...]
    text: str
    source: str
    confirmed: str  # how the wording was checked offline, or "not confirmed offline"
    check: Callable[..., Iterator[str]]  # yields "PATH: what is wrong"
    uses_history: bool = False  # check(params, history): the requests sent before, as (operation, params)


def _get(params: dict, dotted: str):
    for key in dotted.split("."):
        if not isinstance(params, dict) or key not in params:
            return None
        params = params[key]
    return params


def _definitions(params: dict) -> Iterator[tuple[str, dict]]:
    """(path, training job definition) of a tuning request, or the training request itself."""
    if "TrainingJobDefinition" in params:
        yield "TrainingJobDefinition", params["TrainingJobDefinition"]
    for i, definition in enumerate(params.get("TrainingJobDefinitions") or []):
        yield f"TrainingJobDefinitions[{i}]", definition
    if "TrainingJobName" in params:  # CreateTrainingJob
        yield "", params


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _ranges(params: dict) -> Iterator[tuple[str, dict]]:
    """(path, ParameterRanges) of the tuning config and of each training job definition."""
    found = _get(params, "HyperParameterTuningJobConfig.ParameterRanges")
    if isinstance(found, dict):
        yield "HyperParameterTuningJobConfig.ParameterRanges", found
    for path, definition in _definitions(params):
        if isinstance(definition.get("HyperParameterRanges"), dict):
            yield _join(path, "HyperParameterRanges"), definition["HyperParameterRanges"]


def _range_items(ranges: dict) -> Iterator[tuple[str, str, dict]]:
    for kind in ("IntegerParameterRanges", "ContinuousParameterRanges", "CategoricalParameterRanges"):
        for i, item in enumerate(ranges.get(kind) or []):
            yield kind, f"{kind}[{i}]", item


def _grid_points(ranges: dict) -> int:
    return math.prod(len(r.get("Values") or []) for r in ranges.get("CategoricalParameterRanges") or [])


def _strategy(params: dict):
    return _get(params, "HyperParameterTuningJobConfig.Strategy")


def _number(text):
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


# Each check is a generator over the request; paths are the request's own.

def _names(limit: int, key: str):
    pattern = re.compile(r"[a-zA-Z0-9](-*[a-zA-Z0-9])*")

    def check(params):
        value = params.get(key)
        if isinstance(value, str) and (len(value) > limit or not pattern.fullmatch(value)):
            yield f"{key}: {value!r} ({len(value)} characters) breaks ^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,{limit - 1}}}"
    return check


def _check_spot_wait(params):
    for path, definition in _definitions(params):
        stop = definition.get("StoppingCondition") or {}
        wait, run = stop.get("MaxWaitTimeInSeconds"), stop.get("MaxRuntimeInSeconds")
        if definition.get("EnableManagedSpotTraining"):
            if wait is None:
                yield f"{_join(path, 'StoppingCondition')}: managed spot training without MaxWaitTimeInSeconds"
            elif run is not None and wait <= run:
                yield (f"{_join(path, 'StoppingCondition')}: MaxWaitTimeInSeconds {wait} is not larger than "
                       f"MaxRuntimeInSeconds {run}")


def _check_wait_needs_spot(params):
    for path, definition in _definitions(params):
        wait = _get(definition, "StoppingCondition.MaxWaitTimeInSeconds")
        if wait is not None and not definition.get("EnableManagedSpotTraining"):
            yield (f"{_join(path, 'StoppingCondition.MaxWaitTimeInSeconds')}: {wait} given but "
                   f"EnableManagedSpotTraining is not true")


def _check_max_runtime(params):
    for path, definition in _definitions(params):
        run = _get(definition, "StoppingCondition.MaxRuntimeInSeconds")
        if isinstance(run, int) and run > 28 * 24 * 3600:
            yield f"{_join(path, 'StoppingCondition.MaxRuntimeInSeconds')}: {run} > 28 days (2419200)"


def _check_parallel_le_total(params):
    limits = _get(params, "HyperParameterTuningJobConfig.ResourceLimits") or {}
    total, parallel = limits.get("MaxNumberOfTrainingJobs"), limits.get("MaxParallelTrainingJobs")
    if total is not None and parallel is not None and parallel > total:
        yield (f"HyperParameterTuningJobConfig.ResourceLimits: MaxParallelTrainingJobs {parallel} > "
               f"MaxNumberOfTrainingJobs {total}")


def _check_quota(key: str, top: int):
    def check(params):
        value = _get(params, f"HyperParameterTuningJobConfig.ResourceLimits.{key}")
        if isinstance(value, int) and value > top:
            yield f"HyperParameterTuningJobConfig.ResourceLimits.{key}: {value} > {top}"
    return check


def _check_grid_categorical(params):
    if _strategy(params) != "Grid":
        return
    for path, ranges in _ranges(params):
        for kind, where, item in _range_items(ranges):
            if kind != "CategoricalParameterRanges":
                yield f"{path}.{where}: {item.get('Name')!r} is a {kind[:-6]} range; Grid takes categorical ranges only"


def _check_grid_jobs(params):
    if _strategy(params) != "Grid":
        return
    total = _get(params, "HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs")
    for path, ranges in _ranges(params):
        points = _grid_points(ranges)
        if total is not None and total != points:
            yield (f"HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs: {total} != {points} "
                   f"grid points of {path}")
        if points > 750:
            yield f"{path}: {points} grid points > 750 training jobs"


def _check_enough_combinations(params):
    # Only discrete spaces have a finite number of combinations.
    total = _get(params, "HyperParameterTuningJobConfig.ResourceLimits.MaxNumberOfTrainingJobs")
    if total is None or _strategy(params) == "Grid":
        return
    for path, ranges in _ranges(params):
        if ranges.get("ContinuousParameterRanges") or ranges.get("AutoParameters"):
            continue
        combos = _grid_points(ranges)
        for item in ranges.get("IntegerParameterRanges") or []:
            low, high = _number(item.get("MinValue")), _number(item.get("MaxValue"))
            if low is None or high is None:
                return
            combos *= max(0, int(high) - int(low) + 1)
        if combos < total:
            yield f"{path}: {combos} hyperparameter combinations < MaxNumberOfTrainingJobs {total}"


def _check_hyperband_early_stopping(params):
    config = params.get("HyperParameterTuningJobConfig") or {}
    if config.get("Strategy") == "Hyperband" and config.get("TrainingJobEarlyStoppingType", "Off") != "Off":
        yield (f"HyperParameterTuningJobConfig.TrainingJobEarlyStoppingType: "
               f"{config['TrainingJobEarlyStoppingType']!r} with Hyperband (must be Off)")


HYPERBAND_EPOCH_KEYS = ("epochs", "numepochs", "n-epochs", "n_epochs", "num_epochs")


def _check_hyperband_max_resource(params):
    if _strategy(params) != "Hyperband":
        return
    config = _get(params, "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig") or {}
    top = config.get("MaxResource")
    if isinstance(top, int) and top > 20000:
        yield f"HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig.MaxResource: {top} > 20000"
    if top is not None:
        return
    for path, definition in _definitions(params):
        static = definition.get("StaticHyperParameters") or {}
        if not any(k in static for k in HYPERBAND_EPOCH_KEYS):
            tuned = [i.get("Name") for _, ranges in _ranges(params) for _, _, i in _range_items(ranges)
                     if i.get("Name") in HYPERBAND_EPOCH_KEYS]
            yield (f"{_join(path, 'StaticHyperParameters')}: no MaxResource and none of {HYPERBAND_EPOCH_KEYS} "
                   f"is static" + (f" ({tuned} are tuned ranges, which do not count)" if tuned else ""))


def _check_strategy_config_hyperband_only(params):
    config = _get(params, "HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig")
    if config is not None and _strategy(params) != "Hyperband":
        yield f"HyperParameterTuningJobConfig.StrategyConfig.HyperbandStrategyConfig: given with {_strategy(params)!r}"


def _check_range_count(params):
    for path, ranges in _ranges(params):
        count = sum(1 for _ in _range_items(ranges))
        if count > 30:
            yield f"{path}: {count} ranges in all > 30"


def _check_scaling(params):
    for path, ranges in _ranges(params):
        for kind, where, item in _range_items(ranges):
            scaling = item.get("ScalingType")
            low, high = _number(item.get("MinValue")), _number(item.get("MaxValue"))
            if scaling == "Logarithmic" and low is not None and low <= 0:
                yield f"{path}.{where}.MinValue: {item['MinValue']} with Logarithmic scaling (must be > 0)"
            if scaling == "ReverseLogarithmic":
                if kind != "ContinuousParameterRanges":
                    yield f"{path}.{where}.ScalingType: ReverseLogarithmic on an integer range"
                elif low is not None and high is not None and not (0 <= low and high < 1):
                    yield f"{path}.{where}: ReverseLogarithmic needs 0 <= MinValue, MaxValue < 1 ({low}, {high})"


def _check_bounds(params):
    for path, ranges in _ranges(params):
        for kind, where, item in _range_items(ranges):
            if kind == "CategoricalParameterRanges":
                continue
            low, high = _number(item.get("MinValue")), _number(item.get("MaxValue"))
            if low is None or high is None:
                yield (f"{path}.{where}: MinValue {item.get('MinValue')!r} / MaxValue {item.get('MaxValue')!r} "
                       f"not numbers")
            elif low > high:
                yield f"{path}.{where}: MinValue {low} > MaxValue {high}"
            elif kind == "IntegerParameterRanges" and not (low.is_integer() and high.is_integer()):
                yield f"{path}.{where}: integer range bounds {item['MinValue']!r}, {item['MaxValue']!r}"


def _tuned_names(params) -> list[str]:
    return [i.get("Name") for _, ranges in _ranges(params) for _, _, i in _range_items(ranges)]


def _check_static_vs_tuned(params):
    tuned = _tuned_names(params)
    duplicates = sorted({n for n in tuned if tuned.count(n) > 1})
    if duplicates:
        yield f"ParameterRanges: {duplicates} tuned more than once"
    for path, definition in _definitions(params):
        both = sorted(set(definition.get("StaticHyperParameters") or {}) & set(tuned))
        if both:
            yield f"{_join(path, 'StaticHyperParameters')}: {both} are also tuned ranges"


def _check_hyperparameter_total(params):
    for path, definition in _definitions(params):
        static = definition.get("StaticHyperParameters") or {}
        # + 1: SageMaker adds _tuning_objective_metric, which counts against the 100.
        total = len(static) + len(_tuned_names(params)) + 1
        if total > 100:
            yield f"{path}: {len(static)} static + {total - len(static) - 1} tuned + 1 hyperparameters > 100"


def _metric_definitions(definition: dict) -> list:
    return _get(definition, "AlgorithmSpecification.MetricDefinitions") or []


def _check_objective_defined(params):
    objective = _get(params, "HyperParameterTuningJobConfig.HyperParameterTuningJobObjective.MetricName")
    for path, definition in _definitions(params):
        spec = definition.get("AlgorithmSpecification") or {}
        name = _get(definition, "TuningObjective.MetricName") or objective
        if "TrainingImage" in spec and name is not None:  # built-in algorithms define their own
            defined = [d.get("Name") for d in _metric_definitions(definition)]
            if name not in defined:
                yield (f"{_join(path, 'AlgorithmSpecification.MetricDefinitions')}: objective {name!r} "
                       f"not among {defined}")


def _check_tuning_metric_count(params):
    for path, definition in _definitions(params):
        count = len(_metric_definitions(definition))
        if count > 20:
            yield f"{_join(path, 'AlgorithmSpecification.MetricDefinitions')}: {count} > 20 for a tuning job"


def _containers(params) -> Iterator[tuple[str, dict]]:
    if isinstance(params.get("PrimaryContainer"), dict):
        yield "PrimaryContainer", params["PrimaryContainer"]
    for i, container in enumerate(params.get("Containers") or []):
        yield f"Containers[{i}]", container


def _check_transform_payload(params):
    payload, concurrent = params.get("MaxPayloadInMB"), params.get("MaxConcurrentTransforms")
    if isinstance(payload, int) and payload > 100:
        yield f"MaxPayloadInMB: {payload} > 100"
    elif isinstance(payload, int) and isinstance(concurrent, int) and concurrent * payload > 100:
        yield f"MaxConcurrentTransforms x MaxPayloadInMB: {concurrent} x {payload} = {concurrent * payload} > 100"


GPU_FAMILIES = re.compile(r"ml\.(g\d|p\d)")  # ml.g4dn, ml.g5, ml.g6, ml.g6e, ml.p3, ml.p4d, ml.p5, ...


def _check_multi_model_cpu(params, history):
    multi = {p.get("ModelName") for op, p in history if op == "CreateModel"
             and any(c.get("Mode") == "MultiModel" for _, c in _containers(p))}
    for i, variant in enumerate(params.get("ProductionVariants") or []):
        kind = variant.get("InstanceType") or ""
        if variant.get("ModelName") in multi and GPU_FAMILIES.match(kind):
            yield (f"ProductionVariants[{i}].InstanceType: {kind} is a GPU instance type for the multi-model "
                   f"model {variant['ModelName']!r}")


def _check_model_data(params):
    for path, container in _containers(params):
        url = container.get("ModelDataUrl")
        if container.get("Mode") == "MultiModel":
            if "ModelDataSource" in container:
                yield f"{path}.ModelDataSource: not usable with a multi-model endpoint"
            if not url:
                yield f"{path}.ModelDataUrl: a multi-model container needs the S3 prefix of its models"
            elif url.endswith(".tar.gz"):
                yield f"{path}.ModelDataUrl: {url!r} is one archive; MultiModel takes the prefix of the archives"
        elif url and not url.endswith(".tar.gz"):
            yield f"{path}.ModelDataUrl: {url!r} is not a .tar.gz archive"


def _has_local_storage(instance_type: str) -> bool:
    """The SageMaker SDK's rule (sagemaker/utils.py volume_size_supported): a family with a "d" in
    it (c5d, p4d, g4dn, ...), and g5, g6, p5 and trn1, have local NVMe storage."""
    family = (instance_type or "").removeprefix("ml.").split(".")[0]
    return "d" in family or family.startswith(("g5", "g6", "p5", "trn1"))


def _check_volume_key_local_storage(params):
    for path, definition in _definitions(params):
        for key in ("ResourceConfig", "HyperParameterTuningResourceConfig"):
            config = definition.get(key) or {}
            if config.get("VolumeKmsKeyId") and _has_local_storage(config.get("InstanceType")):
                yield (f"{_join(path, key)}.VolumeKmsKeyId: {config['InstanceType']} has local instance storage, "
                       "which takes no KMS key")
    if params.get("KmsKeyId"):  # CreateEndpointConfig
        for i, variant in enumerate(params.get("ProductionVariants") or []):
            if _has_local_storage(variant.get("InstanceType")):
                yield (f"KmsKeyId: ProductionVariants[{i}].InstanceType {variant['InstanceType']} has local instance "
                       "storage, which takes no KMS key")


BUNDLED_BACKBONES = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", *(
    f"tf_efficientnet_lite{n}{tag}" for n in (0, 1, 2) for tag in ("", ".in1k"))}  # the image's own weights


def _check_isolation_has_weights(params):
    for path, definition in _definitions(params):
        if not definition.get("EnableNetworkIsolation"):
            continue
        hp = definition.get("HyperParameters") or definition.get("StaticHyperParameters") or {}
        backbone = str(hp.get("backbone", "resnet50")).strip('"')
        channels = [c.get("ChannelName") for c in definition.get("InputDataConfig") or []]
        if str(hp.get("weights", "imagenet")).strip('"') != "none" and backbone not in BUNDLED_BACKBONES \
                and "pretrained" not in channels:
            yield (f"{_join(path, 'EnableNetworkIsolation')}: the container cannot download {backbone}'s weights and "
                   f"the job has no 'pretrained' channel (channels: {', '.join(map(str, channels))})")


RULES: tuple[Rule, ...] = (
    *(Rule(f"name-{op}", (op,), f"{key}: 1-{limit} characters, pattern ^[a-zA-Z0-9](-*[a-zA-Z0-9]){{0,{limit - 1}}} "
           "(no underscores, no leading or trailing hyphen)", f"{API}API_{op}.html",
           "service model (the API reference's source) and the service's ValidationException quoted in "
           "https://github.com/aws/sagemaker-python-sdk/issues/384 and /issues/2652",
           _names(limit, key))
      for op, key, limit in (("CreateTrainingJob", "TrainingJobName", 63),
                             ("CreateHyperParameterTuningJob", "HyperParameterTuningJobName", 32),
                             ("CreateModel", "ModelName", 63), ("CreateEndpointConfig", "EndpointConfigName", 63),
                             ("CreateEndpoint", "EndpointName", 63), ("CreateTransformJob", "TransformJobName", 63))),
    Rule("spot-max-wait", TRAINING,
         "With EnableManagedSpotTraining, StoppingCondition.MaxWaitTimeInSeconds is given and is larger than "
         "MaxRuntimeInSeconds (the managed spot training page; the API reference says 'equal to or greater', "
         "the stricter reading is kept).", f"{DG}model-managed-spot-training.html",
         f"search: {API}API_StoppingCondition.html ('must be equal to or greater than MaxRuntimeInSeconds') "
         f"and {DG}model-managed-spot-training.html ('Set EnableManagedSpotTraining to True and specify the "
         "MaxWaitTimeInSeconds. MaxWaitTimeInSeconds must be larger than MaxRuntimeInSeconds')", _check_spot_wait),
    Rule("max-wait-needs-spot", TRAINING,
         "MaxWaitTimeInSeconds is only supported when EnableManagedSpotTraining is true.",
         f"{API}API_CreateTrainingJob.html",
         "not in the API reference; the service's ValidationException 'Invalid MaxWaitTimeInSeconds. It is only "
         "supported when EnableManagedSpotTraining is set to true' is quoted in "
         "https://github.com/Kenza-AI/sagify/issues/111 and https://github.com/aws/sagemaker-python-sdk/issues/4140 "
         "(CreateTrainingJob) and https://github.com/aws/amazon-sagemaker-examples/issues/869 (tuning)",
         _check_wait_needs_spot),
    Rule("max-runtime-28-days", TRAINING, "StoppingCondition.MaxRuntimeInSeconds is at most 28 days.",
         f"{API}API_StoppingCondition.html", "service model documentation ('The maximum value is 28 days')",
         _check_max_runtime),
    Rule("tuning-parallel-le-total", TUNING, "ResourceLimits.MaxParallelTrainingJobs <= MaxNumberOfTrainingJobs.",
         f"{API}API_ResourceLimits.html", "not confirmed offline", _check_parallel_le_total),
    Rule("quota-training-jobs-750", TUNING,
         "At most 750 training jobs per tuning job (Bayesian, Hyperband, Grid; Random can be raised to 10000 "
         "by a quota increase; encoded at the default 750).", f"{DG}automatic-model-tuning-limits.html",
         f"search: {DG}automatic-model-tuning-limits.html", _check_quota("MaxNumberOfTrainingJobs", 750)),
    Rule("quota-parallel-jobs-10", TUNING,
         "At most 10 parallel training jobs per tuning job: the default quota (an account can have it raised to "
         "100; the scripts then need --max-parallel-jobs over 10 knowingly).",
         f"{DG}automatic-model-tuning-limits.html", f"search: {DG}automatic-model-tuning-limits.html",
         _check_quota("MaxParallelTrainingJobs", 10)),
    Rule("quota-ranges-30", TUNING,
         "At most 30 hyperparameters searched: the sum of integer, continuous and categorical ranges.",
         f"{API}API_ParameterRanges.html",
         f"search: {API}API_ParameterRanges.html (the sum of all ranges can't exceed the maximum) and "
         f"{DG}automatic-model-tuning-limits.html (30)", _check_range_count),
    Rule("grid-categorical-only", TUNING, "The Grid strategy takes categorical ranges only.",
         f"{DG}automatic-model-tuning-how-it-works.html",
         "not confirmed offline (page text not found by search)", _check_grid_categorical),
    Rule("grid-max-jobs", TUNING,
         "With Grid, MaxNumberOfTrainingJobs is unset (inferred) or equal to the number of grid points "
         "(the product of the categorical ranges' value counts), at most 750.",
         f"{DG}automatic-model-tuning-how-it-works.html",
         f"partly: {DG}automatic-model-tuning-limits.html ('[Grid] Number of training jobs ..., either specified "
         "explicitly or inferred from the search space: 750'); the equality is not confirmed offline",
         _check_grid_jobs),
    Rule("tuning-enough-combinations", TUNING,
         "For a space with no continuous range, its number of combinations is at least MaxNumberOfTrainingJobs "
         "(non-Grid strategies).", f"{API}API_ResourceLimits.html",
         "not in the docs; the service's ValidationException 'The total number of hyperparameter combinations for "
         "the provided ranges [3.0] must be equal or greater than the value of MaxNumberOfJobs' is quoted in "
         "https://github.com/aws/amazon-sagemaker-operator-for-k8s/issues/123", _check_enough_combinations),
    Rule("hyperband-early-stopping-off", TUNING, "TrainingJobEarlyStoppingType must be Off to use Hyperband.",
         f"{API}API_HyperParameterTuningJobConfig.html",
         f"search: {API}API_HyperParameterTuningJobConfig.html and the service model", _check_hyperband_early_stopping),
    Rule("hyperband-max-resource", TUNING,
         "With Hyperband and no HyperbandStrategyConfig.MaxResource, SageMaker infers MaxResource from a static "
         "hyperparameter epochs, numepochs, n-epochs, n_epochs or num_epochs; if it cannot, the request is a "
         "validation error. MaxResource is at most 20,000.", f"{API}API_HyperbandStrategyConfig.html",
         f"search: {API}API_HyperbandStrategyConfig.html", _check_hyperband_max_resource),
    Rule("hyperband-config-only-with-hyperband", TUNING,
         "StrategyConfig (HyperbandStrategyConfig) is given only with the Hyperband strategy.",
         f"{API}API_HyperParameterTuningJobStrategyConfig.html",
         f"search: {API}API_HyperParameterTuningJobStrategyConfig.html ('only supported for the Hyperband "
         "selection')", _check_strategy_config_hyperband_only),
    Rule("range-scaling", TUNING,
         "Logarithmic scaling needs ranges of values > 0; ReverseLogarithmic is for continuous ranges only, "
         "entirely within 0 <= x < 1.", f"{DG}automatic-model-tuning-define-ranges.html",
         "service model (API_ContinuousParameterRange / API_IntegerParameterRange) and "
         "awsdocs/amazon-sagemaker-developer-guide doc_source/automatic-model-tuning-define-ranges.md",
         _check_scaling),
    Rule("range-bounds", TUNING, "Integer and continuous range bounds are numbers (integers for integer ranges) "
         "and MinValue <= MaxValue.", f"{API}API_IntegerParameterRange.html", "not confirmed offline",
         _check_bounds),
    Rule("static-not-tuned", TUNING, "A hyperparameter is either static or tuned, and tuned in one range only.",
         f"{DG}automatic-model-tuning-define-ranges.html", "not confirmed offline", _check_static_vs_tuned),
    Rule("hyperparameters-100", TUNING,
         "At most 100 hyperparameters in total (static + tunable), counting the _tuning_objective_metric "
         "SageMaker adds.", f"{DG}automatic-model-tuning-define-ranges.html",
         f"search: {DG}automatic-model-tuning-define-ranges.html", _check_hyperparameter_total),
    Rule("objective-is-defined-metric", TUNING,
         "For your own algorithm (a TrainingImage), the tuning objective is one of the job definition's "
         "MetricDefinitions.", f"{DG}automatic-model-tuning-define-metrics-variables.html",
         f"search: {DG}automatic-model-tuning-define-metrics.html ('You choose one of those metrics to be the "
         "objective metric')", _check_objective_defined),
    Rule("tuning-metrics-20", TUNING, "At most 20 metric definitions per tuning job (40 per training job: "
         "the model's MetricDefinitionList max).", f"{DG}automatic-model-tuning-limits.html",
         f"search: {DG}automatic-model-tuning-limits.html and {DG}automatic-model-tuning-define-metrics.html",
         _check_tuning_metric_count),
    Rule("transform-payload-100", ("CreateTransformJob",),
         "MaxPayloadInMB is at most 100, and MaxConcurrentTransforms x MaxPayloadInMB is at most 100.",
         f"{API}API_CreateTransformJob.html",
         f"search: {API}API_CreateTransformJob.html ('The value of MaxPayloadInMB cannot be greater than 100 MB. "
         "If you specify the MaxConcurrentTransforms parameter, the value of (MaxConcurrentTransforms * "
         "MaxPayloadInMB) also cannot exceed 100 MB')", _check_transform_payload),
    Rule("multi-model-cpu-only", ("CreateEndpointConfig",),
         "A multi-model endpoint of a bring-your-own container runs on CPU instance types only (on GPU, "
         "multi-model endpoints are served by the Triton Inference Server containers).",
         f"{DG}multi-model-support.html",
         f"search: {DG}multi-model-support.html ('Multi-model endpoints support all of the CPU instance types'; "
         "'Hosting multiple GPU backed models on multi-model endpoints is supported through the SageMaker AI "
         "Triton Inference server')", _check_multi_model_cpu, uses_history=True),
    Rule("volume-kms-key-local-storage", (*TRAINING, "CreateEndpointConfig"),
         "An instance type with local storage (encrypted by a hardware module) takes no VolumeKmsKeyId (training, "
         "tuning) and an endpoint config whose variants use one takes no KmsKeyId; which types have it: the "
         "SageMaker SDK's sagemaker/utils.py volume_size_supported (a 'd' in the family, g5, g6, p5, trn1).",
         f"{API}API_ResourceConfig.html",
         f"search: {API}API_ResourceConfig.html ('You can't request a VolumeKmsKeyId when using an instance type "
         f"with local storage') and {API}API_CreateEndpointConfig.html ('If you specify a value for KmsKeyId when "
         "using any nitro-based instances with local storage, the call to CreateEndpointConfig fails'); neither "
         "lists the types", _check_volume_key_local_storage),
    Rule("isolated-job-has-its-weights", TRAINING,
         "A job with EnableNetworkIsolation makes no outbound call, even to S3: a backbone whose weights are not "
         "bundled in the image comes in a 'pretrained' channel (SageMaker still downloads the channels).",
         f"{DG}mkt-algo-model-internet-free.html",
         f"search: {DG}mkt-algo-model-internet-free.html ('the containers can't make any outbound network calls, "
         "even to other AWS services such as Amazon S3 ... SageMaker still performs download and upload "
         "operations against Amazon S3 using your SageMaker execution role')", _check_isolation_has_weights),
    Rule("model-data-url", ("CreateModel",),
         "A single-model container's ModelDataUrl is one .tar.gz archive; a MultiModel container's is the S3 "
         "prefix its models are under (the endpoint joins it with TargetModel), and it cannot use "
         "ModelDataSource.", f"{API}API_ContainerDefinition.html",
         f"service model (ContainerDefinition.ModelDataUrl, .ModelDataSource) and search: "
         f"{DG}invoke-multi-model-endpoint.html ('combining the prefix that is provided as part of the "
         "CreateModel API call with the relative path of the model')", _check_model_data),
)


def rule_violations(operation_name: str, params: dict, history: tuple = ()) -> list[str]:
    return [f"[{rule.id}] {found}" for rule in RULES if operation_name in rule.operations
            for found in (rule.check(params, history) if rule.uses_history else rule.check(params))]


def violations(operation_name: str, params: dict, service_model, history: tuple = ()) -> list[str]:
    """Everything SageMaker (or S3, or SageMaker Runtime) would refuse in this request that botocore
    lets through; history: the requests sent before it, as (operation, params)."""
    found = model_violations(operation_name, params, service_model)
    if service_model.service_name == "sagemaker":
        found += rule_violations(operation_name, params, history)
    return found


class InvalidRequest(AssertionError):
    """A request the real service would refuse."""

    def __init__(self, operation_name: str, found: list[str]):
        self.operation_name, self.violations = operation_name, found
        super().__init__(f"{operation_name} would be refused:\n  " + "\n  ".join(found))
