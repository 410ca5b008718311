"""Exceptions a user can cause. Each message says what happened and what to do."""


class MedSAMError(Exception):
    """Base class of every error MedSAMSlicer raises on purpose.

    The message is written for the person using the tool: what went wrong and
    what to do about it. Callers (the widget, the CLI) show it as is.
    """


class InputError(MedSAMError):
    """Bad input data or arguments: a missing file, a 4D image, a box off the image."""


class PromptError(InputError):
    """A prompt that cannot be used: outside the image, degenerate, on no slice."""


class GeometryError(MedSAMError):
    """A view or volume geometry the tool cannot work with (an oblique view, say)."""


class CheckpointError(MedSAMError):
    """A model checkpoint that is missing, unreadable, corrupt or of another architecture."""


class DownloadError(MedSAMError):
    """A model download that failed, was interrupted or did not match its checksum."""


class DependencyError(MedSAMError):
    """A Python package the chosen engine needs (torch, segment-anything) is missing."""


class CancelledError(MedSAMError):
    """The user cancelled a long operation; nothing was written."""
