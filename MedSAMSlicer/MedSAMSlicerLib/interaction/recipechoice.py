"""The preprocessing of a user's checkpoint file: which recipes fit the file, and the line that says which runs. No Qt.

A checkpoint file holds a SAM / MedSAM (ViT) or a SAM 2.1 / MedSAM2 (Hiera)
model, and only its family's recipes can run it (models.enginefactory.fileRecipes).
enginefactory.recipesForFile tells which from the file's parameter names: a
memory-mapped read, but one that imports torch, seconds the first time in
Slicer. FileFamilies therefore reads each file version once, as a JobRunner
task, so the panel never waits; until then every recipe is offered and the
engine loader refuses one that does not fit, with the library's message.
"""

import os
from pathlib import Path
from typing import Optional, Tuple

from ..core.errors import InputError, MedSAMError
from ..core.progress import Signal
from ..models import enginefactory
from .jobrunner import JobRunner, Task
from .parameters import Recipe
from .scheduler import Debouncer, Scheduler


def _version(path) -> Optional[Tuple[str, int, int]]:
    """(path, size, modification time): a file replaced under the same name is read again. None: no such file."""
    try:
        stat = os.stat(path)
    except (OSError, ValueError):
        return None
    return str(path), stat.st_size, stat.st_mtime_ns


class FileFamilies:
    """The recipes each checkpoint file can run with, read in the background once per file version.

    Signals: status(text) (what the file is, or why it could not be read),
    changed() (a file's recipes became known: the choices to show changed).
    """

    def __init__(self, runner: JobRunner, scheduler: Scheduler):
        self.runner = runner
        self.status, self.changed = Signal(), Signal()
        self._recipes = {}  # file version -> recipe values, or None: unknown (being read, unreadable, cancelled)
        self._path = None
        # Deferred: a task that a finishing one chains (the preview after a load) is started first; the read
        # waits for the next idle runner (request again from busyChanged).
        self._reader = Debouncer(scheduler, 0, self._read)

    def recipes(self, path) -> Optional[tuple]:
        """The recipe values ``path`` can run with ("medsam", "sam" or "medsam2", "sam2"); None while unknown."""
        return self._recipes.get(_version(path))

    def request(self, path) -> None:
        """Read ``path``'s family soon, in the background, unless it was read (or tried) already."""
        key = _version(path) if path else None
        if key is not None and key not in self._recipes:
            self._path = path
            self._reader.trigger()

    def close(self) -> None:
        """Drop a pending read (cleanup)."""
        self._reader.cancel()

    def _read(self) -> None:
        path, key = self._path, _version(self._path)
        if self.runner.busy or key is None or key in self._recipes:
            return
        self._recipes[key] = None  # tried once per version; a cancelled read leaves every recipe on offer

        def work(progress, cancel):
            try:
                return enginefactory.recipesForFile(path)
            except MedSAMError as error:  # no torch, not a checkpoint: said in the status line, recipes unknown
                return error

        def finish(outcome):
            if isinstance(outcome, MedSAMError):
                self.status.emit(str(outcome))
                return
            self._recipes[key] = tuple(outcome)
            family = "SAM 2.1 / MedSAM2 (Hiera)" if Recipe.SAM2.value in outcome else "SAM / MedSAM (ViT)"
            self.status.emit(f"{Path(path).name} is a {family} checkpoint: choose its preprocessing in the Model section.")
            self.changed.emit()

        self.runner.start(Task(f"Reading {Path(path).name}", work, finish, interactive=False, sceneBound=False))


def parseRecipe(choice) -> Recipe:
    """The Recipe ``choice`` is (a Recipe or its value); InputError naming the choices for anything else."""
    try:
        return Recipe(choice.value if isinstance(choice, Recipe) else choice)
    except ValueError:
        raise InputError(f"Unknown preprocessing {choice!r}: choose one of {', '.join(r.value for r in Recipe)}.") from None


def recipeChoices(current: Recipe, fitting: Optional[tuple]) -> list:
    """Automatic, then the recipes whose values are in ``fitting`` (all when None: not known yet), then
    ``current`` when it does not fit (the panel shows the stored choice the loader refuses)."""
    choices = [Recipe.AUTO] + [r for r in Recipe if r is not Recipe.AUTO and (fitting is None or r.value in fitting)]
    return choices + ([current] if current not in choices else [])


def preprocessingText(fileName: str, recipe: Recipe, automatic: bool) -> str:
    """One line for the panel: the preprocessing a user's checkpoint file runs with, and how it was chosen."""
    how = "chosen automatically from the file's family and name" if automatic else "as chosen"
    return f"{fileName} runs with {recipe.label()} preprocessing, {how}."
