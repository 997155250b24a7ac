"""A photo's facts for search filters, read with Pillow from the image indexing has already opened.

    meta = read_meta(img)        # img: a PIL image straight from Image.open (its header read; pixels not needed)
    meta.taken                   # EXIF DateTimeOriginal as Unix seconds, or None (the file's mtime stands in)
    meta.camera                  # "Canon EOS 5D", from EXIF Make and Model ("" when absent)

Nothing here decodes pixels or opens a file: the EXIF block and the size come from the header Pillow parsed when the
indexer opened the file for its one decode. Width and height are as the photo is shown (EXIF orientation applied:
orientations 5-8 swap them), from the header, so a JPEG decoded at a reduced DCT scale still reports its full size.

Dates: EXIF DateTimeOriginal is the camera's clock with no time zone unless OffsetTimeOriginal says one; a date
without an offset is stored as if it were UTC (so "2021:06:01 09:30:00" filters and shows as 2021-06-01 09:30), one
with an offset as the true instant. A file without the tag is dated by its modification time (UTC).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from PIL import Image

EXIF_IFD = 0x8769  # pointer to the Exif sub-IFD, where DateTimeOriginal lives
TAG_MAKE, TAG_MODEL, TAG_ORIENTATION = 0x010F, 0x0110, 0x0112  # IFD0
TAG_DATETIME_ORIGINAL, TAG_OFFSET_ORIGINAL = 0x9003, 0x9011  # Exif IFD
MAX_TEXT = 64  # longest make/model kept (EXIF strings are fixed-size fields, sometimes filled with junk)
_DATE = re.compile(r"^(\d{4})[:\-](\d{2})[:\-](\d{2})[ T](\d{2}):(\d{2}):(\d{2})")
_OFFSET = re.compile(r"^([+-])(\d{2}):(\d{2})$")


@dataclass(frozen=True)
class PhotoMeta:
    """What the filters and the page's detail view show about one photo."""

    width: int  # pixels across as shown (EXIF orientation applied)
    height: int  # pixels down as shown
    orientation: int = 1  # EXIF orientation 1-8 (1: as stored)
    taken: int | None = None  # EXIF DateTimeOriginal, Unix seconds (see the module doc); None: use the file's mtime
    make: str = ""  # EXIF Make, trimmed
    model: str = ""  # EXIF Model, trimmed

    @property
    def camera(self) -> str:
        """Make and model as one name, without the make twice ("Canon" + "Canon EOS 5D" -> "Canon EOS 5D")."""
        return camera_name(self.make, self.model)


def camera_name(make: str, model: str) -> str:
    if not model:
        return make
    first = make.split(" ")[0].lower() if make else ""
    if not make or (first and model.lower().startswith(first)):
        return model
    return f"{make} {model}"


def _text(value: object) -> str:
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not isinstance(value, str):
        return ""
    clean = "".join(c for c in value.replace("\x00", " ") if c.isprintable()).strip()
    return " ".join(clean.split())[:MAX_TEXT]


def parse_exif_date(value: object, offset: object = None) -> int | None:
    """EXIF "YYYY:MM:DD HH:MM:SS" (and an optional "+HH:MM" offset) -> Unix seconds; None when absent or invalid
    (cameras write "0000:00:00 00:00:00" or blanks when their clock was never set)."""
    m = _DATE.match(_text(value))
    if not m:
        return None
    year, month, day, hour, minute, second = (int(g) for g in m.groups())
    try:
        when = dt.datetime(year, month, day, hour, minute, second, tzinfo=dt.timezone.utc)
    except ValueError:
        return None
    o = _OFFSET.match(_text(offset))
    if o:
        sign = 1 if o.group(1) == "+" else -1
        when -= sign * dt.timedelta(hours=int(o.group(2)), minutes=int(o.group(3)))
    return int(when.timestamp())


def read_meta(img: Image.Image) -> PhotoMeta:
    """The facts of an opened image (Image.open's result, before any draft or transpose changed its size).
    A damaged EXIF block gives what could be read, never an error: metadata must not cost a photo its place."""
    width, height = img.size
    orientation, taken, make, model = 1, None, "", ""
    try:
        exif = img.getexif()
    except Exception:  # noqa: BLE001 - Pillow raises many kinds on malformed EXIF; the photo stays indexable
        exif = None
    if exif:
        raw = exif.get(TAG_ORIENTATION, 1)
        orientation = raw if isinstance(raw, int) and 1 <= raw <= 8 else 1
        make, model = _text(exif.get(TAG_MAKE)), _text(exif.get(TAG_MODEL))
        try:
            sub = exif.get_ifd(EXIF_IFD)
        except Exception:  # noqa: BLE001 - as above
            sub = {}
        taken = parse_exif_date(sub.get(TAG_DATETIME_ORIGINAL), sub.get(TAG_OFFSET_ORIGINAL))
    if orientation >= 5:  # transposed or rotated by 90/270 degrees: shown the other way round
        width, height = height, width
    return PhotoMeta(width=width, height=height, orientation=orientation, taken=taken, make=make, model=model)
