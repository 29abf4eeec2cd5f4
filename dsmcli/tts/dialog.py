"""Dialog scripts for ``dsm dialog``: speaker-tagged lines → the alternating turns the TTS takes.

Accepted lines (one speaker tag per line, at its start)::

    [S1] Hello there.            [NAME] text          [NAME]: text          NAME: text

A line without a tag continues the current speaker's turn; blank lines are ignored. Consecutive lines of the same
speaker form one turn. Speakers are numbered by first appearance: the first is MAIN (voice 1), the second OTHER
(voice 2). A ``NAME:`` tag is at most three words starting with a letter and followed by whitespace; a
continuation line that happens to look like one (``Note: …``) is read as a speaker, so prefer ``[NAME]`` tags
when the text itself has such lines.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from dsmcli.errors import InputError

# The TTS text stream has two speaker tokens (MAIN / OTHER), so a dialog has at most two voices.
MAX_DIALOG_SPEAKERS = 2
# Speaker name of an untagged script read as a monologue (``require_speakers=False``).
MONOLOGUE_SPEAKER = "S1"

_BRACKET_TAG_RE = re.compile(r"\[([^\[\]]{1,40})\]\s*:?\s*(.*)", re.DOTALL)
_COLON_TAG_RE = re.compile(r"([^\W\d_][\w.'’-]*(?: [\w.'’-]+){0,2})\s*:(?:\s+(.*))?", re.DOTALL)
_TAG_HINT = "start lines with a speaker tag such as `[S1] text`, `[Alice]: text` or `Alice: text`"


@dataclass(frozen=True)
class DialogScript:
    """A parsed dialog: ``turns[i]`` is spoken by ``speakers[i % 2]`` (MAIN first)."""

    speakers: tuple[str, ...]
    turns: tuple[str, ...]

    @property
    def turn_speakers(self) -> tuple[str, ...]:
        return tuple(self.speakers[i % len(self.speakers)] for i in range(len(self.turns)))


def _speaker_tag(line: str) -> tuple[str, str] | None:
    """``(speaker, text)`` when the (stripped) line starts with a speaker tag."""
    for pattern in (_BRACKET_TAG_RE, _COLON_TAG_RE):
        match = pattern.fullmatch(line)
        if match is not None:
            return match.group(1).strip(), (match.group(2) or "").strip()
    return None


def _segments(text: str, require_speakers: bool) -> list[tuple[str, str]]:
    """``(speaker, text)`` per tagged line, with its continuation lines appended."""
    lines = [(number, line.strip()) for number, line in enumerate(text.splitlines(), start=1) if line.strip()]
    tags = [_speaker_tag(line) for _, line in lines]
    if all(tag is None for tag in tags):
        if require_speakers:
            raise InputError(f"the dialog script has no speaker tags: {_TAG_HINT}")
        return [(MONOLOGUE_SPEAKER, " ".join(line for _, line in lines))]
    segments: list[tuple[str, list[str]]] = []
    for (number, line), tag in zip(lines, tags):
        if tag is not None:
            segments.append((tag[0], [tag[1]] if tag[1] else []))
        elif segments:
            segments[-1][1].append(line)
        else:
            raise InputError(f"dialog line {number} comes before the first speaker tag: {_TAG_HINT}")
    return [(speaker, " ".join(parts)) for speaker, parts in segments]


def parse_dialog(text: str, *, require_speakers: bool = True) -> DialogScript:
    """Parse a dialog script (see the module docstring).

    With ``require_speakers=False`` a script without any tag is one MAIN turn (a monologue).
    Raises InputError for an empty script, untagged text where tags are required, or more than two speakers.
    """
    if not text.strip():
        raise InputError("the script is empty")
    speakers: list[str] = []
    turns: list[str] = []
    turn_owner: str | None = None
    for speaker, words in _segments(text, require_speakers):
        if not words:
            continue
        if speaker not in speakers:
            speakers.append(speaker)
        if speaker == turn_owner:
            turns[-1] = f"{turns[-1]} {words}"
        else:
            turns.append(words)
            turn_owner = speaker
    if not turns:
        raise InputError("the script has speaker tags but no text to speak")
    if len(speakers) > MAX_DIALOG_SPEAKERS:
        raise InputError(f"a dialog has at most {MAX_DIALOG_SPEAKERS} speakers, this script has "
                         f"{len(speakers)}: {', '.join(speakers)}")
    return DialogScript(speakers=tuple(speakers), turns=tuple(turns))
