"""The `lossdsl` command: paper-to-code tools over the library (compile, show, grad, check, plot, list, bench).

Every command resolves its target the same way (`resolve`): a `.loss` file, a file or text of LaTeX with
`--latex`, a stdlib loss name, or a one-line formula. Errors a user can make print the message with its
caret excerpt and exit 1; a feature whose module is not installed exits 2 with a message that says so.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from . import api, ir, quickbench
from .errors import LossError, UnknownNameError, did_you_mean
from .latex_in import from_latex
from .latex_out import definition_text


class UnavailableError(Exception):
    """A command needs a part of lossdsl (or an optional dependency) that this installation lacks."""


def progress(message: str) -> None:
    """Progress of long runs goes to stderr, so stdout stays the command's result."""
    print(message, file=sys.stderr, flush=True)


def optional(module: str, what: str):
    try:
        return importlib.import_module(module)
    except ImportError as err:
        raise UnavailableError(f"{what} needs {module}, which is not available here ({err})") from None


# ---- targets
def target_kind(target: str, latex: bool = False) -> str:
    """How `resolve` reads a target: 'latex', 'file' (a .loss file), 'stdlib', 'missing' (names a .loss or
    .tex file that is not there) or 'formula'."""
    path = Path(target)
    is_file = path.suffix in (".loss", ".tex", ".txt") and path.is_file()
    if path.suffix in (".loss", ".tex") and not is_file and "\\" not in target and not path.is_dir():
        return "missing"  # not LaTeX text that happens to end in .tex
    if latex or path.suffix == ".tex" or (not is_file and "\\" in target):
        return "latex"
    if is_file:
        return "file"
    if target.isidentifier():
        from . import stdlib

        if target in stdlib.names() or not path.exists():
            return "stdlib"
    return "formula"


def read_text(path: Path) -> str:
    """A target file's text; one that is not UTF-8 is a user's error naming the file, not a traceback."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise LossError(f"{path} is not UTF-8 text: byte 0x{err.object[err.start]:02x} at offset {err.start} "
                        "(save it as UTF-8)") from None


def resolve(target: str, *, latex: bool = False, name: str | None = None, vectors: Sequence[str] = (),
            params: Mapping[str, float | int | bool] | None = None) -> api.Loss:
    """A `.loss` file (its loss `name`, default the last), LaTeX (a .tex file, or text with a backslash),
    a stdlib name, or a one-line formula. `params` (`-p k=v`) makes those names of a formula or of LaTeX
    parameters with these defaults; a file or a stdlib loss declares its own, the values then apply at build.
    `name` picks a loss of a file or names a LaTeX loss; for a stdlib loss or a formula it is an error, since
    it would be silently ignored."""
    kind, path = target_kind(target, latex), Path(target)
    if kind == "missing":
        raise LossError(f"no such file: {target}")
    if name is not None and kind in ("stdlib", "formula"):
        raise LossError(f"--name picks one loss of a .loss file (or names a LaTeX loss); '{target}' is "
                        + ("a stdlib loss" if kind == "stdlib" else "a formula") + ", which has no losses to pick")
    if kind == "latex":
        return from_latex(read_text(path) if path.is_file() else target, name=name, vectors=vectors,
                          params=dict(params or {}))
    if kind == "file":
        read_text(path)
        return _pick(target, api.load(path), name)
    if kind == "stdlib":
        from . import stdlib

        if target not in stdlib.names():
            raise UnknownNameError(f"'{target}' is neither a file nor a stdlib loss"
                                   + did_you_mean(target, stdlib.names()))
        return stdlib.get(target)
    return api.parse(target, params=dict(params or {}))


def _pick(target: str, losses: Mapping[str, api.Loss], name: str | None) -> api.Loss:
    """The loss `name` of a file, default its last."""
    if not losses:
        raise LossError(f"{target} defines no loss")
    if name is None:
        return list(losses.values())[-1]
    if name not in losses:
        raise UnknownNameError(f"{target} has no loss '{name}'" + did_you_mean(name, losses))
    return losses[name]


def target_of(args: argparse.Namespace, check_names: bool = True) -> api.Loss:
    params = parse_params(getattr(args, "param", []))
    loss = resolve(args.target, latex=getattr(args, "latex", False), name=args.name, vectors=_names(args.vectors),
                   params=params)
    if check_names or written(args):
        check_param_names(loss, params, written=written(args))
    return loss


def written(args: argparse.Namespace) -> bool:
    """Whether the target is a formula or LaTeX, whose -p values are the defaults of its parameters."""
    return target_kind(args.target, getattr(args, "latex", False)) in ("formula", "latex")


def check_param_names(loss: api.Loss, params: Mapping[str, object], written: bool = False) -> None:
    """Every -p name is a parameter of the loss (or the size of an axis no input fixes): a misspelt name would
    otherwise be dropped or fail far from the command line. `written`: the target is a formula or LaTeX, where
    -p makes a name of the formula a parameter, so a name it does not use is not one."""
    known = [*(p.name for p in loss.parameters), *loss.axis_keywords()]
    for key in params:
        if key in known:
            continue
        if written:
            raise UnknownNameError(f"-p {key}: the formula has no name '{key}' to make a parameter"
                                   + did_you_mean(key, [*known, *(i.name for i in loss.inputs)]))
        raise UnknownNameError(f"loss '{loss.name}' has no parameter '{key}'" + did_you_mean(key, known))


def _names(text: str | None) -> list[str]:
    return [n.strip() for n in (text or "").split(",") if n.strip()]


def parse_params(pairs: Sequence[str]) -> dict[str, float | int | bool]:
    """`-p gamma=2 -p swap=true` → {'gamma': 2, 'swap': True}."""
    out: dict[str, float | int | bool] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.isidentifier():
            raise LossError(f"a parameter is given as NAME=VALUE, got {pair!r}")
        low = value.strip().lower()
        if low in ("true", "false"):
            out[key] = low == "true"
            continue
        try:
            out[key] = int(value) if low.lstrip("-").isdigit() else float(value)
        except ValueError:
            raise LossError(f"the value of parameter '{key}' must be a number, got {value!r}") from None
    return out


def describe_input(i: ir.Input) -> str:
    axes = f"[{', '.join(i.axes)}]" if i.axes else ""
    kind = "" if i.kind == "real" else f": {i.kind}" + (f"({i.kind_arg})" if i.kind_arg else "")
    return f"{i.name}{axes}{kind}"


def describe_param(p: ir.Param) -> str:
    axes = f"[{', '.join(p.axes)}]" if p.axes else ""
    kind = f": {p.type}" if p.type else ""
    value = " (required)" if p.default is None else f" = {p.default}"
    cons = ""
    if p.constraint:
        op, bounds = p.constraint
        cons = f" in [{bounds[0]}, {bounds[1]}]" if op == "in" else f" {op} {bounds[0]}"
    return f"{p.name}{axes}{kind}{value}{cons}"


def stable_forms(loss: api.Loss) -> str:
    """Which stability rewrites the compiled module uses, and where (the pass's notes)."""
    fired = [f"{n['rule']} ({n.get('where', 'result')})" for n in loss.ir.notes if n.get("rule")]
    return ", ".join(dict.fromkeys(fired)) or "none needed"


def differentiable_inputs(loss: api.Loss) -> list[str]:
    return [i.name for i in loss.inputs if i.kind not in ("index", "int", "count", "binary", "sign", "fn")]


def gradient(loss: api.Loss, wrt: str, reduction: str | None = None):
    if not hasattr(loss, "grad"):
        raise UnavailableError("gradients need lossdsl.gradient (Loss.grad), which this installation lacks")
    return loss.grad(wrt, reduction=reduction)


# ---- commands
def cmd_compile(args: argparse.Namespace) -> int:
    loss = target_of(args, check_names=False)  # for a file or a stdlib loss any -p is the mistake below
    defaults = {p.name: p.default for p in loss.parameters}
    for key, value in parse_params(args.param).items():
        if key not in defaults or defaults[key] != value:
            raise LossError(f"-p {key}={value}: -p gives the defaults of a formula's or LaTeX's parameters; "
                            f"'{loss.name}' declares its own (pass values when building the module)")
    source = loss.to_source()
    if args.output:
        Path(args.output).write_text(source, encoding="utf-8")
        progress(f"wrote {args.output}: class {loss.class_name} ({loss.name}), needs only torch")
    else:
        sys.stdout.write(source)
    return 0


def cmd_show(args: argparse.Namespace) -> int:
    loss = target_of(args)
    lines = [f"loss {loss.name}"]
    if loss.doc:
        lines.append("  " + " ".join(loss.doc.split()))
    lines.append("inputs:     " + ", ".join(describe_input(i) for i in loss.inputs))
    lines.append("parameters: " + (", ".join(describe_param(p) for p in loss.parameters) or "none"))
    written = getattr(loss, "lossdsl_source", None) or definition_text(loss)
    if written:
        lines.append("definition:\n" + "\n".join(f"  {x}" for x in written.splitlines()))
    lines.append("latex:      " + loss.latex())
    lines.append("stable:     " + stable_forms(loss))
    for wrt in differentiable_inputs(loss)[:1]:
        progress(f"deriving d {loss.name}/d {wrt}")
        try:
            lines.append("gradient:   " + str(gradient(loss, wrt)))
        except (UnavailableError, LossError) as err:
            lines.append(f"gradient:   unavailable ({err})")
    print("\n".join(lines))
    return 0


def cmd_grad(args: argparse.Namespace) -> int:
    loss = target_of(args)
    progress(f"deriving d {loss.name}/d {args.wrt}")
    g = gradient(loss, args.wrt, args.reduction)
    print(g.latex() if args.as_latex else str(g))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    loss = target_of(args)
    verify = optional("lossdsl.verify", "lossdsl check (gradient verification)")
    params = parse_params(args.param)
    verify.check_trials(args.trials)
    progress(f"checking {loss.name}: symbolic gradient vs autograd vs finite differences ({args.trials} draws)")
    report = verify.verify(loss, trials=args.trials, **params)
    print(report)
    stability = optional("lossdsl.stability", "lossdsl check (stability report)")
    progress("stability report")
    path = Path(args.target)
    if path.suffix == ".loss" and path.is_file() and not params:
        print(stability.check_file(str(path)))
    else:
        print(loss.stability_report(**params))
    return 0 if report.passed else 1


def cmd_plot(args: argparse.Namespace) -> int:
    from . import plot

    params = parse_params(args.param)
    losses = [resolve(t, latex=args.latex, vectors=_names(args.vectors), params=params) for t in args.targets]
    plot.check_params(losses, params)
    over = plot.common_axis(losses, args.over)
    curves = []
    for k, loss in enumerate(losses, 1):
        progress(f"[{k}/{len(losses)}] {loss.name}")
        curves.append(plot.curve(loss, over=over, lo=args.range[0], hi=args.range[1], points=args.points,
                                 params=params))
    out = plot.save(curves, args.output)
    print(f"wrote {out}: loss and gradient of {', '.join(c.name for c in curves)} over the {over}")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    from . import stdlib

    print(stdlib.format_catalog())
    return 0


def cmd_bench(args: argparse.Namespace) -> int:
    loss = target_of(args)
    print(quickbench.run(loss, size=args.size, repeat=args.repeat, variants=args.variants.split(","),
                    params=parse_params(args.param), report=progress))
    return 0


# ---- argument parsing
def _target(p: argparse.ArgumentParser, latex_flag: bool = True) -> None:
    p.add_argument("target", metavar="NAME|FILE", help="a .loss file, a stdlib loss name, a formula, or LaTeX "
                   "(a .tex file or text with a backslash)")
    p.add_argument("--name", help="which loss of a .loss file (default: the last one), or the name of a LaTeX "
                   "loss; an error for a stdlib loss or a formula")
    if latex_flag:
        p.add_argument("--latex", action="store_true", help="read the target as LaTeX (text or a file)")
    _vectors(p)


def _vectors(p: argparse.ArgumentParser) -> None:
    p.add_argument("--vectors", metavar="q,k", help="LaTeX input: tensors with a feature axis (dot products)")


def _params(p: argparse.ArgumentParser) -> None:
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value (for a formula or LaTeX: makes NAME a parameter with this default)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lossdsl", description="Loss functions written as mathematics → PyTorch.")
    sub = parser.add_subparsers(dest="command", required=True)
    commands: list[tuple[str, str, Callable]] = [
        ("compile", "standalone PyTorch source of a loss", cmd_compile),
        ("show", "formula, LaTeX, parameters and gradient of a loss", cmd_show),
        ("grad", "the symbolic gradient of a loss", cmd_grad),
        ("check", "gradient verification and stability report", cmd_check),
        ("plot", "loss and gradient curves over the error or the logit", cmd_plot),
        ("list", "the stdlib catalogue", cmd_list),
        ("bench", "time and memory: eager vs compiled vs torch built-in", cmd_bench),
    ]
    ps = {name: sub.add_parser(name, help=text, description=text) for name, text, _ in commands}
    for name, _, fn in commands:
        ps[name].set_defaults(func=fn)
    for name in ("compile", "show", "grad", "check", "bench"):
        _target(ps[name], latex_flag=name != "grad")
    ps["compile"].add_argument("-o", "--output", help="write the source here (default: stdout)")
    for name in ("compile", "show", "grad"):
        _params(ps[name])
    ps["grad"].add_argument("--wrt", required=True, help="the input or parameter to differentiate by")
    ps["grad"].add_argument("--latex", dest="as_latex", action="store_true", help="print the gradient as LaTeX")
    ps["grad"].add_argument("--reduction", choices=("mean", "sum", "none"), default=None)
    ps["check"].add_argument("--trials", type=int, default=3, help="random draws, at least 1 (default 3)")
    _params(ps["check"])
    plot = ps["plot"]
    plot.add_argument("targets", nargs="+", metavar="NAME", help="stdlib names, .loss files or formulas")
    plot.add_argument("--range", nargs=2, type=float, default=(-3.0, 3.0), metavar=("A", "B"))
    plot.add_argument("--over", choices=("auto", "error", "logit"), default="auto",
                      help="x axis: the error (prediction - target) or the logit (target 1); auto picks by kind")
    plot.add_argument("--points", type=int, default=401)
    plot.add_argument("--latex", action="store_true", help="the targets are LaTeX formulas")
    _vectors(plot)
    plot.add_argument("-o", "--output", required=True, help="the PNG to write (.png is added to a name without a "
                      "suffix; .pdf, .svg and matplotlib's other formats by their suffix)")
    _params(plot)
    ps["bench"].add_argument("--size", type=int, default=4096, help="batch size, at least 1 (default 4096)")
    ps["bench"].add_argument("--repeat", type=int, default=20, help="timed runs, at least 1 (default 20)")
    ps["bench"].add_argument("--variants", default=",".join(quickbench.DEFAULT_VARIANTS),
                             help=f"comma-separated, of {', '.join(quickbench.VARIANTS)} (compiled_sym: compiled "
                                  "with the symbolic backward, compiled_fwd: with the gradient computed in the "
                                  "forward, compiled_auto: the fastest of autograd, symbolic and in_forward; default "
                                  "%(default)s)")
    _params(ps["bench"])
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except LossError as err:
        print(f"lossdsl {args.command}: error: {err}", file=sys.stderr)
        return 1
    except UnavailableError as err:
        print(f"lossdsl {args.command}: {err}", file=sys.stderr)
        return 2
    except OSError as err:
        print(f"lossdsl {args.command}: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
