"""Every error the domain raises on purpose. Transports (pages, API, CLI) turn these into answers.

Each message says what went wrong and what to do about it.
"""


class PortalError(Exception):
    """Base of the portal's own errors; ``str(exc)`` is shown to the user."""


class ConfigError(PortalError):
    """A setting is missing or invalid."""


class NotFound(PortalError):
    """The thing does not exist, or the user may not see it (the two are not told apart)."""


class PermissionDenied(PortalError):
    """The user may see the thing but not do this to it."""


class InvalidInput(PortalError):
    """Something a user gave does not fit; the message names it and what fits (HTTP 422)."""


class InvalidSelection(InvalidInput):
    """A selection names folders, patients, tags, modalities or kinds that do not fit."""


class InvalidOption(InvalidInput):
    """An export's option does not fit: name, notes, privacy level, compression, part size."""


class InvalidValue(InvalidInput):
    """A curated DICOM field or value that DICOM (or curation) does not allow."""


class IngestError(PortalError):
    """A directory cannot be registered at all (as opposed to single files being skipped)."""


class SourceFileError(PortalError):
    """A registered file is missing, unreadable or changed since it was registered."""


class NotEnoughSpace(PortalError):
    """The export root has (or kept) too little free space for an export."""


class ExportCancelled(PortalError):
    """The export was cancelled while it was being built."""


class NotDicom(PortalError):
    """A file meant to be DICOM does not parse as DICOM."""


class LimitExceeded(PortalError):
    """An export is over the size limit or the user's quota (HTTP 413)."""


class InvalidState(PortalError):
    """The export is not in a state that allows this (e.g. downloading a failed export)."""


class Gone(PortalError):
    """The export's file should be there but is not (HTTP 410)."""


class NotSignedIn(PortalError):
    """No identity reached the portal (HTTP 401)."""


class PrivacyCheckFailed(PortalError):
    """The residual-identifier check found identifiers in an archive that must carry none.

    Odd one out: it carries the check's report (files, places, kinds; never a value), which
    the job keeps on the export for its data managers after the archive is removed.
    """

    def __init__(self, message: str, report: dict[str, object]) -> None:
        super().__init__(message)
        self.report = report
