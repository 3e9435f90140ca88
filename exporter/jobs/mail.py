"""Notification e-mail. A mail that cannot be sent is logged and never fails an export."""

from __future__ import annotations

import logging
import smtplib
import ssl
from email.message import EmailMessage

from humanize import naturalsize

from exporter.config import Settings
from exporter.schemas import ExportView, ReleaseView

log = logging.getLogger(__name__)


def export_message(settings: Settings, export: ExportView, to: str) -> EmailMessage:
    """The message telling the creator that an export completed or failed."""
    link = f"{settings.portal_url.rstrip('/')}/exports?export={export.id}"
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    if export.status == "completed":
        msg["Subject"] = f"Export {export.name} is ready"
        size = naturalsize(export.archive_bytes or 0, binary=True)
        body = (
            f"Your export {export.name!r} of project {export.project} is ready.\n\n"
            f"Patients: {export.patient_count}\nFiles: {export.file_count}\nSize: {size}\n"
            f"Available until: {export.expires_at:%Y-%m-%d %H:%M} UTC\n\n"
            f"Download it from the export page: {link}\n"
        )
    else:
        msg["Subject"] = f"Export {export.name} {export.status}"
        body = (
            f"Your export {export.name!r} of project {export.project} has {export.status}.\n\n"
            f"Reason: {export.error_message or 'unknown'}\n\n"
            f"Details and a retry are on the export page: {link}\n"
        )
    msg.set_content(body)
    return msg


def release_message(settings: Settings, release: ReleaseView, to: str) -> EmailMessage:
    """The message telling the creator that a release completed or failed."""
    link = f"{settings.portal_url.rstrip('/')}/releases?release={release.id}"
    msg = EmailMessage()
    msg["From"] = settings.mail_from
    msg["To"] = to
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in release.counts.items())
    if release.status == "completed":
        msg["Subject"] = f"Release {release.name} is done"
        body = (
            f"Your release {release.name!r} of project {release.project} into "
            f"{release.destination} is done.\n\nPatients: {release.patient_count}\n"
            f"Files: {counts or 'none'}\n\nThe log is on the release page: {link}\n"
        )
    else:
        msg["Subject"] = f"Release {release.name} {release.status}"
        body = (
            f"Your release {release.name!r} of project {release.project} into "
            f"{release.destination} has {release.status}.\n\n"
            f"Reason: {release.error_message or 'unknown'}\n\n"
            "Files released before it stopped are whole and registered; running the same "
            f"release again skips them. Details are on the release page: {link}\n"
        )
    msg.set_content(body)
    return msg


def send(settings: Settings, msg: EmailMessage) -> bool:
    """Send ``msg`` with the SMTP settings; False (and a log line) when it could not be sent."""
    if not settings.smtp_host:
        log.info("no SMTP_HOST set: not sending %r to %s", msg["Subject"], msg["To"])
        return False
    try:
        context = ssl.create_default_context()
        smtp: smtplib.SMTP
        if settings.smtp_security == "tls":
            smtp = smtplib.SMTP_SSL(
                settings.smtp_host, settings.smtp_port, timeout=30, context=context
            )
        else:
            smtp = smtplib.SMTP(settings.smtp_host, settings.smtp_port, timeout=30)
        with smtp:
            if settings.smtp_security == "starttls":
                smtp.starttls(context=context)
            if settings.smtp_user:
                smtp.login(settings.smtp_user, settings.smtp_password)
            smtp.send_message(msg)
        return True
    except (OSError, smtplib.SMTPException) as exc:
        log.warning("could not send %r to %s: %s", msg["Subject"], msg["To"], exc)
        return False
