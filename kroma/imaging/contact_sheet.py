"""A contact sheet of a run's candidates: one row per job, a thumbnail per candidate with its
label, status and rank, the winner framed in green, rejected candidates crossed out in red."""

from __future__ import annotations

import io
from typing import Any

from PIL import Image, ImageDraw, ImageFont

THUMB_HEIGHT = 256
THUMB_MAX_WIDTH = 384
PLACEHOLDER_SIZE = (171, THUMB_HEIGHT)  # the 2:3 portrait of the default 1024x1536 size
MARGIN = 20
GAP = 16
BORDER = 8

BACKGROUND = (246, 246, 243)
INK = (28, 28, 28)
MUTED = (105, 105, 105)
RULE = (210, 210, 205)
GREEN = (22, 160, 60)
RED = (215, 30, 30)
PLACEHOLDER = (190, 190, 190)

_Font = ImageFont.FreeTypeFont | ImageFont.ImageFont


def _font(size: int) -> _Font:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow built without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _thumbnail(data: bytes | None) -> Image.Image | None:
    """The image scaled to THUMB_HEIGHT (aspect kept, width capped), on white; None when there is
    no image or it does not decode."""
    if data is None:
        return None
    try:
        with Image.open(io.BytesIO(data)) as opened:
            opened.draft("RGB", (THUMB_MAX_WIDTH, THUMB_HEIGHT))
            image = opened.convert("RGBA")
    except Exception:
        return None
    width, height = image.size
    if width == 0 or height == 0:
        return None
    scale = min(THUMB_HEIGHT / height, THUMB_MAX_WIDTH / width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0)
    paper = Image.new("RGBA", size, (255, 255, 255, 255))
    return Image.alpha_composite(paper, image).convert("RGB")


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}".rstrip("0").rstrip(".") or "0"
    return "-" if value is None else str(value)


def _labels(candidate: dict[str, Any]) -> list[tuple[str, tuple[int, int, int]]]:
    status = str(candidate.get("status") or "unknown")
    rank = candidate.get("rank") or {}
    colour = INK if status == "done" else RED
    lines = [(f"{candidate.get('label') or '?'}  {status}", colour)]
    if rank:
        lines.append(
            (
                f"hard {_fmt(rank.get('hard_failures'))}  soft {_fmt(rank.get('soft_warnings'))}"
                f"  exceed {_fmt(rank.get('avg_chroma_exceed'))}",
                MUTED,
            )
        )
    return lines


class _Cell:
    """One candidate's thumbnail (or placeholder) and its labels, measured before drawing."""

    def __init__(self, candidate: dict[str, Any]) -> None:
        self.candidate = candidate
        self.thumb = _thumbnail(candidate.get("image"))
        self.size = self.thumb.size if self.thumb is not None else PLACEHOLDER_SIZE
        self.labels = _labels(candidate)
        self.missing_reason = "no image" if candidate.get("image") is None else "unreadable"


class _Sheet:
    def __init__(self) -> None:
        self.title = _font(20)
        self.label = _font(14)
        self.tag = _font(15)
        self.line_height = 19

    def text_width(self, text: str, font: _Font) -> int:
        left, _, right, _ = font.getbbox(text)
        return int(right - left)

    def cell_width(self, cell: _Cell) -> int:
        texts = max((self.text_width(text, self.label) for text, _ in cell.labels), default=0)
        return max(cell.size[0] + 2 * BORDER, texts)

    def row_height(self, cells: list[_Cell]) -> int:
        labels = max((len(cell.labels) for cell in cells), default=1)
        return 34 + THUMB_HEIGHT + 2 * BORDER + 6 + labels * self.line_height

    def draw_cell(self, draw: ImageDraw.ImageDraw, canvas: Image.Image, cell: _Cell, x: int, y: int) -> None:
        width, height = cell.size
        left, top = x + BORDER, y + BORDER
        box = (left, top, left + width - 1, top + height - 1)
        if cell.thumb is not None:
            canvas.paste(cell.thumb, (left, top))
        else:
            draw.rectangle(box, fill=PLACEHOLDER)
        status = cell.candidate.get("status")
        if cell.candidate.get("winner"):
            outer = (x, y, x + width + 2 * BORDER - 1, y + height + 2 * BORDER - 1)
            draw.rectangle(outer, outline=GREEN, width=BORDER)
            tag_w = self.text_width("WINNER", self.tag) + 14
            draw.rectangle((left, top, left + tag_w, top + 24), fill=GREEN)
            draw.text((left + 7, top + 3), "WINNER", font=self.tag, fill=(255, 255, 255))
        elif status != "done":
            stroke = max(3, width // 40)
            draw.line((box[0], box[1], box[2], box[3]), fill=RED, width=stroke)
            draw.line((box[0], box[3], box[2], box[1]), fill=RED, width=stroke)
            draw.rectangle(box, outline=RED, width=2)
        else:  # a hairline just outside the picture
            draw.rectangle((box[0] - 1, box[1] - 1, box[2] + 1, box[3] + 1), outline=RULE, width=1)
        if cell.thumb is None:  # the placeholder's caption, on a plate so a red X does not hide it
            text = cell.missing_reason
            tw = self.text_width(text, self.label)
            cx, cy = left + (width - tw) // 2, top + height // 2 - 9
            draw.rectangle((cx - 6, cy - 3, cx + tw + 6, cy + 20), fill=(255, 255, 255), outline=MUTED)
            draw.text((cx, cy), text, font=self.label, fill=INK)
        text_y = y + THUMB_HEIGHT + 2 * BORDER + 4
        for text, colour in cell.labels:
            draw.text((x + 2, text_y), text, font=self.label, fill=colour)
            text_y += self.line_height


def _job_title(job: dict[str, Any]) -> str:
    candidates = job.get("candidates") or []
    winner = next((c for c in candidates if c.get("winner")), None)
    outcome = f"winner {winner.get('label')}" if winner is not None else "no winner"
    return f"{job.get('job_key') or '?'}   ({len(candidates)} candidates, {outcome})"


def contact_sheet(jobs: list[dict[str, Any]]) -> bytes:
    """PNG bytes of the sheet: for each job (`{job_key, candidates: [{label, image, status,
    winner, rank}]}`) a titled row of thumbnails at most 256 px tall (aspect kept), each labelled
    with its label, status and rank; the winner outlined in thick green with a WINNER tag, every
    candidate whose status is not `done` crossed out with a red X, a missing or unreadable image
    drawn as a grey placeholder. Deterministic for the same input."""
    sheet = _Sheet()
    rows = [[_Cell(candidate) for candidate in job.get("candidates") or []] for job in jobs]
    widths = [sum(sheet.cell_width(cell) + GAP for cell in row) - GAP if row else 240 for row in rows]
    titles = [_job_title(job) for job in jobs]
    title_widths = [sheet.text_width(title, sheet.title) for title in titles]
    width = 2 * MARGIN + max([*widths, *title_widths, 240])
    heights = [sheet.row_height(row) for row in rows]
    height = 2 * MARGIN + sum(heights) + GAP * max(0, len(rows) - 1) if rows else 2 * MARGIN + 40
    canvas = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if not rows:
        draw.text((MARGIN, MARGIN), "no jobs", font=sheet.title, fill=MUTED)
    y = MARGIN
    for index, (row, title, row_height) in enumerate(zip(rows, titles, heights, strict=True)):
        if index:
            draw.line((MARGIN, y - GAP // 2, width - MARGIN, y - GAP // 2), fill=RULE, width=1)
        draw.text((MARGIN, y), title, font=sheet.title, fill=INK)
        x, cell_y = MARGIN, y + 34
        if not row:
            draw.text((MARGIN, cell_y + 8), "no candidates", font=sheet.label, fill=MUTED)
        for cell in row:
            sheet.draw_cell(draw, canvas, cell, x, cell_y)
            x += sheet.cell_width(cell) + GAP
        y += row_height + GAP
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG", compress_level=6)
    return buffer.getvalue()
