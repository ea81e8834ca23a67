"""Procedural scenes for the synthetic benchmark dataset.

A scene is a background (plain, textured, indoor room or outdoor place with buildings) plus one
to three objects from categories with distinct shapes (ball, box, cone, star, face, person,
sign with text), each with a colour, a size and a position. Each scene renders to an RGB image,
describes itself in a caption, and exposes a semantic feature vector that drives the
category-selective vertices of the response model.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw, ImageFont

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (214, 39, 40),
    "green": (44, 160, 44),
    "blue": (31, 119, 180),
    "yellow": (240, 220, 30),
    "purple": (148, 103, 189),
    "orange": (255, 127, 14),
    "white": (245, 245, 245),
    "black": (25, 25, 25),
}
CATEGORIES = ("ball", "box", "cone", "star", "face", "person", "sign")
BACKGROUNDS = ("plain", "stripes", "room", "street")
SIZES = {"small": 0.14, "medium": 0.24, "large": 0.36}
_WORDS = ("STOP", "EXIT", "OPEN", "CAFE", "BUS", "HOTEL", "PARK", "SALE", "NEWS", "BANK")
_SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))

# Names of the semantic features (columns of :meth:`Scene.semantics`).
SEMANTIC_NAMES: tuple[str, ...] = (
    ("face", "body", "text", "place", "indoor", "outdoor", "animate", "n_objects", "mean_size")
    + tuple(f"cat_{c}" for c in CATEGORIES)
    + tuple(f"col_{c}" for c in COLOURS)
    + ("left", "right", "top", "bottom")
)


@dataclass
class SceneObject:
    category: str
    colour: str
    size: str
    x: float  # centre, fraction of width
    y: float  # centre, fraction of height
    word: str = ""


@dataclass
class Scene:
    background: str
    bg_colour: str
    objects: list[SceneObject] = field(default_factory=list)

    def caption(self) -> str:
        """A one-sentence description of the scene."""
        parts = []
        for o in self.objects:
            where = _where(o.x, o.y)
            if o.category == "sign":
                parts.append(f"a {o.size} {o.colour} sign reading '{o.word}' {where}")
            elif o.category == "face":
                parts.append(f"a {o.size} face with {_a(o.colour)} {o.colour} hat {where}")
            elif o.category == "person":
                parts.append(f"a {o.size} person in a {o.colour} shirt {where}")
            else:
                parts.append(f"a {o.size} {o.colour} {o.category} {where}")
        things = parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]
        setting = {
            "plain": f"on a plain {self.bg_colour} background",
            "stripes": f"on a striped {self.bg_colour} pattern",
            "room": "inside a room with a wooden floor",
            "street": "on a street with buildings under a blue sky",
        }[self.background]
        return f"{things[0].upper()}{things[1:]} {setting}."

    def semantics(self) -> np.ndarray:
        """Semantic feature vector, shape (len(SEMANTIC_NAMES),), float32."""
        v = dict.fromkeys(SEMANTIC_NAMES, 0.0)
        for o in self.objects:
            area = SIZES[o.size] ** 2
            v[f"cat_{o.category}"] += 1.0
            v[f"col_{o.colour}"] += area * 10
            v["face"] += np.sqrt(area) * 3 if o.category == "face" else 0.0
            v["body"] += np.sqrt(area) * 3 if o.category == "person" else 0.0
            v["text"] += np.sqrt(area) * 3 if o.category == "sign" else 0.0
            v["animate"] += 1.0 if o.category in ("face", "person") else 0.0
            v["left"] += area * 10 if o.x < 0.4 else 0.0
            v["right"] += area * 10 if o.x > 0.6 else 0.0
            v["top"] += area * 10 if o.y < 0.4 else 0.0
            v["bottom"] += area * 10 if o.y > 0.6 else 0.0
        v["indoor"] = float(self.background == "room")
        v["outdoor"] = float(self.background == "street")
        v["place"] = 1.5 * (v["indoor"] + v["outdoor"])
        v["n_objects"] = float(len(self.objects))
        v["mean_size"] = float(np.mean([SIZES[o.size] for o in self.objects])) * 5
        return np.array([v[k] for k in SEMANTIC_NAMES], dtype=np.float32)


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def _where(x: float, y: float) -> str:
    h = "on the left" if x < 0.4 else "on the right" if x > 0.6 else "in the centre"
    v = " near the top" if y < 0.35 else " near the bottom" if y > 0.65 else ""
    return h + v


def sample_scene(rng: np.random.Generator) -> Scene:
    """Draw a random scene. Face/person/sign/place content each appear in roughly a third of scenes."""
    background = str(rng.choice(BACKGROUNDS, p=[0.3, 0.2, 0.25, 0.25]))
    bg_colour = str(rng.choice(list(COLOURS)))
    n = int(rng.integers(1, 4))
    objects = []
    for _ in range(n):
        cat = str(rng.choice(CATEGORIES, p=[0.13, 0.13, 0.12, 0.12, 0.18, 0.18, 0.14]))
        colour = str(rng.choice([c for c in COLOURS if c != bg_colour]))
        size = str(rng.choice(list(SIZES)))
        objects.append(
            SceneObject(
                category=cat,
                colour=colour,
                size=size,
                x=float(rng.uniform(0.18, 0.82)),
                y=float(rng.uniform(0.2, 0.8)),
                word=str(rng.choice(_WORDS)) if cat == "sign" else "",
            )
        )
    return Scene(background=background, bg_colour=bg_colour, objects=objects)


def render(scene: Scene, size: int = 256, seed: int = 0) -> Image.Image:
    """Render a scene to an RGB image of shape (size, size)."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (size, size), COLOURS[scene.bg_colour])
    d = ImageDraw.Draw(img)
    s = size
    if scene.background == "stripes":
        step = max(4, int(s * rng.uniform(0.04, 0.1)))
        alt = tuple(int(c * 0.6) for c in COLOURS[scene.bg_colour])
        for i in range(-s, 2 * s, 2 * step):
            d.polygon([(i, 0), (i + step, 0), (i + step - s // 2, s), (i - s // 2, s)], fill=alt)
    elif scene.background == "room":
        d.rectangle([0, 0, s, s], fill=(200, 190, 170))
        floor = int(s * 0.62)
        d.polygon([(0, s), (s, s), (int(s * 0.8), floor), (int(s * 0.2), floor)], fill=(140, 90, 50))
        for k in range(1, 6):
            x0 = int(s * 0.2 + k * s * 0.1)
            d.line([(x0, floor), (int(x0 + (x0 - s / 2) * 1.5), s)], fill=(110, 70, 40), width=1)
        d.line([(int(s * 0.2), 0), (int(s * 0.2), floor)], fill=(150, 140, 120), width=2)
        d.line([(int(s * 0.8), 0), (int(s * 0.8), floor)], fill=(150, 140, 120), width=2)
        d.rectangle([int(s * 0.35), int(s * 0.15), int(s * 0.65), int(s * 0.4)], fill=(170, 210, 240))
    elif scene.background == "street":
        horizon = int(s * rng.uniform(0.45, 0.6))
        d.rectangle([0, 0, s, horizon], fill=(120, 180, 235))
        d.rectangle([0, horizon, s, s], fill=(90, 90, 95))
        x = 0
        while x < s:
            w = int(s * rng.uniform(0.12, 0.25))
            h = int(s * rng.uniform(0.15, 0.4))
            shade = int(rng.integers(90, 200))
            d.rectangle([x, horizon - h, x + w - 2, horizon], fill=(shade, shade - 20, shade - 40))
            for wy in range(horizon - h + 4, horizon - 6, max(6, s // 30)):
                for wx in range(x + 3, x + w - 6, max(6, s // 30)):
                    d.rectangle([wx, wy, wx + 2 + s // 100, wy + 2 + s // 100], fill=(250, 240, 160))
            x += w
        d.line([(0, int(s * 0.8)), (s, int(s * 0.8))], fill=(240, 240, 240), width=max(1, s // 80))
    for o in scene.objects:
        _draw_object(d, o, s, rng)
    return img


def _draw_object(d: ImageDraw.ImageDraw, o: SceneObject, s: int, rng: np.random.Generator) -> None:
    r = SIZES[o.size] * s / 2
    cx, cy = o.x * s, o.y * s
    col = COLOURS[o.colour]
    box = [cx - r, cy - r, cx + r, cy + r]
    if o.category == "ball":
        d.ellipse(box, fill=col, outline=(0, 0, 0))
    elif o.category == "box":
        d.rectangle(box, fill=col, outline=(0, 0, 0))
    elif o.category == "cone":
        d.polygon([(cx, cy - r), (cx + r, cy + r), (cx - r, cy + r)], fill=col, outline=(0, 0, 0))
    elif o.category == "star":
        pts = []
        for k in range(10):
            rad = r if k % 2 == 0 else r * 0.45
            a = np.pi / 2 + k * np.pi / 5
            pts.append((cx + rad * np.cos(a), cy - rad * np.sin(a)))
        d.polygon(pts, fill=col, outline=(0, 0, 0))
    elif o.category == "face":
        skin = _SKIN[int(rng.integers(len(_SKIN)))]
        d.ellipse([cx - r * 0.8, cy - r, cx + r * 0.8, cy + r], fill=skin, outline=(60, 40, 20))
        for ex in (-0.32, 0.32):
            d.ellipse([cx + ex * r - r * 0.13, cy - r * 0.3, cx + ex * r + r * 0.13, cy - r * 0.08], fill=(20, 20, 20))
        d.line([(cx, cy - r * 0.05), (cx - r * 0.08, cy + r * 0.25)], fill=(90, 60, 30), width=max(1, int(r / 15)))
        d.arc([cx - r * 0.4, cy + r * 0.15, cx + r * 0.4, cy + r * 0.6], 20, 160, fill=(150, 30, 30), width=max(1, int(r / 10)))
        d.pieslice([cx - r * 0.85, cy - r * 1.35, cx + r * 0.85, cy - r * 0.35], 180, 360, fill=col)
    elif o.category == "person":
        w = max(2, int(r / 5))
        skin = _SKIN[int(rng.integers(len(_SKIN)))]
        d.ellipse([cx - r * 0.22, cy - r, cx + r * 0.22, cy - r * 0.56], fill=skin)
        d.rectangle([cx - r * 0.28, cy - r * 0.55, cx + r * 0.28, cy + r * 0.2], fill=col)
        d.line([(cx - r * 0.28, cy - r * 0.45), (cx - r * 0.6, cy + r * 0.05)], fill=skin, width=w)
        d.line([(cx + r * 0.28, cy - r * 0.45), (cx + r * 0.6, cy + r * 0.05)], fill=skin, width=w)
        d.line([(cx - r * 0.12, cy + r * 0.2), (cx - r * 0.3, cy + r)], fill=(40, 40, 90), width=w)
        d.line([(cx + r * 0.12, cy + r * 0.2), (cx + r * 0.3, cy + r)], fill=(40, 40, 90), width=w)
    elif o.category == "sign":
        d.rectangle([cx - r, cy - r * 0.5, cx + r, cy + r * 0.5], fill=col, outline=(0, 0, 0))
        ink = (255, 255, 255) if sum(col) < 380 else (0, 0, 0)
        font = load_font(max(6, int(r * 0.55)))
        d.text((cx, cy), o.word, fill=ink, font=font, anchor="mm")
    else:  # pragma: no cover - categories are closed
        raise ValueError(f"unknown category {o.category!r}")


_FONTS: dict[int, ImageFont.ImageFont] = {}


def load_font(px: int):
    if px not in _FONTS:
        try:
            _FONTS[px] = ImageFont.load_default(size=px)
        except Exception:  # Pillow without FreeType: fixed bitmap font
            _FONTS[px] = ImageFont.load_default()
    return _FONTS[px]


def low_level_energy(img: Image.Image, grid: int = 32) -> np.ndarray:
    """Local contrast energy on a grid x grid map (what early visual pRFs integrate).

    Luminance gradient magnitude plus colour-opponent (R-G, B-Y) contrast, averaged within each
    grid cell. Returns shape (grid * grid,), float32.
    """
    a = np.asarray(img.convert("RGB").resize((grid * 4, grid * 4), Image.BILINEAR), dtype=np.float32) / 255.0
    lum = a @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    gy, gx = np.gradient(lum)
    rg = a[..., 0] - a[..., 1]
    by = a[..., 2] - 0.5 * (a[..., 0] + a[..., 1])
    e = np.sqrt(gx**2 + gy**2) * 4 + 0.3 * (np.abs(np.gradient(rg)[0]) + np.abs(np.gradient(by)[1])) * 4
    e = e.reshape(grid, 4, grid, 4).mean(axis=(1, 3))
    return e.reshape(-1).astype(np.float32)
