"""DICOM PS3.15 Annex E Table E.1-1, the Basic Application Level Confidentiality Profile, as data.

One :class:`ProfileRow` per attribute the table names: the Basic Profile's action code exactly
as the table writes it (``"Z"``, ``"X/Z/D"``, ``"X/Z/U*"``, ...) and the option columns the
portal supports (Retain UIDs, Retain Device Identity, Retain Patient Characteristics, Retain
Longitudinal Temporal Information with Full Dates and with Modified Dates, Clean
Descriptors). :func:`effective_action` resolves a row to the one action an export applies;
:func:`row_for` also answers for the table's repeating groups (curves, overlays).

The rows are the 2024 edition of the table (checked against the 2023e and 2024b editions; the
one code that changed between them is Patient ID, ``Z`` in 2023e and ``Z/D`` since). Every
attribute is in pydicom's data dictionary, retired ones included, and the keywords are
pydicom's. The Retain Device Identity and Retain Patient Characteristics columns were taken
from an earlier edition of the table (441 rows): an attribute added since keeps its Basic
Profile action under those options, the more protective choice. The Full Dates column is
``K`` exactly where the Modified Dates column is not empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from pydicom.datadict import dictionary_description, dictionary_VR, keyword_for_tag


class Action(StrEnum):
    """What happens to one attribute: the table's simple codes, plus our date shift."""

    DUMMY = "D"  # replace with a non-zero-length dummy value consistent with the VR
    ZERO = "Z"  # replace with a zero-length value (or a dummy where the attribute is type 1)
    REMOVE = "X"  # remove
    KEEP = "K"  # keep (non-sequence) or keep and clean the items (sequence)
    CLEAN = "C"  # replace identifying text with values of similar meaning
    UID = "U"  # replace with a non-zero-length UID, consistent within the set of instances
    # Not a table code: the retain-modified-dates option's "C" on a date (DA/DT), done by
    # moving the value by the patient's offset so intervals between dates survive.
    SHIFT = "SHIFT"


BASIC_CODES = frozenset({"D", "Z", "X", "K", "C", "U", "Z/D", "X/Z", "X/D", "X/Z/D", "X/Z/U*"})
"""Every action code Table E.1-1 defines, combined ones included (the Basic Profile column of
the 2024 edition uses all but ``K`` and ``C``, which only its option columns use)."""

_SIMPLE: dict[str, Action] = {
    "D": Action.DUMMY,
    "Z": Action.ZERO,
    "X": Action.REMOVE,
    "K": Action.KEEP,
    "C": Action.CLEAN,
    "U": Action.UID,
    # A combined code lets the application choose; removal is the more protective choice
    # wherever the standard allows it. "Z/D" takes the dummy value: it says as little as a
    # blank and keeps Type 1 uses (ContentDate in enhanced objects) valid.
    "Z/D": Action.DUMMY,
    "X/Z": Action.REMOVE,
    "X/D": Action.REMOVE,
    "X/Z/D": Action.REMOVE,
}


@dataclass(frozen=True)
class ProfileRow:
    """One attribute of Table E.1-1 with the option columns the portal supports.

    ``basic`` is the Basic Profile code as the table writes it. ``retain_uids`` is True where
    the Retain UIDs column says ``K``; ``retain_dates`` is the Retain Longitudinal Temporal
    Information with Modified Dates column (``"C"``, ``"K"`` or None when empty; the Full
    Dates column says ``K`` wherever it is not empty); ``clean_descriptors`` is True where the
    Clean Descriptors column says ``C``; ``retain_device`` where Retain Device Identity says
    ``K``; ``retain_characteristics`` is the Retain Patient Characteristics column (``"K"``,
    ``"C"`` or None).
    """

    tag: int
    keyword: str
    name: str
    basic: str
    retain_uids: bool = False
    retain_dates: str | None = None
    clean_descriptors: bool = False
    retain_device: bool = False
    retain_characteristics: str | None = None

    @property
    def tag_text(self) -> str:
        """The tag as the standard writes it, e.g. ``(0010,0010)``."""
        return f"({self.tag >> 16:04X},{self.tag & 0xFFFF:04X})"


@dataclass(frozen=True)
class RepeatingGroup:
    """A table row that stands for a family of tags in the repeating groups 50xx or 60xx."""

    pattern: str
    mask: int
    value: int
    name: str
    basic: str

    def matches(self, tag: int) -> bool:
        """True if ``tag`` belongs to this family (even groups only: odd ones are private)."""
        return tag & self.mask == self.value

    def row(self, tag: int) -> ProfileRow:
        """The row for one member ``tag`` of this family, with pydicom's keyword if it has one."""
        return ProfileRow(tag, keyword_for_tag(tag) or "", self.name, self.basic)


REPEATING_GROUPS: tuple[RepeatingGroup, ...] = (
    # Curves (retired) fill whole groups 5000-50FE; overlays repeat in groups 6000-60FE.
    RepeatingGroup("(50xx,xxxx)", 0xFF010000, 0x50000000, "Curve Data", "X"),
    RepeatingGroup("(60xx,3000)", 0xFF01FFFF, 0x60003000, "Overlay Data", "X"),
    RepeatingGroup("(60xx,4000)", 0xFF01FFFF, 0x60004000, "Overlay Comments", "X"),
)
"""The table's rows for repeating groups, which :data:`BASIC_PROFILE` cannot key by tag."""

SUPPLEMENT: dict[int, ProfileRow] = {
    tag: ProfileRow(tag, keyword_for_tag(tag) or "", dictionary_description(tag), "X")
    for tag in (
        0x00100024,  # Issuer of Patient ID Qualifiers Sequence
        0x00100026,  # Source Patient Group Identification Sequence
        0x00100027,  # Group of Patients Identification Sequence
        0x00100033,  # Patient's Birth Date in Alternative Calendar
        0x00100034,  # Patient's Death Date in Alternative Calendar
        0x00100035,  # Patient's Alternative Calendar
        0x00102294,  # Breed Registration Sequence
        0x00102295,  # Breed Registration Number
    )
}
"""The portal's additions: patient attributes Table E.1-1 does not name (the profile would
keep them) that identify the patient as much as the ones it removes. Removed."""

PRIVATE_ACTION = Action.REMOVE
"""The Basic Profile removes private attributes (odd groups), creators included."""

# Where the table's attribute name differs from pydicom's description of the tag.
_NAME_FIXES: dict[int, str] = {
    0x001811BB: "Acquisition Field Of View Label",
    0x300A067C: "Radiation Generation Mode Label",
    0x300A067D: "Radiation Generation Mode Description",
}

# (tag, pydicom keyword, Basic Profile code, options) sorted by tag. Options name the
# supported option columns that are not empty: "uids" (Retain UIDs: K), "dates" (Retain
# Longitudinal Temporal Information with Modified Dates: C; "dates=K" would be K; Full Dates
# is K on the same rows), "desc" (Clean Descriptors: C), "device" (Retain Device Identity: K)
# and "chars" (Retain Patient Characteristics: K; "chars=C" is C). The other option columns
# (Safe Private, Institution Identity, Structured Content, Graphics) are not carried.
_ROWS: tuple[tuple[int, str, str, str], ...] = (
    (0x00001000, "AffectedSOPInstanceUID", "X", "uids"),
    (0x00001001, "RequestedSOPInstanceUID", "U", "uids"),
    (0x00020003, "MediaStorageSOPInstanceUID", "U", "uids"),
    (0x00041511, "ReferencedSOPInstanceUIDInFile", "U", "uids"),
    (0x00080012, "InstanceCreationDate", "X/D", "dates"),
    (0x00080013, "InstanceCreationTime", "X/Z/D", "dates"),
    (0x00080014, "InstanceCreatorUID", "U", "uids"),
    (0x00080015, "InstanceCoercionDateTime", "X", "dates"),
    (0x00080017, "AcquisitionUID", "U", "uids"),
    (0x00080018, "SOPInstanceUID", "U", "uids"),
    (0x00080019, "PyramidUID", "U", "uids"),
    (0x00080020, "StudyDate", "Z", "dates"),
    (0x00080021, "SeriesDate", "X/D", "dates"),
    (0x00080022, "AcquisitionDate", "X/Z", "dates"),
    (0x00080023, "ContentDate", "Z/D", "dates"),
    (0x00080024, "OverlayDate", "X", "dates"),
    (0x00080025, "CurveDate", "X", "dates"),
    (0x0008002A, "AcquisitionDateTime", "X/Z/D", "dates"),
    (0x00080030, "StudyTime", "Z", "dates"),
    (0x00080031, "SeriesTime", "X/D", "dates"),
    (0x00080032, "AcquisitionTime", "X/Z", "dates"),
    (0x00080033, "ContentTime", "Z/D", "dates"),
    (0x00080034, "OverlayTime", "X", "dates"),
    (0x00080035, "CurveTime", "X", "dates"),
    (0x00080050, "AccessionNumber", "Z", ""),
    (0x00080054, "RetrieveAETitle", "X", ""),
    (0x00080055, "StationAETitle", "X", ""),
    (0x00080058, "FailedSOPInstanceUIDList", "U", "uids"),
    (0x00080080, "InstitutionName", "X/Z/D", ""),
    (0x00080081, "InstitutionAddress", "X", ""),
    (0x00080082, "InstitutionCodeSequence", "X/Z/D", ""),
    (0x00080090, "ReferringPhysicianName", "Z", ""),
    (0x00080092, "ReferringPhysicianAddress", "X", ""),
    (0x00080094, "ReferringPhysicianTelephoneNumbers", "X", ""),
    (0x00080096, "ReferringPhysicianIdentificationSequence", "X", ""),
    (0x0008009C, "ConsultingPhysicianName", "Z", ""),
    (0x0008009D, "ConsultingPhysicianIdentificationSequence", "X", ""),
    (0x00080106, "ContextGroupVersion", "D", "dates"),
    (0x00080107, "ContextGroupLocalVersion", "D", "dates"),
    (0x00080201, "TimezoneOffsetFromUTC", "X", "dates"),
    (0x00081000, "NetworkID", "X", ""),
    (0x00081010, "StationName", "X/Z/D", "device"),
    (0x00081030, "StudyDescription", "X", "desc"),
    (0x0008103E, "SeriesDescription", "X", "desc"),
    (0x00081040, "InstitutionalDepartmentName", "X", ""),
    (0x00081041, "InstitutionalDepartmentTypeCodeSequence", "X", ""),
    (0x00081048, "PhysiciansOfRecord", "X", ""),
    (0x00081049, "PhysiciansOfRecordIdentificationSequence", "X", ""),
    (0x00081050, "PerformingPhysicianName", "X", ""),
    (0x00081052, "PerformingPhysicianIdentificationSequence", "X", ""),
    (0x00081060, "NameOfPhysiciansReadingStudy", "X", ""),
    (0x00081062, "PhysiciansReadingStudyIdentificationSequence", "X", ""),
    (0x00081070, "OperatorsName", "X/Z/D", ""),
    (0x00081072, "OperatorIdentificationSequence", "X/D", ""),
    (0x00081080, "AdmittingDiagnosesDescription", "X", "desc"),
    (0x00081084, "AdmittingDiagnosesCodeSequence", "X", "desc"),
    (0x00081088, "PyramidDescription", "X", "desc"),
    (0x00081110, "ReferencedStudySequence", "X/Z", "uids"),
    (0x00081111, "ReferencedPerformedProcedureStepSequence", "X/Z/D", "uids"),
    (0x00081120, "ReferencedPatientSequence", "X", "uids"),
    (0x00081140, "ReferencedImageSequence", "X/Z/U*", "uids"),
    (0x00081155, "ReferencedSOPInstanceUID", "U", "uids"),
    (0x00081195, "TransactionUID", "U", "uids"),
    (0x00082111, "DerivationDescription", "X", "desc"),
    (0x00082112, "SourceImageSequence", "X/Z/U*", "uids"),
    (0x00083010, "IrradiationEventUID", "U", "uids"),
    (0x00084000, "IdentifyingComments", "X", "desc"),
    (0x00100010, "PatientName", "Z", ""),
    (0x00100020, "PatientID", "Z/D", ""),
    (0x00100021, "IssuerOfPatientID", "X", ""),
    (0x00100030, "PatientBirthDate", "Z", ""),
    (0x00100032, "PatientBirthTime", "X", ""),
    (0x00100040, "PatientSex", "Z", "chars"),
    (0x00100050, "PatientInsurancePlanCodeSequence", "X", ""),
    (0x00100101, "PatientPrimaryLanguageCodeSequence", "X", ""),
    (0x00100102, "PatientPrimaryLanguageModifierCodeSequence", "X", ""),
    (0x00101000, "OtherPatientIDs", "X", ""),
    (0x00101001, "OtherPatientNames", "X", ""),
    (0x00101002, "OtherPatientIDsSequence", "X", ""),
    (0x00101005, "PatientBirthName", "X", ""),
    (0x00101010, "PatientAge", "X", "chars"),
    (0x00101020, "PatientSize", "X", "chars"),
    (0x00101030, "PatientWeight", "X", "chars"),
    (0x00101040, "PatientAddress", "X", ""),
    (0x00101050, "InsurancePlanIdentification", "X", ""),
    (0x00101060, "PatientMotherBirthName", "X", ""),
    (0x00101080, "MilitaryRank", "X", ""),
    (0x00101081, "BranchOfService", "X", ""),
    (0x00101090, "MedicalRecordLocator", "X", ""),
    (0x00101100, "ReferencedPatientPhotoSequence", "X", ""),
    (0x00102000, "MedicalAlerts", "X", "desc"),
    (0x00102110, "Allergies", "X", "desc chars=C"),
    (0x00102150, "CountryOfResidence", "X", ""),
    (0x00102152, "RegionOfResidence", "X", ""),
    (0x00102154, "PatientTelephoneNumbers", "X", ""),
    (0x00102155, "PatientTelecomInformation", "X", ""),
    (0x00102160, "EthnicGroup", "X", "chars"),
    (0x00102161, "EthnicGroupCodeSequence", "X", ""),
    (0x00102180, "Occupation", "X", "desc"),
    (0x001021A0, "SmokingStatus", "X", "chars"),
    (0x001021B0, "AdditionalPatientHistory", "X", "desc"),
    (0x001021C0, "PregnancyStatus", "X", "chars"),
    (0x001021D0, "LastMenstrualDate", "X", "dates"),
    (0x001021F0, "PatientReligiousPreference", "X", ""),
    (0x00102203, "PatientSexNeutered", "X/Z", "chars"),
    (0x00102297, "ResponsiblePerson", "X", ""),
    (0x00102299, "ResponsibleOrganization", "X", ""),
    (0x00104000, "PatientComments", "X", "desc"),
    (0x00120010, "ClinicalTrialSponsorName", "D", ""),
    (0x00120020, "ClinicalTrialProtocolID", "D", ""),
    (0x00120021, "ClinicalTrialProtocolName", "Z", ""),
    (0x00120022, "IssuerOfClinicalTrialProtocolID", "X", ""),
    (0x00120023, "OtherClinicalTrialProtocolIDsSequence", "X", ""),
    (0x00120030, "ClinicalTrialSiteID", "Z", ""),
    (0x00120031, "ClinicalTrialSiteName", "Z", ""),
    (0x00120032, "IssuerOfClinicalTrialSiteID", "X", ""),
    (0x00120040, "ClinicalTrialSubjectID", "D", ""),
    (0x00120041, "IssuerOfClinicalTrialSubjectID", "X", ""),
    (0x00120042, "ClinicalTrialSubjectReadingID", "D", ""),
    (0x00120043, "IssuerOfClinicalTrialSubjectReadingID", "X", ""),
    (0x00120050, "ClinicalTrialTimePointID", "Z", ""),
    (0x00120051, "ClinicalTrialTimePointDescription", "X", "desc"),
    (0x00120055, "IssuerOfClinicalTrialTimePointID", "X", ""),
    (0x00120060, "ClinicalTrialCoordinatingCenterName", "Z", ""),
    (0x00120071, "ClinicalTrialSeriesID", "X", ""),
    (0x00120072, "ClinicalTrialSeriesDescription", "X", "desc"),
    (0x00120073, "IssuerOfClinicalTrialSeriesID", "X", ""),
    (0x00120081, "ClinicalTrialProtocolEthicsCommitteeName", "D", ""),
    (0x00120082, "ClinicalTrialProtocolEthicsCommitteeApprovalNumber", "X", ""),
    (0x00120086, "EthicsCommitteeApprovalEffectivenessStartDate", "X", "dates"),
    (0x00120087, "EthicsCommitteeApprovalEffectivenessEndDate", "X", "dates"),
    (0x0014407C, "CalibrationTime", "X", "dates"),
    (0x0014407E, "CalibrationDate", "X", "dates"),
    (0x0016002B, "MakerNote", "X", "desc"),
    (0x0016004B, "DeviceSettingDescription", "X", "desc"),
    (0x0016004D, "CameraOwnerName", "X", ""),
    (0x0016004E, "LensSpecification", "X", "device"),
    (0x0016004F, "LensMake", "X", "device"),
    (0x00160050, "LensModel", "X", "device"),
    (0x00160051, "LensSerialNumber", "X", "device"),
    (0x00160070, "GPSVersionID", "X", ""),
    (0x00160071, "GPSLatitudeRef", "X", ""),
    (0x00160072, "GPSLatitude", "X", ""),
    (0x00160073, "GPSLongitudeRef", "X", ""),
    (0x00160074, "GPSLongitude", "X", ""),
    (0x00160075, "GPSAltitudeRef", "X", ""),
    (0x00160076, "GPSAltitude", "X", ""),
    (0x00160077, "GPSTimeStamp", "X", ""),
    (0x00160078, "GPSSatellites", "X", ""),
    (0x00160079, "GPSStatus", "X", ""),
    (0x0016007A, "GPSMeasureMode", "X", ""),
    (0x0016007B, "GPSDOP", "X", ""),
    (0x0016007C, "GPSSpeedRef", "X", ""),
    (0x0016007D, "GPSSpeed", "X", ""),
    (0x0016007E, "GPSTrackRef", "X", ""),
    (0x0016007F, "GPSTrack", "X", ""),
    (0x00160080, "GPSImgDirectionRef", "X", ""),
    (0x00160081, "GPSImgDirection", "X", ""),
    (0x00160082, "GPSMapDatum", "X", ""),
    (0x00160083, "GPSDestLatitudeRef", "X", ""),
    (0x00160084, "GPSDestLatitude", "X", ""),
    (0x00160085, "GPSDestLongitudeRef", "X", ""),
    (0x00160086, "GPSDestLongitude", "X", ""),
    (0x00160087, "GPSDestBearingRef", "X", ""),
    (0x00160088, "GPSDestBearing", "X", ""),
    (0x00160089, "GPSDestDistanceRef", "X", ""),
    (0x0016008A, "GPSDestDistance", "X", ""),
    (0x0016008B, "GPSProcessingMethod", "X", ""),
    (0x0016008C, "GPSAreaInformation", "X", ""),
    (0x0016008D, "GPSDateStamp", "X", "dates"),
    (0x0016008E, "GPSDifferential", "X", ""),
    (0x00180010, "ContrastBolusAgent", "Z/D", "desc"),
    (0x00180027, "InterventionDrugStopTime", "X", "dates"),
    (0x00180035, "InterventionDrugStartTime", "X", "dates"),
    (0x00181000, "DeviceSerialNumber", "X/Z/D", "device"),
    (0x00181002, "DeviceUID", "U", "uids device"),
    (0x00181004, "PlateID", "X", "device"),
    (0x00181005, "GeneratorID", "X", "device"),
    (0x00181007, "CassetteID", "X", "device"),
    (0x00181008, "GantryID", "X", "device"),
    (0x00181009, "UniqueDeviceIdentifier", "X", "device"),
    (0x0018100A, "UDISequence", "X", "device"),
    (0x0018100B, "ManufacturerDeviceClassUID", "U", "uids device"),
    (0x00181012, "DateOfSecondaryCapture", "X", "dates"),
    (0x00181014, "TimeOfSecondaryCapture", "X", "dates"),
    (0x00181030, "ProtocolName", "X/D", "desc"),
    (0x00181042, "ContrastBolusStartTime", "X", "dates"),
    (0x00181043, "ContrastBolusStopTime", "X", "dates"),
    (0x00181072, "RadiopharmaceuticalStartTime", "X", "dates"),
    (0x00181073, "RadiopharmaceuticalStopTime", "X", "dates"),
    (0x00181078, "RadiopharmaceuticalStartDateTime", "X", "dates"),
    (0x00181079, "RadiopharmaceuticalStopDateTime", "X", "dates"),
    (0x001811BB, "AcquisitionFieldOfViewLabel", "D", "desc"),
    (0x00181200, "DateOfLastCalibration", "X", "dates"),
    (0x00181201, "TimeOfLastCalibration", "X", "dates"),
    (0x00181202, "DateTimeOfLastCalibration", "X", "dates"),
    (0x00181203, "CalibrationDateTime", "Z", "dates"),
    (0x00181204, "DateOfManufacture", "X", "dates"),
    (0x00181205, "DateOfInstallation", "X", "dates"),
    (0x00181400, "AcquisitionDeviceProcessingDescription", "X/D", "desc"),
    (0x00182042, "TargetUID", "U", "uids"),
    (0x00184000, "AcquisitionComments", "X", "desc"),
    (0x00185011, "TransducerIdentificationSequence", "X", ""),
    (0x0018700A, "DetectorID", "X/D", "device"),
    (0x0018700C, "DateOfLastDetectorCalibration", "X/D", "dates"),
    (0x0018700E, "TimeOfLastDetectorCalibration", "X/D", "dates"),
    (0x00189074, "FrameAcquisitionDateTime", "D", "dates"),
    (0x00189151, "FrameReferenceDateTime", "D", "dates"),
    (0x00189185, "RespiratoryMotionCompensationTechniqueDescription", "X", "desc"),
    (0x00189367, "XRaySourceID", "D", "device"),
    (0x00189369, "SourceStartDateTime", "D", "dates"),
    (0x0018936A, "SourceEndDateTime", "D", "dates"),
    (0x00189371, "XRayDetectorID", "D", "device"),
    (0x00189373, "XRayDetectorLabel", "X", "device"),
    (0x0018937B, "MultienergyAcquisitionDescription", "X", "desc"),
    (0x0018937F, "DecompositionDescription", "X", "desc"),
    (0x00189424, "AcquisitionProtocolDescription", "X", "desc"),
    (0x00189516, "StartAcquisitionDateTime", "X/D", "dates"),
    (0x00189517, "EndAcquisitionDateTime", "X/D", "dates"),
    (0x00189623, "FunctionalSyncPulse", "D", "dates"),
    (0x00189701, "DecayCorrectionDateTime", "D", "dates"),
    (0x00189804, "ExclusionStartDateTime", "D", "dates"),
    (0x00189919, "InstructionPerformedDateTime", "Z/D", "dates"),
    (0x00189937, "RequestedSeriesDescription", "X", "desc"),
    (0x0018A002, "ContributionDateTime", "X", "dates"),
    (0x0018A003, "ContributionDescription", "X", "desc"),
    (0x0020000D, "StudyInstanceUID", "U", "uids"),
    (0x0020000E, "SeriesInstanceUID", "U", "uids"),
    (0x00200010, "StudyID", "Z", ""),
    (0x00200027, "PyramidLabel", "X", "desc"),
    (0x00200052, "FrameOfReferenceUID", "U", "uids"),
    (0x00200200, "SynchronizationFrameOfReferenceUID", "U", "uids"),
    (0x00203401, "ModifyingDeviceID", "X", ""),
    (0x00203403, "ModifiedImageDate", "X", "dates"),
    (0x00203405, "ModifiedImageTime", "X", "dates"),
    (0x00203406, "ModifiedImageDescription", "X", ""),
    (0x00204000, "ImageComments", "X", "desc"),
    (0x00209158, "FrameComments", "X", "desc"),
    (0x00209161, "ConcatenationUID", "U", "uids"),
    (0x00209164, "DimensionOrganizationUID", "U", "uids"),
    (0x00281199, "PaletteColorLookupTableUID", "U", "uids"),
    (0x00281214, "LargePaletteColorLookupTableUID", "U", "uids"),
    (0x00284000, "ImagePresentationComments", "X", ""),
    (0x00320012, "StudyIDIssuer", "X", ""),
    (0x00320032, "StudyVerifiedDate", "X", "dates"),
    (0x00320033, "StudyVerifiedTime", "X", "dates"),
    (0x00320034, "StudyReadDate", "X", "dates"),
    (0x00320035, "StudyReadTime", "X", "dates"),
    (0x00321000, "ScheduledStudyStartDate", "X", "dates"),
    (0x00321001, "ScheduledStudyStartTime", "X", "dates"),
    (0x00321010, "ScheduledStudyStopDate", "X", "dates"),
    (0x00321011, "ScheduledStudyStopTime", "X", "dates"),
    (0x00321020, "ScheduledStudyLocation", "X", "device"),
    (0x00321021, "ScheduledStudyLocationAETitle", "X", "device"),
    (0x00321030, "ReasonForStudy", "X", "desc"),
    (0x00321032, "RequestingPhysician", "X", ""),
    (0x00321033, "RequestingService", "X", ""),
    (0x00321040, "StudyArrivalDate", "X", "dates"),
    (0x00321041, "StudyArrivalTime", "X", "dates"),
    (0x00321050, "StudyCompletionDate", "X", "dates"),
    (0x00321051, "StudyCompletionTime", "X", "dates"),
    (0x00321060, "RequestedProcedureDescription", "X/Z", "desc"),
    (0x00321066, "ReasonForVisit", "X", "desc"),
    (0x00321067, "ReasonForVisitCodeSequence", "X", "desc"),
    (0x00321070, "RequestedContrastAgent", "X", "desc"),
    (0x00324000, "StudyComments", "X", "desc"),
    (0x00340001, "FlowIdentifierSequence", "D", ""),
    (0x00340002, "FlowIdentifier", "D", ""),
    (0x00340005, "SourceIdentifier", "D", ""),
    (0x00340007, "FrameOriginTimestamp", "D", "dates"),
    (0x00380004, "ReferencedPatientAliasSequence", "X", ""),
    (0x00380010, "AdmissionID", "X", ""),
    (0x00380011, "IssuerOfAdmissionID", "X", ""),
    (0x00380014, "IssuerOfAdmissionIDSequence", "X", ""),
    (0x0038001A, "ScheduledAdmissionDate", "X", "dates"),
    (0x0038001B, "ScheduledAdmissionTime", "X", "dates"),
    (0x0038001C, "ScheduledDischargeDate", "X", "dates"),
    (0x0038001D, "ScheduledDischargeTime", "X", "dates"),
    (0x0038001E, "ScheduledPatientInstitutionResidence", "X", ""),
    (0x00380020, "AdmittingDate", "X", "dates"),
    (0x00380021, "AdmittingTime", "X", "dates"),
    (0x00380030, "DischargeDate", "X", "dates"),
    (0x00380032, "DischargeTime", "X", "dates"),
    (0x00380040, "DischargeDiagnosisDescription", "X", "desc"),
    (0x00380050, "SpecialNeeds", "X", "chars=C"),
    (0x00380060, "ServiceEpisodeID", "X", ""),
    (0x00380061, "IssuerOfServiceEpisodeID", "X", ""),
    (0x00380062, "ServiceEpisodeDescription", "X", "desc"),
    (0x00380064, "IssuerOfServiceEpisodeIDSequence", "X", ""),
    (0x00380300, "CurrentPatientLocation", "X", ""),
    (0x00380400, "PatientInstitutionResidence", "X", ""),
    (0x00380500, "PatientState", "X", "desc chars=C"),
    (0x00384000, "VisitComments", "X", "desc"),
    (0x003A0310, "MultiplexGroupUID", "U", "uids"),
    (0x003A0314, "ImpedanceMeasurementDateTime", "D", "dates"),
    (0x003A0329, "WaveformFilterDescription", "X", "desc"),
    (0x003A032B, "FilterLookupTableDescription", "X", "desc"),
    (0x00400001, "ScheduledStationAETitle", "X", "device"),
    (0x00400002, "ScheduledProcedureStepStartDate", "X", "dates"),
    (0x00400003, "ScheduledProcedureStepStartTime", "X", "dates"),
    (0x00400004, "ScheduledProcedureStepEndDate", "X", "dates"),
    (0x00400005, "ScheduledProcedureStepEndTime", "X", "dates"),
    (0x00400006, "ScheduledPerformingPhysicianName", "X", ""),
    (0x00400007, "ScheduledProcedureStepDescription", "X", "desc"),
    (0x00400009, "ScheduledProcedureStepID", "X", ""),
    (0x0040000B, "ScheduledPerformingPhysicianIdentificationSequence", "X", ""),
    (0x00400010, "ScheduledStationName", "X", "device"),
    (0x00400011, "ScheduledProcedureStepLocation", "X", "device"),
    (0x00400012, "PreMedication", "X", "chars=C"),
    (0x00400241, "PerformedStationAETitle", "X", "device"),
    (0x00400242, "PerformedStationName", "X", "device"),
    (0x00400243, "PerformedLocation", "X", ""),
    (0x00400244, "PerformedProcedureStepStartDate", "X", "dates"),
    (0x00400245, "PerformedProcedureStepStartTime", "X", "dates"),
    (0x00400250, "PerformedProcedureStepEndDate", "X", "dates"),
    (0x00400251, "PerformedProcedureStepEndTime", "X", "dates"),
    (0x00400253, "PerformedProcedureStepID", "X", ""),
    (0x00400254, "PerformedProcedureStepDescription", "X", "desc"),
    (0x00400275, "RequestAttributesSequence", "X", "desc"),
    (0x00400280, "CommentsOnThePerformedProcedureStep", "X", "desc"),
    (0x00400310, "CommentsOnRadiationDose", "X", "desc"),
    (0x0040050A, "SpecimenAccessionNumber", "X", ""),
    (0x00400512, "ContainerIdentifier", "D", ""),
    (0x00400513, "IssuerOfTheContainerIdentifierSequence", "Z", ""),
    (0x0040051A, "ContainerDescription", "X", "desc"),
    (0x00400551, "SpecimenIdentifier", "D", ""),
    (0x00400554, "SpecimenUID", "U", "uids"),
    (0x00400555, "AcquisitionContextSequence", "X/Z", ""),
    (0x00400562, "IssuerOfTheSpecimenIdentifierSequence", "Z", ""),
    (0x00400600, "SpecimenShortDescription", "X", "desc"),
    (0x00400602, "SpecimenDetailedDescription", "X", "desc"),
    (0x00400610, "SpecimenPreparationSequence", "Z", ""),
    (0x004006FA, "SlideIdentifier", "X", ""),
    (0x00401001, "RequestedProcedureID", "X", ""),
    (0x00401002, "ReasonForTheRequestedProcedure", "X", "desc"),
    (0x00401004, "PatientTransportArrangements", "X", ""),
    (0x00401005, "RequestedProcedureLocation", "X", ""),
    (0x0040100A, "ReasonForRequestedProcedureCodeSequence", "X", "desc"),
    (0x00401010, "NamesOfIntendedRecipientsOfResults", "X", ""),
    (0x00401011, "IntendedRecipientsOfResultsIdentificationSequence", "X", ""),
    (0x00401101, "PersonIdentificationCodeSequence", "D", ""),
    (0x00401102, "PersonAddress", "X", ""),
    (0x00401103, "PersonTelephoneNumbers", "X", ""),
    (0x00401104, "PersonTelecomInformation", "X", ""),
    (0x00401400, "RequestedProcedureComments", "X", "desc"),
    (0x00402001, "ReasonForTheImagingServiceRequest", "X", "desc"),
    (0x00402004, "IssueDateOfImagingServiceRequest", "X", "dates"),
    (0x00402005, "IssueTimeOfImagingServiceRequest", "X", "dates"),
    (0x00402008, "OrderEnteredBy", "X", ""),
    (0x00402009, "OrderEntererLocation", "X", ""),
    (0x00402010, "OrderCallbackPhoneNumber", "X", ""),
    (0x00402011, "OrderCallbackTelecomInformation", "X", ""),
    (0x00402016, "PlacerOrderNumberImagingServiceRequest", "Z", ""),
    (0x00402017, "FillerOrderNumberImagingServiceRequest", "Z", ""),
    (0x00402400, "ImagingServiceRequestComments", "X", "desc"),
    (0x00403001, "ConfidentialityConstraintOnPatientDataDescription", "X", ""),
    (0x00404005, "ScheduledProcedureStepStartDateTime", "X", "dates"),
    (0x00404008, "ScheduledProcedureStepExpirationDateTime", "X", "dates"),
    (0x00404010, "ScheduledProcedureStepModificationDateTime", "X", "dates"),
    (0x00404011, "ExpectedCompletionDateTime", "X", "dates"),
    (0x00404023, "ReferencedGeneralPurposeScheduledProcedureStepTransactionUID", "U", "uids"),
    (0x00404025, "ScheduledStationNameCodeSequence", "X", "device"),
    (0x00404027, "ScheduledStationGeographicLocationCodeSequence", "X", "device"),
    (0x00404028, "PerformedStationNameCodeSequence", "X", "device"),
    (0x00404030, "PerformedStationGeographicLocationCodeSequence", "X", "device"),
    (0x00404034, "ScheduledHumanPerformersSequence", "X", ""),
    (0x00404035, "ActualHumanPerformersSequence", "X", ""),
    (0x00404036, "HumanPerformerOrganization", "X", ""),
    (0x00404037, "HumanPerformerName", "X", ""),
    (0x00404050, "PerformedProcedureStepStartDateTime", "X", "dates"),
    (0x00404051, "PerformedProcedureStepEndDateTime", "X", "dates"),
    (0x00404052, "ProcedureStepCancellationDateTime", "X", "dates"),
    (0x0040A023, "FindingsGroupRecordingDateTrial", "X", "dates"),
    (0x0040A024, "FindingsGroupRecordingTimeTrial", "X", "dates"),
    (0x0040A027, "VerifyingOrganization", "D", ""),
    (0x0040A030, "VerificationDateTime", "D", "dates"),
    (0x0040A032, "ObservationDateTime", "X/D", "dates"),
    (0x0040A033, "ObservationStartDateTime", "X", "dates"),
    (0x0040A073, "VerifyingObserverSequence", "D", ""),
    (0x0040A075, "VerifyingObserverName", "D", ""),
    (0x0040A078, "AuthorObserverSequence", "X", ""),
    (0x0040A07A, "ParticipantSequence", "X", ""),
    (0x0040A07C, "CustodialOrganizationSequence", "X", ""),
    (0x0040A082, "ParticipationDateTime", "Z", "dates"),
    (0x0040A088, "VerifyingObserverIdentificationCodeSequence", "Z", ""),
    (0x0040A110, "DateOfDocumentOrVerbalTransactionTrial", "X", "dates"),
    (0x0040A112, "TimeOfDocumentCreationOrVerbalTransactionTrial", "X", "dates"),
    (0x0040A120, "DateTime", "D", "dates"),
    (0x0040A121, "Date", "D", "dates"),
    (0x0040A122, "Time", "D", "dates"),
    (0x0040A123, "PersonName", "D", ""),
    (0x0040A124, "UID", "U", ""),
    (0x0040A13A, "ReferencedDateTime", "D", "dates"),
    (0x0040A171, "ObservationUID", "U", "uids"),
    (0x0040A172, "ReferencedObservationUIDTrial", "U", "uids"),
    (0x0040A192, "ObservationDateTrial", "X", "dates"),
    (0x0040A193, "ObservationTimeTrial", "X", "dates"),
    (0x0040A307, "CurrentObserverTrial", "X", ""),
    (0x0040A352, "VerbalSourceTrial", "X", ""),
    (0x0040A353, "AddressTrial", "X", ""),
    (0x0040A354, "TelephoneNumberTrial", "X", ""),
    (0x0040A358, "VerbalSourceIdentifierCodeSequenceTrial", "X", ""),
    (0x0040A402, "ObservationSubjectUIDTrial", "U", "uids"),
    (0x0040A730, "ContentSequence", "D", ""),
    (0x0040DB06, "TemplateVersion", "X", "dates"),
    (0x0040DB07, "TemplateLocalVersion", "X", "dates"),
    (0x0040DB0C, "TemplateExtensionOrganizationUID", "U", "uids"),
    (0x0040DB0D, "TemplateExtensionCreatorUID", "U", "uids"),
    (0x0040E004, "HL7DocumentEffectiveTime", "X", "dates"),
    (0x00420011, "EncapsulatedDocument", "D", ""),
    (0x00440004, "ApprovalStatusDateTime", "X", "dates"),
    (0x0044000B, "ProductExpirationDateTime", "X", "dates"),
    (0x00440010, "SubstanceAdministrationDateTime", "X", "dates"),
    (0x00440104, "AssertionDateTime", "D", "dates"),
    (0x00440105, "AssertionExpirationDateTime", "X", "dates"),
    (0x0050001B, "ContainerComponentID", "X", ""),
    (0x00500020, "DeviceDescription", "X", "device"),
    (0x00500021, "LongDeviceDescription", "X", "desc"),
    (0x00620021, "TrackingUID", "U", "uids"),
    (0x00640003, "SourceFrameOfReferenceUID", "U", "uids"),
    (0x00686226, "EffectiveDateTime", "D", "dates"),
    (0x00686270, "InformationIssueDateTime", "D", "dates"),
    (0x006A0003, "AnnotationGroupUID", "D", "uids"),
    (0x006A0005, "AnnotationGroupLabel", "D", "desc"),
    (0x006A0006, "AnnotationGroupDescription", "X", "desc"),
    (0x00700001, "GraphicAnnotationSequence", "D", ""),
    (0x00700082, "PresentationCreationDate", "X", "dates"),
    (0x00700083, "PresentationCreationTime", "X", "dates"),
    (0x00700084, "ContentCreatorName", "Z/D", ""),
    (0x00700086, "ContentCreatorIdentificationCodeSequence", "X", ""),
    (0x0070031A, "FiducialUID", "U", "uids"),
    (0x00701101, "PresentationDisplayCollectionUID", "U", "uids"),
    (0x00701102, "PresentationSequenceCollectionUID", "U", "uids"),
    (0x0072000A, "HangingProtocolCreationDateTime", "D", "dates"),
    (0x0072005E, "SelectorAEValue", "D", ""),
    (0x0072005F, "SelectorASValue", "D", ""),
    (0x00720061, "SelectorDAValue", "D", "dates"),
    (0x00720063, "SelectorDTValue", "D", "dates"),
    (0x00720065, "SelectorOBValue", "D", ""),
    (0x00720066, "SelectorLOValue", "D", "desc"),
    (0x00720068, "SelectorLTValue", "D", "desc"),
    (0x0072006A, "SelectorPNValue", "D", ""),
    (0x0072006B, "SelectorTMValue", "D", "dates"),
    (0x0072006C, "SelectorSHValue", "D", "desc"),
    (0x0072006D, "SelectorUNValue", "D", ""),
    (0x0072006E, "SelectorSTValue", "D", "desc"),
    (0x00720070, "SelectorUTValue", "D", "desc"),
    (0x00720071, "SelectorURValue", "D", ""),
    (0x00741234, "ReceivingAE", "X", ""),
    (0x00741236, "RequestingAE", "X", ""),
    (0x00880140, "StorageMediaFileSetUID", "U", "uids"),
    (0x00880200, "IconImageSequence", "X", ""),
    (0x00880904, "TopicTitle", "X", ""),
    (0x00880906, "TopicSubject", "X", ""),
    (0x00880910, "TopicAuthor", "X", ""),
    (0x00880912, "TopicKeywords", "X", ""),
    (0x01000420, "SOPAuthorizationDateTime", "X", "dates"),
    (0x04000100, "DigitalSignatureUID", "U", ""),
    (0x04000105, "DigitalSignatureDateTime", "D", "dates"),
    (0x04000115, "CertificateOfSigner", "D", ""),
    (0x04000310, "CertifiedTimestamp", "X", "dates"),
    (0x04000402, "ReferencedDigitalSignatureSequence", "X", ""),
    (0x04000403, "ReferencedSOPInstanceMACSequence", "X", ""),
    (0x04000404, "MAC", "X", ""),
    (0x04000550, "ModifiedAttributesSequence", "X", ""),
    (0x04000551, "NonconformingModifiedAttributesSequence", "X", ""),
    (0x04000552, "NonconformingDataElementValue", "X", ""),
    (0x04000561, "OriginalAttributesSequence", "X", ""),
    (0x04000562, "AttributeModificationDateTime", "D", "dates"),
    (0x04000563, "ModifyingSystem", "D", ""),
    (0x04000564, "SourceOfPreviousValues", "Z", ""),
    (0x04000565, "ReasonForTheAttributeModification", "D", "desc"),
    (0x04000600, "InstanceOriginStatus", "X", ""),
    (0x20300020, "TextString", "X", ""),
    (0x21000040, "CreationDate", "X", "dates"),
    (0x21000050, "CreationTime", "X", "dates"),
    (0x21000070, "Originator", "X", ""),
    (0x21000140, "DestinationAE", "D", ""),
    (0x22000002, "LabelText", "X/Z", "desc"),
    (0x22000005, "BarcodeValue", "X/Z", ""),
    (0x30020121, "PositionAcquisitionTemplateName", "X", "desc"),
    (0x30020123, "PositionAcquisitionTemplateDescription", "X", "desc"),
    (0x30060002, "StructureSetLabel", "D", "desc"),
    (0x30060004, "StructureSetName", "X", "desc"),
    (0x30060006, "StructureSetDescription", "X", "desc"),
    (0x30060008, "StructureSetDate", "Z", "dates"),
    (0x30060009, "StructureSetTime", "Z", "dates"),
    (0x30060024, "ReferencedFrameOfReferenceUID", "U", "uids"),
    (0x30060026, "ROIName", "Z", "desc"),
    (0x30060028, "ROIDescription", "X", "desc"),
    (0x3006002D, "ROIDateTime", "X", "dates"),
    (0x3006002E, "ROIObservationDateTime", "X", "dates"),
    (0x30060038, "ROIGenerationDescription", "X", "desc"),
    (0x3006004D, "ROICreatorSequence", "X", ""),
    (0x3006004E, "ROIInterpreterSequence", "X", ""),
    (0x30060085, "ROIObservationLabel", "X", "desc"),
    (0x30060088, "ROIObservationDescription", "X", "desc"),
    (0x300600A6, "ROIInterpreter", "Z", ""),
    (0x300600C2, "RelatedFrameOfReferenceUID", "U", "uids"),
    (0x30080024, "TreatmentControlPointDate", "D", "dates"),
    (0x30080025, "TreatmentControlPointTime", "D", "dates"),
    (0x30080054, "FirstTreatmentDate", "X/D", "dates"),
    (0x30080056, "MostRecentTreatmentDate", "X/D", "dates"),
    (0x30080105, "SourceSerialNumber", "X/Z", "device"),
    (0x30080162, "SafePositionExitDate", "D", "dates"),
    (0x30080164, "SafePositionExitTime", "D", "dates"),
    (0x30080166, "SafePositionReturnDate", "D", "dates"),
    (0x30080168, "SafePositionReturnTime", "D", "dates"),
    (0x30080250, "TreatmentDate", "X/D", "dates"),
    (0x30080251, "TreatmentTime", "X/D", "dates"),
    (0x300A0002, "RTPlanLabel", "D", "desc"),
    (0x300A0003, "RTPlanName", "X", "desc"),
    (0x300A0004, "RTPlanDescription", "X", "desc"),
    (0x300A0006, "RTPlanDate", "X/D", "dates"),
    (0x300A0007, "RTPlanTime", "X/D", "dates"),
    (0x300A000B, "TreatmentSites", "X", "desc"),
    (0x300A000E, "PrescriptionDescription", "X", "desc"),
    (0x300A0013, "DoseReferenceUID", "U", "uids"),
    (0x300A0016, "DoseReferenceDescription", "X", "desc"),
    (0x300A0054, "TableTopPositionAlignmentUID", "U", "uids"),
    (0x300A0072, "FractionGroupDescription", "X", "desc"),
    (0x300A0083, "ReferencedDoseReferenceUID", "U", "uids"),
    (0x300A00B2, "TreatmentMachineName", "X/Z", "device"),
    (0x300A00C3, "BeamDescription", "X", "desc"),
    (0x300A00DD, "BolusDescription", "X", "desc"),
    (0x300A0196, "FixationDeviceDescription", "X", "desc"),
    (0x300A01A6, "ShieldingDeviceDescription", "X", "desc"),
    (0x300A01B2, "SetupTechniqueDescription", "X", "desc"),
    (0x300A0216, "SourceManufacturer", "X", "device"),
    (0x300A022C, "SourceStrengthReferenceDate", "D", "dates"),
    (0x300A022E, "SourceStrengthReferenceTime", "D", "dates"),
    (0x300A02EB, "CompensatorDescription", "X", "desc"),
    (0x300A0608, "TreatmentPositionGroupLabel", "D", "desc"),
    (0x300A0609, "TreatmentPositionGroupUID", "U", "uids"),
    (0x300A0611, "RTAccessoryHolderSlotID", "Z", ""),
    (0x300A0615, "RTAccessoryDeviceSlotID", "Z", ""),
    (0x300A0619, "RadiationDoseIdentificationLabel", "D", "desc"),
    (0x300A0623, "RadiationDoseInVivoMeasurementLabel", "D", "desc"),
    (0x300A062A, "RTToleranceSetLabel", "D", "desc"),
    (0x300A0650, "PatientSetupUID", "U", "uids"),
    (0x300A0676, "EquipmentFrameOfReferenceDescription", "X", "desc"),
    (0x300A067C, "RadiationGenerationModeLabel", "D", "desc"),
    (0x300A067D, "RadiationGenerationModeDescription", "Z", "desc"),
    (0x300A0700, "TreatmentSessionUID", "U", "uids"),
    (0x300A0734, "TreatmentToleranceViolationDescription", "D", "desc"),
    (0x300A0736, "TreatmentToleranceViolationDateTime", "D", "dates"),
    (0x300A073A, "RecordedRTControlPointDateTime", "D", "dates"),
    (0x300A0741, "InterlockDateTime", "D", "dates"),
    (0x300A0742, "InterlockDescription", "D", "desc"),
    (0x300A0760, "OverrideDateTime", "D", "dates"),
    (0x300A0783, "InterlockOriginDescription", "D", "desc"),
    (0x300A0785, "ReferencedTreatmentPositionGroupUID", "U", "uids"),
    (0x300A078E, "PatientTreatmentPreparationProcedureParameterDescription", "X", "desc"),
    (0x300A0792, "PatientTreatmentPreparationMethodDescription", "X", "desc"),
    (0x300A0794, "PatientSetupPhotoDescription", "X", "desc"),
    (0x300A079A, "DisplacementReferenceLabel", "X", "desc"),
    (0x300C0113, "ReasonForOmissionDescription", "X", "desc"),
    (0x300C0127, "BeamHoldTransitionDateTime", "D", "dates"),
    (0x300E0004, "ReviewDate", "Z", "dates"),
    (0x300E0005, "ReviewTime", "Z", "dates"),
    (0x300E0008, "ReviewerName", "X/Z", ""),
    (0x30100006, "ConceptualVolumeUID", "U", "uids"),
    (0x3010000B, "ReferencedConceptualVolumeUID", "U", "uids"),
    (0x3010000F, "ConceptualVolumeCombinationDescription", "Z", "desc"),
    (0x30100013, "ConstituentConceptualVolumeUID", "U", "uids"),
    (0x30100015, "SourceConceptualVolumeUID", "U", "uids"),
    (0x30100017, "ConceptualVolumeDescription", "Z", "desc"),
    (0x3010001B, "DeviceAlternateIdentifier", "Z", ""),
    (0x3010002D, "DeviceLabel", "D", "device"),
    (0x30100031, "ReferencedFiducialsUID", "U", "uids"),
    (0x30100033, "UserContentLabel", "D", "desc"),
    (0x30100034, "UserContentLongLabel", "D", "desc"),
    (0x30100035, "EntityLabel", "D", "desc"),
    (0x30100036, "EntityName", "X", "desc"),
    (0x30100037, "EntityDescription", "X", "desc"),
    (0x30100038, "EntityLongLabel", "D", "desc"),
    (0x3010003B, "RTTreatmentPhaseUID", "U", "uids"),
    (0x30100043, "ManufacturerDeviceIdentifier", "Z", "device"),
    (0x3010004C, "IntendedPhaseStartDate", "X/D", "dates"),
    (0x3010004D, "IntendedPhaseEndDate", "X/D", "dates"),
    (0x30100054, "RTPrescriptionLabel", "D", "desc"),
    (0x30100056, "RTTreatmentApproachLabel", "X/D", "desc"),
    (0x3010005A, "RTPhysicianIntentNarrative", "Z", "desc"),
    (0x3010005C, "ReasonForSuperseding", "Z", "desc"),
    (0x30100061, "PriorTreatmentDoseDescription", "X", "desc"),
    (0x3010006E, "DosimetricObjectiveUID", "U", "uids"),
    (0x3010006F, "ReferencedDosimetricObjectiveUID", "U", "uids"),
    (0x30100077, "TreatmentSite", "X/D", "desc"),
    (0x3010007A, "TreatmentTechniqueNotes", "Z", "desc"),
    (0x3010007B, "PrescriptionNotes", "Z", "desc"),
    (0x3010007F, "FractionationNotes", "Z", "desc"),
    (0x30100081, "PrescriptionNotesSequence", "Z", "desc"),
    (0x30100085, "IntendedFractionStartTime", "X", "dates"),
    (0x40000010, "Arbitrary", "X", ""),
    (0x40004000, "TextComments", "X", ""),
    (0x40080040, "ResultsID", "X", ""),
    (0x40080042, "ResultsIDIssuer", "X", ""),
    (0x40080100, "InterpretationRecordedDate", "X", "dates"),
    (0x40080101, "InterpretationRecordedTime", "X", "dates"),
    (0x40080102, "InterpretationRecorder", "X", ""),
    (0x40080108, "InterpretationTranscriptionDate", "X", "dates"),
    (0x40080109, "InterpretationTranscriptionTime", "X", "dates"),
    (0x4008010A, "InterpretationTranscriber", "X", ""),
    (0x4008010B, "InterpretationText", "X", "desc"),
    (0x4008010C, "InterpretationAuthor", "X", ""),
    (0x40080111, "InterpretationApproverSequence", "X", ""),
    (0x40080112, "InterpretationApprovalDate", "X", "dates"),
    (0x40080113, "InterpretationApprovalTime", "X", "dates"),
    (0x40080114, "PhysicianApprovingInterpretation", "X", ""),
    (0x40080115, "InterpretationDiagnosisDescription", "X", "desc"),
    (0x40080118, "ResultsDistributionListSequence", "X", ""),
    (0x40080119, "DistributionName", "X", ""),
    (0x4008011A, "DistributionAddress", "X", ""),
    (0x40080200, "InterpretationID", "X", ""),
    (0x40080202, "InterpretationIDIssuer", "X", ""),
    (0x40080300, "Impressions", "X", "desc"),
    (0x40084000, "ResultsComments", "X", "desc"),
    (0xFFFAFFFA, "DigitalSignaturesSequence", "X", ""),
    (0xFFFCFFFC, "DataSetTrailingPadding", "X", ""),
)

_OPTION_WORDS = frozenset({"uids", "dates", "dates=K", "desc", "device", "chars", "chars=C"})


def _build(rows: tuple[tuple[int, str, str, str], ...]) -> dict[int, ProfileRow]:
    table: dict[int, ProfileRow] = {}
    for tag, keyword, basic, options in rows:
        words = options.split()
        if basic not in BASIC_CODES or not _OPTION_WORDS.issuperset(words) or tag in table:
            raise ValueError(f"bad Table E.1-1 row {tag:08X} {keyword}: fix it in _ROWS")
        dates = "K" if "dates=K" in words else "C" if "dates" in words else None
        name = _NAME_FIXES.get(tag) or dictionary_description(tag)
        chars = "C" if "chars=C" in words else "K" if "chars" in words else None
        table[tag] = ProfileRow(
            tag,
            keyword,
            name,
            basic,
            "uids" in words,
            dates,
            "desc" in words,
            "device" in words,
            chars,
        )
    return table


BASIC_PROFILE: dict[int, ProfileRow] = _build(_ROWS)
"""Table E.1-1 by tag, without its repeating-group and private-attribute rows."""


def is_private(tag: int) -> bool:
    """True for a private attribute (odd group), which the Basic Profile removes."""
    return bool(tag >> 16 & 1)


def row_for(tag: int) -> ProfileRow | None:
    """The table's row for ``tag``, repeating groups (50xx, 60xx) included; None if it has none.

    None covers both attributes the profile keeps as they are and private attributes: check
    :func:`is_private` for those.
    """
    row = BASIC_PROFILE.get(tag) or SUPPLEMENT.get(tag)
    if row is not None or is_private(tag):
        return row
    for group in REPEATING_GROUPS:
        if group.matches(tag):
            return group.row(tag)
    return None


def _vr(tag: int) -> str:
    try:
        return str(dictionary_VR(tag))
    except KeyError:
        return ""


def effective_action(
    row: ProfileRow,
    *,
    retain_uids: bool = False,
    retain_dates: bool = False,
    clean_descriptors: bool = False,
    retain_full_dates: bool = False,
    retain_device_identity: bool = False,
    retain_patient_characteristics: bool = False,
) -> Action:
    """The one action to apply to ``row``'s attribute under the given options.

    An option column wins when its option is on and the column is not empty, checked in this
    order (a ``K`` of any option in force keeps the value):

    - *retain UIDs*, *retain device identity*: ``K`` keeps the value;
    - *retain full dates* (Retain Longitudinal Temporal Information with Full Dates): every
      row whose Modified Dates column is not empty is kept as it is;
    - *retain dates* (Retain Longitudinal Temporal Information with Modified Dates): ``C`` on
      a date (VR DA or DT) shifts it by the patient's offset (:attr:`Action.SHIFT`), on a time
      (TM) keeps it (a whole-day shift leaves times as they were), on anything else cleans it;
      ``K`` keeps it;
    - *retain patient characteristics*: ``K`` keeps the value, ``C`` cleans it;
    - *clean descriptors*: ``C`` cleans the value.

    Otherwise the Basic Profile code decides. A simple code is itself; of a combined code the
    more protective choice is taken: ``Z/D`` gets a dummy value (valid where the attribute
    is Type 1), ``X/Z``, ``X/D`` and ``X/Z/D`` remove,
    and ``X/Z/U*`` replaces a UID (VR UI) and removes anything else (a sequence).
    """
    if (retain_uids and row.retain_uids) or (retain_device_identity and row.retain_device):
        return Action.KEEP
    if retain_full_dates and row.retain_dates is not None:
        return Action.KEEP
    if retain_dates and row.retain_dates == "K":
        return Action.KEEP
    if retain_dates and row.retain_dates == "C":
        vr = _vr(row.tag)
        if vr in ("DA", "DT"):
            return Action.SHIFT
        return Action.KEEP if vr == "TM" else Action.CLEAN
    if retain_patient_characteristics and row.retain_characteristics is not None:
        return Action.KEEP if row.retain_characteristics == "K" else Action.CLEAN
    if clean_descriptors and row.clean_descriptors:
        return Action.CLEAN
    if row.basic == "X/Z/U*":
        return Action.UID if _vr(row.tag) == "UI" else Action.REMOVE
    return _SIMPLE[row.basic]


# What the export writes to say how it de-identified (PS3.15 E.1.1, PS3.16 CID 7050).
PATIENT_IDENTITY_REMOVED = "YES"
"""Value of Patient Identity Removed (0012,0062)."""

DEID_METHOD = "DICOM PS3.15 E.1 Basic Application Level Confidentiality Profile"
"""First value of De-identification Method (0012,0063); exactly 64 characters, the LO limit."""

LONGITUDINAL_MODIFIED = "MODIFIED"
"""Value of Longitudinal Temporal Information Modified (0028,0303) when dates are shifted."""

CODING_SCHEME = "DCM"
"""Coding Scheme Designator of the CID 7050 codes."""

OPTION_CODES: dict[str, tuple[str, str]] = {
    "basic": ("113100", "Basic Application Confidentiality Profile"),
    "clean_pixel_data": ("113101", "Clean Pixel Data Option"),
    "clean_recognizable_visual_features": ("113102", "Clean Recognizable Visual Features Option"),
    "clean_graphics": ("113103", "Clean Graphics Option"),
    "clean_structured_content": ("113104", "Clean Structured Content Option"),
    "clean_descriptors": ("113105", "Clean Descriptors Option"),
    "retain_full_dates": ("113106", "Retain Longitudinal Temporal Information Full Dates Option"),
    "retain_dates": ("113107", "Retain Longitudinal Temporal Information Modified Dates Option"),
    "retain_patient_characteristics": ("113108", "Retain Patient Characteristics Option"),
    "retain_device_identity": ("113109", "Retain Device Identity Option"),
    "retain_uids": ("113110", "Retain UIDs Option"),
    "retain_safe_private": ("113111", "Retain Safe Private Option"),
    "retain_institution_identity": ("113112", "Retain Institution Identity Option"),
}
"""CID 7050 (De-identification Method) by option: (code value, code meaning), scheme ``DCM``.

``basic`` is the profile itself. The portal implements ``retain_dates`` (the Modified Dates
option), ``retain_full_dates``, ``retain_uids``, ``retain_device_identity``,
``retain_patient_characteristics``, ``retain_safe_private`` (a data manager's reviewed list of
private attributes) and ``clean_descriptors``; the others are listed for completeness.
"""
