"""The files a program left under /work, as a caller gets them back. Pure."""

from __future__ import annotations

import hashlib
import mimetypes

from agent_sandbox.config import ResultSettings
from agent_sandbox.engine.spec import FilesOut
from agent_sandbox.filenames import shown_name
from agent_sandbox.models import Artifact, ArtifactPreview

IMAGE_TYPES = frozenset({"image/png", "image/jpeg", "image/gif", "image/webp"})
_SIGNATURES = (
    (b"\x89PNG\r\n\x1a\n", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF87a", "image/gif"),
    (b"GIF89a", "image/gif"),
)


def collect_artifacts(files: FilesOut | None, settings: ResultSettings) -> tuple[list[Artifact], list[str]]:
    """The artifacts (sent ones with their bytes, then those left out, each with why) and a note
    on what was left out, built from those reasons."""
    if files is None:
        return [], []
    if files.refused is not None:
        return [], [f"No file came back: {files.refused}."]
    artifacts = [
        _artifact(shown_name(path), data, settings, entry.preview)
        for entry, (path, data) in zip(files.files, files.contents(), strict=True)
    ]
    artifacts += [
        Artifact(
            path=shown_name(entry.path),
            size=entry.size,
            mime_type=mime_type(entry.path, None),
            sha256=None,
            omitted=entry.reason,
        )
        for entry in files.omitted
    ]
    left_out = files.changed - len(files.files)
    if not left_out:
        return artifacts, []
    listed = len(files.omitted)
    unlisted = f" ({listed} of them are listed in artifacts)" if listed < left_out else ""
    were = "was" if left_out == 1 else "were"
    kinds = {entry.kind for entry in files.omitted} or {"cap"}
    advice = {
        "cap": f"at most {settings.max_artifacts} files and {settings.max_artifact_kib} KiB come back: "
        "write fewer or smaller files, e.g. one archive or a summary",
        "unreadable": "some could not be read (each says why in artifacts)",
        "unreachable": "some folders could not be looked into (each says why in artifacts): "
        "keep paths short and folders listable",
    }
    reasons = "; ".join(advice[kind] for kind in ("unreadable", "unreachable", "cap") if kind in kinds)
    note = (
        f"The program created or changed {files.changed} files under /work; {len(files.files)} "
        f"came back and {left_out} {were} left out{unlisted}: {reasons}."
    )
    return artifacts, [note]


def mime_type(path: str, data: bytes | None) -> str:
    """The file's type: an image only if its first bytes say so (a model rejects a broken one),
    else from its name; text if it decodes. ``data`` None: a file left out, typed by name only."""
    for signature, kind in _SIGNATURES:
        if data and data.startswith(signature):
            return kind
    if data and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    guessed, _ = mimetypes.guess_type(path, strict=False)
    if guessed and (guessed not in IMAGE_TYPES or data is None):
        return guessed
    if data and _text(data) is not None:
        return "text/plain"
    return "application/octet-stream"


def _artifact(path: str, data: bytes, settings: ResultSettings, preview: ArtifactPreview | None) -> Artifact:
    kind = mime_type(path, data)
    inline = None
    if kind not in IMAGE_TYPES and len(data) <= settings.max_inline_text_kib * 1024:
        inline = _text(data)
    return Artifact(
        path=path,
        size=len(data),
        mime_type=kind,
        sha256=hashlib.sha256(data).hexdigest(),
        content=inline,
        data=data,
        preview=preview,
    )


def _text(data: bytes) -> str | None:
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text if "\x00" not in text else None
