"""The upstream-records importer: a checkout of the NanoGPT speedrun (modded-nanogpt) -> benchmark tasks.

``import_records(repo, out, hints=None)`` writes ``out/nanogpt_speedrun/record_R`` (track 1) and
``out/nanogpt_speedrun_medium/record_R`` (track 2), one task per transition R -> R+1, and returns an
:class:`ImportReport`. See docs/UPSTREAM.md.
"""

from speedrunner.tasks.upstream.importer import TRACKS, ImportReport, Skip, TrackCounts, import_records
from speedrunner.tasks.upstream.logs import ParsedLog, parse_log
from speedrunner.tasks.upstream.readme import Readme, Row, parse_readme

__all__ = ["import_records", "ImportReport", "Skip", "TrackCounts", "TRACKS", "parse_log", "ParsedLog",
           "parse_readme", "Readme", "Row"]
