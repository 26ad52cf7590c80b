"""Pillow rendering of the simulator's pictures: readable prompt text on a colourful background.

Everything here is synchronous and CPU-bound: callers run it in a worker thread.
"""

from __future__ import annotations

import hashlib
import io
import random
from functools import cache
from pathlib import Path

from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps, UnidentifiedImageError

Font = ImageFont.FreeTypeFont | ImageFont.ImageFont
RGB = tuple[int, int, int]

MAX_TEXT_CHARS = 360
_FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans-Bold.ttf",
    "/usr/share/fonts/TTF/DejaVuSans-Bold.ttf",
    "/Library/Fonts/Arial Bold.ttf",
    "C:/Windows/Fonts/arialbd.ttf",
)
Image.MAX_IMAGE_PIXELS = 80_000_000  # upscales reach 7680x4320


# -- colours and fonts ---------------------------------------------------------------------------
def _rng(text: str) -> random.Random:
    return random.Random(int.from_bytes(hashlib.sha256(text.encode("utf-8")).digest()[:8], "big"))


def _hsv(h: float, s: float, v: float) -> RGB:
    import colorsys

    r, g, b = colorsys.hsv_to_rgb(h % 1.0, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def palette(text: str, n: int = 4) -> list[RGB]:
    """``n`` harmonious, saturated colours derived from ``text``."""
    rng = _rng(text)
    base = rng.random()
    return [
        _hsv(base + i / n + rng.uniform(-0.06, 0.06), rng.uniform(0.55, 0.9), rng.uniform(0.6, 0.95))
        for i in range(n)
    ]


@cache
def _font_path() -> str | None:
    for candidate in _FONT_CANDIDATES:
        if Path(candidate).is_file():
            return candidate
    return None


@cache
def font(size: int) -> Font:
    path = _font_path()
    if path is not None:
        try:
            return ImageFont.truetype(path, size)
        except OSError:
            pass
    return ImageFont.load_default(size=size)


# -- backgrounds ---------------------------------------------------------------------------------
def background(width: int, height: int, seed_text: str) -> Image.Image:
    """A smooth four-corner gradient with soft shapes, all derived from ``seed_text``."""
    colors = palette(seed_text)
    rng = _rng("shapes:" + seed_text)
    small_w, small_h = _small_size(width, height, 192)
    grad = Image.new("RGB", (2, 2))
    grad.putdata(colors[:4])
    canvas = grad.resize((small_w, small_h), Image.Resampling.BILINEAR, reducing_gap=None)
    overlay = Image.new("RGBA", (small_w, small_h), (0, 0, 0, 0))
    draw = ImageDraw.Draw(overlay)
    for i in range(14):
        color = colors[(i + 1) % len(colors)]
        alpha = rng.randint(60, 150)
        cx, cy = rng.uniform(0, small_w), rng.uniform(0, small_h)
        r = rng.uniform(0.06, 0.28) * max(small_w, small_h)
        box = (cx - r, cy - r, cx + r, cy + r)
        shade = tuple(min(255, int(c * rng.uniform(0.7, 1.3))) for c in color)
        fill = (shade[0], shade[1], shade[2], alpha)
        if i % 3 == 0:
            draw.rectangle(box, fill=fill)
        elif i % 3 == 1:
            draw.ellipse(box, fill=fill)
        else:
            draw.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=fill)
    canvas = Image.alpha_composite(canvas.convert("RGBA"), overlay).filter(ImageFilter.GaussianBlur(1.2))
    return canvas.convert("RGB").resize((width, height), Image.Resampling.BICUBIC)


def _small_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    scale = long_side / max(width, height)
    return max(2, round(width * scale)), max(2, round(height * scale))


# -- text ----------------------------------------------------------------------------------------
def _clip(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MAX_TEXT_CHARS else text[: MAX_TEXT_CHARS - 1].rstrip() + "…"


def _wrap(text: str, fnt: Font, max_width: float) -> list[str]:
    lines: list[str] = []
    line = ""
    for word in text.split(" "):
        while fnt.getlength(word) > max_width and len(word) > 1:  # break very long words
            cut = len(word)
            while cut > 1 and fnt.getlength(word[:cut]) > max_width:
                cut -= 1
            if line:
                lines.append(line)
                line = ""
            lines.append(word[:cut])
            word = word[cut:]
        trial = f"{line} {word}" if line else word
        if fnt.getlength(trial) <= max_width:
            line = trial
        else:
            if line:
                lines.append(line)
            line = word
    if line:
        lines.append(line)
    return lines or [""]


def _fit(text: str, box_w: float, box_h: float, start: int) -> tuple[Font, list[str], int]:
    size = max(start, 10)
    while True:
        fnt = font(size)
        lines = _wrap(text, fnt, box_w)
        line_h = round(size * 1.22)
        if line_h * len(lines) <= box_h or size <= 10:
            return fnt, lines, line_h
        size = max(10, int(size * 0.88))


def draw_text_block(
    img: Image.Image,
    text: str,
    *,
    area: tuple[float, float, float, float],
    start_size: int,
    panel_alpha: int = 110,
) -> None:
    """Draw ``text`` wrapped and centred inside ``area`` (x0, y0, x1, y1) on a translucent panel."""
    text = _clip(text) or "(no prompt)"
    x0, y0, x1, y1 = area
    pad = max(6, round((x1 - x0) * 0.03))
    fnt, lines, line_h = _fit(text, x1 - x0 - 2 * pad, y1 - y0 - 2 * pad, start_size)
    size = line_h / 1.22
    text_w = max(fnt.getlength(line) for line in lines)
    block_h = line_h * len(lines)
    cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    odraw.rounded_rectangle(
        (cx - text_w / 2 - pad, cy - block_h / 2 - pad, cx + text_w / 2 + pad, cy + block_h / 2 + pad),
        radius=pad,
        fill=(0, 0, 0, panel_alpha),
    )
    stroke = max(1, round(size / 14))
    y = cy - block_h / 2
    for line in lines:
        odraw.text(
            (cx, y + line_h / 2),
            line,
            font=fnt,
            fill=(255, 255, 255, 255),
            anchor="mm",
            stroke_width=stroke,
            stroke_fill=(0, 0, 0, 255),
        )
        y += line_h
    base = img.convert("RGBA") if img.mode != "RGBA" else img
    merged = Image.alpha_composite(base, overlay)
    img.paste(merged.convert(img.mode))


def draw_caption(img: Image.Image, caption: str) -> None:
    """A small caption along the bottom edge (model, size, task)."""
    w, h = img.size
    size = max(10, round(min(w, h) / 32))
    fnt = font(size)
    caption = _clip(caption)
    while fnt.getlength(caption) > w * 0.96 and len(caption) > 8:
        caption = caption[:-2]
    overlay = Image.new("RGBA", img.size, (0, 0, 0, 0))
    odraw = ImageDraw.Draw(overlay)
    band = round(size * 1.6)
    odraw.rectangle((0, h - band, w, h), fill=(0, 0, 0, 200))
    odraw.text((w / 2, h - band / 2), caption, font=fnt, fill=(255, 255, 255, 230), anchor="mm")
    base = img.convert("RGBA") if img.mode != "RGBA" else img
    img.paste(Image.alpha_composite(base, overlay).convert(img.mode))


# -- the pictures --------------------------------------------------------------------------------
def render_generated(width: int, height: int, prompt: str, seed_text: str, caption: str) -> Image.Image:
    img = background(width, height, prompt + "\x00" + seed_text)
    margin_x, margin_y = width * 0.07, height * 0.08
    draw_text_block(
        img,
        prompt,
        area=(margin_x, margin_y, width - margin_x, height - margin_y - min(width, height) / 20),
        start_size=max(14, round(min(width, height) / 7)),
    )
    draw_caption(img, caption)
    return img


def placeholder_source(url: str) -> Image.Image:
    """What a non-local source URL "looks like": the simulator never fetches the network."""
    img = background(1024, 1024, "remote:" + url)
    draw_text_block(img, f"remote source image (not fetched): {url}", area=(60, 60, 964, 964), start_size=56)
    return img


def render_edit(
    source: Image.Image, width: int, height: int, prompt: str, seed_text: str, caption: str
) -> Image.Image:
    """The source fitted to the output size, tinted, with the instruction drawn across its lower part."""
    base = ImageOps.fit(source.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    tint = Image.new("RGB", (width, height), palette(prompt + "\x00" + seed_text, 1)[0])
    img = Image.blend(base, tint, 0.3)
    draw_text_block(
        img,
        prompt,
        area=(width * 0.06, height * 0.55, width * 0.94, height * 0.93),
        start_size=max(14, round(min(width, height) / 10)),
        panel_alpha=175,
    )
    draw_caption(img, caption)
    return img


def render_upscale(source: Image.Image, width: int, height: int, caption: str) -> Image.Image:
    img = source.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)
    draw_caption(img, caption)
    return img


def render_cutout(source: Image.Image, width: int, height: int, variant: int = 0) -> Image.Image:
    """The source with its background removed: an elliptical subject on transparency."""
    img = ImageOps.fit(source.convert("RGB"), (width, height), Image.Resampling.LANCZOS).convert("RGBA")
    mask = Image.new("L", (width, height), 0)
    inset = 0.12 + 0.08 * variant
    ImageDraw.Draw(mask).ellipse(
        (width * inset, height * inset, width * (1 - inset), height * (1 - inset)), fill=255
    )
    img.putalpha(mask.filter(ImageFilter.GaussianBlur(max(1, min(width, height) // 200))))
    return img


def render_layer_background(source: Image.Image, width: int, height: int) -> Image.Image:
    base = ImageOps.fit(source.convert("RGB"), (width, height), Image.Resampling.LANCZOS)
    return base.filter(ImageFilter.GaussianBlur(max(2, min(width, height) // 60)))


# -- files ---------------------------------------------------------------------------------------
def encode(img: Image.Image, fmt: str) -> bytes:
    buf = io.BytesIO()
    save(img, buf, fmt)
    return buf.getvalue()


def save(img: Image.Image, target: Path | io.BytesIO, fmt: str) -> None:
    if fmt == "jpeg":
        img.convert("RGB").save(target, "JPEG", quality=90)
    else:
        img.save(target, "PNG", compress_level=1)


def image_size(data: bytes | Path) -> tuple[int, int] | None:
    """The pixel size of an encoded image (reads the header only), or None if it is not one."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as img:
            return img.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return None


def open_image(path: Path) -> Image.Image:
    with Image.open(path) as img:
        img.load()
        return img.copy()
