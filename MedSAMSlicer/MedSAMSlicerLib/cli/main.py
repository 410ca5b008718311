"""The `medsam-slicer` command line: argument parsing, validation and error reporting.

    medsam-slicer segment IMAGE --out OUT [--box X0,Y0,Z0,X1,Y1,Z1] [--point X,Y,Z,LABEL ...]
                  [--box-ras R0,A0,S0,R1,A1,S1] [--point-ras R,A,S,LABEL ...] [--axis i|j|k]
                  [--propagate] [--model NAME|PATH] [--recipe medsam|sam|medsam2|sam2]
                  [--device auto|cuda|mps|cpu] [--json] [--debug]
    medsam-slicer evaluate IMAGE LABEL [--label N] [--model ...] [--clicks N] [--json]
    medsam-slicer models
    medsam-slicer download MODEL [--force]
    medsam-slicer demo [--out DIR]

This file only parses and checks arguments (fast: no torch, no slicer import);
the commands live in commands.py and demo.py. Errors a user can cause are
MedSAMError subclasses: they are printed as one line on stderr and the process
exits with status 2 (1 for other failures); --debug shows the traceback.
SIGINT, SIGTERM and SIGHUP end a command through core/interrupts.py, so that no
partial or temporary file is left behind; the status is then 128 + the signal.
"""

import argparse
import logging
import math
import os
import signal
import sys
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

from ..core.errors import InputError, MedSAMError, PromptError
from ..core.interrupts import STOP_SIGNALS, installStopHandlers
from ..models.registry import RECIPES as MODEL_RECIPES
from .options import AXES

DEVICES = ("auto", "cuda", "mps", "cpu")
RECIPES = tuple(recipe for recipe in MODEL_RECIPES if recipe != "none")
EXIT_USER_ERROR = 2
EXIT_FAILURE = 1
#: evaluate --clicks: interactive segmentation benchmarks count up to 20 clicks; far beyond that a simulated
#: user only burns time (each click re-propagates), so the budget is capped.
MAX_CLICKS = 50


@dataclass
class PromptArguments:
    """Prompts as given on the command line, parsed but not yet placed on the image.

    boxIjk: ((i0, j0, k0), (i1, j1, k1)) inclusive voxel indices, sorted, or None.
    boxRas: ((r0, a0, s0), (r1, a1, s1)) in RAS mm, or None.
    pointsIjk / pointsRas: lists of ((x, y, z), label) with label 1 positive, 0 negative.
    """

    boxIjk: Optional[Tuple[Tuple[int, ...], Tuple[int, ...]]] = None
    boxRas: Optional[Tuple[Tuple[float, ...], Tuple[float, ...]]] = None
    pointsIjk: Tuple = ()
    pointsRas: Tuple = ()

    @property
    def isEmpty(self) -> bool:
        """True when no box and no point was given."""
        return self.boxIjk is None and self.boxRas is None and not self.pointsIjk and not self.pointsRas


def _numbers(text: str, count: int, option: str, form: str, integer: bool) -> list:
    """Split 'a,b,c' into ``count`` numbers; PromptError naming the option and the expected form."""
    parts = [part.strip() for part in str(text).split(",")]
    try:
        if len(parts) != count:
            raise ValueError
        values = [int(part) for part in parts] if integer else [float(part) for part in parts]
    except ValueError:
        kind = "integers" if integer else "numbers"
        raise PromptError(f"{option} {text!r}: expected {count} comma-separated {kind}, {form}.") from None
    if not all(math.isfinite(value) for value in values):
        raise PromptError(f"{option} {text!r}: every value must be a finite number (not nan or inf), {form}.")
    return values


def parseBoxIjk(text: str, axis: int = 2) -> Tuple[Tuple[int, ...], Tuple[int, ...]]:
    """Parse --box X0,Y0,Z0,X1,Y1,Z1 (inclusive voxel indices, x = i, y = j, z = k).

    Corners are sorted per axis. The box must be at least 2 voxels wide in both
    in-plane directions of ``axis`` (0 = i, 1 = j, 2 = k; the slicing axis may
    have equal ends: a 2D box). Raises PromptError for bad syntax or a
    degenerate box.
    """
    values = _numbers(text, 6, "--box", "X0,Y0,Z0,X1,Y1,Z1 in voxel indices", integer=True)
    low = tuple(min(a, b) for a, b in zip(values[:3], values[3:]))
    high = tuple(max(a, b) for a, b in zip(values[:3], values[3:]))
    for inPlane in (a for a in range(3) if a != axis):
        if high[inPlane] - low[inPlane] + 1 < 2:
            raise PromptError(
                f"--box {text}: the box is {high[inPlane] - low[inPlane] + 1} voxel wide along {'xyz'[inPlane]} "
                f"({'ijk'[inPlane]}); draw it at least 2 voxels wide in both in-plane directions."
            )
    return low, high


def parseBoxRas(text: str) -> Tuple[Tuple[float, ...], Tuple[float, ...]]:
    """Parse --box-ras R0,A0,S0,R1,A1,S1 (mm, RAS); corners sorted per axis. PromptError for bad syntax."""
    values = _numbers(text, 6, "--box-ras", "R0,A0,S0,R1,A1,S1 in millimetres", integer=False)
    low = tuple(min(a, b) for a, b in zip(values[:3], values[3:]))
    high = tuple(max(a, b) for a, b in zip(values[:3], values[3:]))
    return low, high


def parsePoint(text: str, option: str = "--point") -> Tuple[Tuple[float, ...], int]:
    """Parse X,Y,Z,LABEL (LABEL 1 positive, 0 negative) -> ((x, y, z), label). PromptError for bad syntax."""
    integer = option == "--point"
    form = "X,Y,Z,LABEL in voxel indices" if integer else "R,A,S,LABEL in millimetres"
    values = _numbers(text, 4, option, form + " (LABEL 1 positive, 0 negative)", integer=False)
    label = values[3]
    if label not in (0.0, 1.0):
        raise PromptError(f"{option} {text}: LABEL must be 1 (positive) or 0 (negative).")
    position = values[:3]
    if integer:
        if any(v != int(v) for v in position):
            raise PromptError(f"{option} {text}: voxel indices must be integers; use --point-ras for millimetres.")
        position = [int(v) for v in position]
    return tuple(position), int(label)


def promptArguments(args) -> PromptArguments:
    """Parse and check every prompt option of a `segment` command; PromptError when none or a bad one is given."""
    axis = AXES[args.axis]
    if args.box is not None and args.box_ras is not None:
        raise PromptError("give either --box (voxel indices) or --box-ras (millimetres), not both.")
    prompts = PromptArguments(
        boxIjk=parseBoxIjk(args.box, axis) if args.box is not None else None,
        boxRas=parseBoxRas(args.box_ras) if args.box_ras is not None else None,
        pointsIjk=tuple(parsePoint(text, "--point") for text in args.point or ()),
        pointsRas=tuple(parsePoint(text, "--point-ras") for text in args.point_ras or ()),
    )
    if prompts.isEmpty:
        raise PromptError("no prompt: give --box X0,Y0,Z0,X1,Y1,Z1 (voxel indices) or --point X,Y,Z,1.")
    return prompts


class _Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors, like every other error of the command line."""

    def error(self, message):
        """Print one line naming the problem and where help is, then exit with status 2."""
        print(f"{self.prog}: error: {message} (see {self.prog} --help)", file=sys.stderr)
        sys.exit(EXIT_USER_ERROR)


def _addCommonOptions(parser, withDebug=True):
    """Options every subcommand takes."""
    if withDebug:
        parser.add_argument("--debug", action="store_true", help="show tracebacks and native library messages")


def _addModelOptions(parser):
    """--model and --device."""
    parser.add_argument(
        "--model",
        default=None,
        help="medsam | sam_vit_b | sam_vit_l | sam_vit_h | medsam2 | sam2.1_hiera_t|s|b+|l | growcut | PATH to a "
        "checkpoint (SAM or SAM 2.1 family and architecture detected from the weights). "
        "Default: MedSAM when its weights are cached, else the weight-free growcut engine.",
    )
    parser.add_argument("--device", default="auto", choices=DEVICES, help="where the model runs (default auto)")
    parser.add_argument("--recipe", default=None, choices=RECIPES,
                        help="preprocessing of a checkpoint given by PATH: medsam | sam (SAM/MedSAM files), "
                        "medsam2 | sam2 (SAM 2.1/MedSAM2 files); default from the file name (MedSAM or not)")


def buildParser() -> argparse.ArgumentParser:
    """The argparse parser of `medsam-slicer` with its subcommands."""
    parser = _Parser(
        prog="medsam-slicer",
        description="MedSAM / SAM promptable segmentation of medical images, headless (Slicer's MRML, no GUI).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    segment = sub.add_parser("segment", help="segment an image from a box and/or points",
                             description="Segment IMAGE from a box and/or points; write OUT with IMAGE's geometry.")
    segment.add_argument("image", metavar="IMAGE", help="NIfTI, NRRD, MHA, a DICOM series folder, or PNG/JPEG/TIFF")
    segment.add_argument("--out", required=True, metavar="OUT",
                         help="output: *.seg.nrrd (Slicer segmentation) or *.nii.gz / *.nrrd (labelmap)")
    segment.add_argument("--box", metavar="X0,Y0,Z0,X1,Y1,Z1",
                         help="box in voxel indices, inclusive (x = i, y = j, z = k); Z0 == Z1 for a 2D box")
    segment.add_argument("--point", action="append", metavar="X,Y,Z,LABEL",
                         help="point in voxel indices; LABEL 1 positive, 0 negative (repeatable)")
    segment.add_argument("--box-ras", metavar="R0,A0,S0,R1,A1,S1", help="box in RAS millimetres")
    segment.add_argument("--point-ras", action="append", metavar="R,A,S,LABEL", help="point in RAS mm (repeatable)")
    segment.add_argument("--axis", default="k", choices=tuple(AXES), help="slicing direction (default k)")
    segment.add_argument("--propagate", action="store_true",
                         help="carry the result through the volume (within Z0..Z1 when the box spans slices)")
    segment.add_argument("--volume-index", type=int, metavar="N", help="volume N (0-based) of a 4D image")
    _addModelOptions(segment)
    segment.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    _addCommonOptions(segment)

    evaluate = sub.add_parser("evaluate", help="measure a model with a simulated user against a ground-truth label",
                              description="Box from the truth, then corrective clicks; prints Dice and NoC@85/90.")
    evaluate.add_argument("image", metavar="IMAGE")
    evaluate.add_argument("labelImage", metavar="LABEL", help="ground-truth label image on IMAGE's grid")
    evaluate.add_argument("--label", type=int, default=None, metavar="N",
                          help="label value of the structure (default: the only non-zero value of LABEL)")
    evaluate.add_argument("--clicks", type=int, default=5, metavar="N", help="corrective click budget (default 5)")
    evaluate.add_argument("--axis", default="k", choices=tuple(AXES), help="slicing direction (default k)")
    evaluate.add_argument("--volume-index", type=int, metavar="N", help="volume N (0-based) of a 4D image")
    _addModelOptions(evaluate)
    evaluate.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    _addCommonOptions(evaluate)

    models = sub.add_parser("models", help="list the models and whether their weights are cached")
    models.add_argument("--json", action="store_true", help="print the list as JSON")
    _addCommonOptions(models)

    download = sub.add_parser("download", help="download a model's weights into the cache (resumes, checks SHA-256)")
    download.add_argument("model", metavar="MODEL")
    download.add_argument("--force", action="store_true",
                          help="download again even if the cache holds the file (replaces a damaged file)")
    _addCommonOptions(download)

    demo = sub.add_parser("demo", help="segment a generated CT-like volume from one box and report Dice and time")
    demo.add_argument("--out", default="out", metavar="DIR", help="output folder (default ./out)")
    demo.add_argument("--model", default=None, help="model to use (default as for segment)")
    demo.add_argument("--device", default="auto", choices=DEVICES)
    demo.add_argument("--json", action="store_true", help="print a JSON summary as the last line of stdout")
    _addCommonOptions(demo)
    return parser


def _validate(args) -> None:
    """Checks that need no image: prompts' syntax, numbers in range, paths of the right kind. InputError/PromptError."""
    if args.command == "segment":
        args.prompts = promptArguments(args)
    if getattr(args, "volume_index", None) is not None and args.volume_index < 0:
        raise InputError(f"--volume-index {args.volume_index}: give a volume number from 0.")
    if args.command == "evaluate":
        if not 0 <= args.clicks <= MAX_CLICKS:
            raise InputError(f"--clicks {args.clicks}: give a click budget from 0 to {MAX_CLICKS}.")
        if args.label == 0:
            raise InputError("--label 0 is the background: give the label value of the structure to score "
                             "(leave --label out and the error lists the values present).")
    if args.command == "demo" and os.path.exists(args.out) and not os.path.isdir(args.out):
        raise InputError(f"--out {args.out} is a file: the demo writes several files into a folder; give a folder name.")


def _run(args) -> int:
    """Dispatch to the command's implementation (imported here, so --help stays fast)."""
    if args.command == "demo":
        from .demo import runDemo

        return runDemo(args)
    from . import commands

    command = getattr(commands, "run" + args.command.capitalize())  # runSegment, runEvaluate, ...
    return command(args)


COORDINATE_OPTIONS = ("--box", "--box-ras", "--point", "--point-ras")


def joinNegativeValues(argv: Sequence[str]) -> List[str]:
    """Let coordinate values start with a minus sign: `--box-ras -20,5,...` becomes `--box-ras=-20,5,...`.

    argparse would otherwise take "-20,5,..." for an option and stop with "expected one argument".
    """
    joined, index = [], 0
    while index < len(argv):
        token = argv[index]
        following = argv[index + 1] if index + 1 < len(argv) else ""
        if token in COORDINATE_OPTIONS and following[:1] == "-" and (following[1:2].isdigit() or following[1:2] == "."):
            joined.append(f"{token}={following}")
            index += 2
            continue
        joined.append(token)
        index += 1
    return joined


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Entry point of `medsam-slicer`: parse, validate, run; one stderr line and a non-zero status on errors."""
    args = buildParser().parse_args(joinNegativeValues(sys.argv[1:] if argv is None else list(argv)))
    previousHandlers = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
    try:
        installStopHandlers()
        _validate(args)
        if not args.debug:
            logging.getLogger("MedSAMSlicerLib").setLevel(logging.ERROR)
        return int(_run(args) or 0)
    except MedSAMError as error:
        if args.debug:
            raise
        print(f"medsam-slicer {args.command}: error: {_oneLine(error)}", file=sys.stderr)
        return EXIT_USER_ERROR
    except KeyboardInterrupt as interrupt:
        signum = getattr(interrupt, "signum", signal.SIGINT)
        print(f"medsam-slicer {args.command}: stopped by {signal.Signals(signum).name}; no partial or temporary "
              "file was left behind.", file=sys.stderr)
        return 128 + signum
    except Exception as error:  # noqa: BLE001 - the CLI must end with one line, not a traceback
        if args.debug:
            raise
        print(f"medsam-slicer {args.command}: internal error: {type(error).__name__}: {_oneLine(error)} "
              "(run again with --debug for the traceback and report it)", file=sys.stderr)
        return EXIT_FAILURE
    finally:
        for signum, handler in previousHandlers.items():
            signal.signal(signum, handler)


def _oneLine(error: BaseException) -> str:
    """The error's message on one line."""
    return " ".join(str(error).split()) or type(error).__name__


if __name__ == "__main__":
    sys.exit(main())
