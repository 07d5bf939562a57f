# Why: the daemon logs to stderr, and under systemd stderr is journald. journald reads a "<N>" syslog
# priority at the start of each line (SyslogLevelPrefix=, on by default), so an administrator can filter
# with `journalctl -p warning`; on a terminal or in a file the lines stay as they always were. stderr is
# journald when $JOURNAL_STREAM names its device and inode (systemd.exec(5)), not merely when it is set:
# a child whose stderr was redirected inherits the variable.
import logging
import os
import sys
from typing import TextIO

JOURNAL_STREAM_ENV = "JOURNAL_STREAM"
# syslog priorities (RFC 5424) of Python's levels
PRIORITIES = ((logging.CRITICAL, 2), (logging.ERROR, 3), (logging.WARNING, 4), (logging.INFO, 6))
DEBUG_PRIORITY = 7


def priority(levelno: int) -> int:
    """The syslog priority (RFC 5424) of a logging level: 2 for CRITICAL down to 7 for DEBUG."""
    return next((p for level, p in PRIORITIES if levelno >= level), DEBUG_PRIORITY)


def stream_is_journal(stream: TextIO, environ: dict[str, str] | None = None) -> bool:
    """True when `stream` is the journald stream systemd connected ($JOURNAL_STREAM is "device:inode")."""
    value = (os.environ if environ is None else environ).get(JOURNAL_STREAM_ENV, "")
    try:
        dev, ino = (int(x) for x in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError):
        return False
    return (st.st_dev, st.st_ino) == (dev, ino)


class JournalFormatter(logging.Formatter):
    """Prefix every line of a record with its syslog priority, "<4>" for a warning."""

    def format(self, record: logging.LogRecord) -> str:
        """The formatted record with "<N>" before each of its lines, so journald files a traceback's lines
        under the record's priority too."""
        text = super().format(record)
        prefix = f"<{priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.split("\n"))


def configure(level: int, fmt: str, stream: TextIO | None = None) -> None:
    """logging.basicConfig on `stream` (stderr), with priority prefixes when it is journald."""
    stream = sys.stderr if stream is None else stream
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JournalFormatter(fmt) if stream_is_journal(stream) else logging.Formatter(fmt))
    logging.basicConfig(level=level, handlers=[handler])
