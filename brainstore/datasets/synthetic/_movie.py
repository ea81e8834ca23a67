"""The clips of the synthetic video dataset (:mod:`._video`): segments in which one object of a
category moves at a constant speed over a static background of a place type, bouncing off the
frame's edges, rendered frame by frame with mild pixel noise; and each frame's latents (category and
place one-hots, speed and velocity, contrast and motion energy on a coarse retinotopic grid).
"""

from __future__ import annotations

import math

import numpy as np

__all__ = ["CATEGORIES", "PLACES", "GRID", "PIXEL_NOISE", "render_clip"]

CATEGORIES: tuple[str, ...] = ("face", "body", "car", "animal", "text")
PLACES: tuple[str, ...] = ("indoor", "outdoor", "water", "texture")
GRID = 8  # retinotopic cells per side for contrast and motion energy
PIXEL_NOISE = 3.0  # sd of the per-frame pixel noise, grey levels
_WORDS = ("STOP", "TAXI", "BOOK", "NEWS", "EXIT", "CAFE", "OPEN", "BANK", "ZOO", "BUS")
_SKIN = ((224, 172, 105), (198, 134, 66), (141, 85, 36), (255, 219, 172))
_LUMA = np.array([0.299, 0.587, 0.114], np.float32)


def render_clip(out: np.ndarray, rng: np.random.Generator, fps: float) -> tuple[np.ndarray, dict]:
    """Render one clip into ``out`` (n_frames, S, S, 3) uint8; return its per-frame latents and truth columns.

    Latents (n_frames, 5 + 4 + 3 + 2 G**2): category and place one-hots, speed and velocity (vx, vy) in
    frame widths per second, contrast energy and motion energy per cell.
    """
    n, S = out.shape[0], out.shape[1]
    onehot = np.zeros((n, len(CATEGORIES) + len(PLACES)), np.float32)
    motion = np.zeros((n, 3), np.float32)
    tab = {k: np.zeros(n, np.float32) for k in ("speed", "direction", "x", "y", "size")}
    tab["frame"] = np.arange(n, dtype=np.int32)
    tab["segment"] = np.zeros(n, np.int32)
    cat_of, place_of = [""] * n, [""] * n
    a, seg = 0, 0
    while a < n:
        b = min(n, a + max(1, int(round(rng.uniform(2.0, 6.0) * fps))))
        cat, place = int(rng.integers(len(CATEGORIES))), int(rng.integers(len(PLACES)))
        speed = 0.0 if rng.random() < 0.25 else float(rng.uniform(0.05, 0.6)) * S  # pixels per second
        heading = float(rng.uniform(0.0, 360.0))  # degrees, 0 = rightwards, 90 = upwards
        D = int(round(rng.uniform(0.32, 0.45) * S))  # sprite side, pixels
        bg_u8 = _background(PLACES[place], S, rng)
        bg = bg_u8.astype(np.float32)
        rgb, alpha = _sprite(CATEGORIES[cat], D, rng)
        flips = CATEGORIES[cat] in ("car", "animal")  # they face the way they move
        lo, hi = D / 2, S - D / 2
        p0 = rng.uniform(lo, hi, 2)
        t = np.arange(b - a) / fps
        vel = speed * np.array([math.cos(math.radians(heading)), -math.sin(math.radians(heading))])  # image y points down
        pos, sign = _bounce(p0[None] + t[:, None] * vel[None], lo, hi)
        v = sign * vel[None]  # velocity after the bounces, pixels per second (image axes)
        out[a:b] = bg_u8
        xy0 = np.clip(np.round(pos - D / 2), 0, S - D).astype(int)  # sprite corners
        for i in range(b - a):
            x0, y0 = xy0[i]
            spr, al = (rgb[:, ::-1], alpha[:, ::-1]) if flips and v[i, 0] < 0 else (rgb, alpha)
            under = bg[y0 : y0 + D, x0 : x0 + D]
            out[a + i, y0 : y0 + D, x0 : x0 + D] = np.round(under + al * (spr - under)).astype(np.uint8)
        onehot[a:b, cat] = 1.0
        onehot[a:b, len(CATEGORIES) + place] = 1.0
        motion[a:b] = np.column_stack([np.full(b - a, speed), v[:, 0], -v[:, 1]]) / S  # vy upwards positive
        tab["speed"][a:b] = speed
        tab["direction"][a:b] = np.degrees(np.arctan2(-v[:, 1], v[:, 0])) % 360.0 if speed > 0 else heading
        tab["x"][a:b], tab["y"][a:b], tab["size"][a:b] = pos[:, 0] / S, pos[:, 1] / S, D / S
        tab["segment"][a:b] = seg
        cat_of[a:b], place_of[a:b] = [CATEGORIES[cat]] * (b - a), [PLACES[place]] * (b - a)
        a, seg = b, seg + 1
    ce, me = _energies(out)
    noise_rng = np.random.default_rng(rng.integers(2**63))
    for s in range(0, n, 256):  # pixel noise, in chunks (the latents are of the noise-free frames)
        chunk = out[s : s + 256].astype(np.float32)
        chunk += PIXEL_NOISE * noise_rng.standard_normal(chunk.shape, dtype=np.float32)
        out[s : s + 256] = np.clip(np.round(chunk), 0, 255).astype(np.uint8)
    tab["category"], tab["place"] = cat_of, place_of
    tab["motion_energy"], tab["contrast_energy"] = me, ce
    return np.concatenate([onehot, motion, ce, me], axis=1), tab


def _bounce(p: np.ndarray, lo: float, hi: float) -> tuple[np.ndarray, np.ndarray]:
    """Positions ``p`` folded into ``[lo, hi]`` (reflection at the edges) and the sign of the velocity."""
    L = max(hi - lo, 1e-9)
    u = np.mod(p - lo, 2 * L)
    return lo + np.where(u <= L, u, 2 * L - u), np.where(u < L, 1.0, -1.0)


def _energies(frames: np.ndarray, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Contrast energy and motion energy per retinotopic cell, each (n_frames, G**2) float32.

    Contrast: mean luminance-gradient magnitude in the cell; motion: mean absolute difference of
    luminance from the previous frame (0 for the first frame). Luminance in [0, 1].
    """
    n, S = frames.shape[:2]
    edges = (np.arange(GRID) * S) // GRID
    area = np.outer(np.diff(np.append(edges, S)), np.diff(np.append(edges, S))).ravel().astype(np.float32)

    def cells(a: np.ndarray) -> np.ndarray:
        s = np.add.reduceat(np.add.reduceat(a, edges, axis=1), edges, axis=2)
        return s.reshape(len(a), -1) / area

    ce = np.zeros((n, GRID * GRID), np.float32)
    me = np.zeros((n, GRID * GRID), np.float32)
    prev = None
    for s in range(0, n, chunk):
        lum = frames[s : s + chunk].astype(np.float32) @ (_LUMA / 255.0)
        gy, gx = np.gradient(lum, axis=(1, 2))
        ce[s : s + len(lum)] = cells(np.sqrt(gx**2 + gy**2))
        d = np.abs(np.diff(lum, axis=0, prepend=lum[:1] if prev is None else prev[None]))
        me[s : s + len(lum)] = cells(d)
        prev = lum[-1]
    return ce, me


# --------------------------------------------------------------------------- drawing


def _jitter(rng: np.random.Generator, col: tuple[int, int, int], amount: int = 20) -> tuple[int, ...]:
    return tuple(int(np.clip(c + rng.integers(-amount, amount + 1), 0, 255)) for c in col)


def _background(place: str, S: int, rng: np.random.Generator) -> np.ndarray:
    """A static background of a place type, (S, S, 3) uint8 (drawn at twice the size, then reduced)."""
    from PIL import Image, ImageDraw

    W = 2 * S
    img = Image.new("RGB", (W, W))
    d = ImageDraw.Draw(img)
    if place not in _DRAW_PLACE:  # pragma: no cover - places are closed
        raise ValueError(f"unknown place {place!r}")
    _DRAW_PLACE[place](d, W, rng)
    return np.asarray(img.resize((S, S), Image.BOX))


def _indoor(d, W: int, rng: np.random.Generator) -> None:
    """A room in perspective: back wall, side walls, ceiling, floor boards, a window or door."""
    wall = _jitter(rng, [(205, 195, 175), (190, 200, 210), (215, 200, 190), (185, 180, 160)][int(rng.integers(4))])
    x0, x1 = W * rng.uniform(0.22, 0.32), W * rng.uniform(0.68, 0.78)
    y0, y1 = W * rng.uniform(0.15, 0.25), W * rng.uniform(0.58, 0.66)
    d.rectangle([0, 0, W, W], fill=tuple(int(c * 0.85) for c in wall))
    d.polygon([(0, 0), (W, 0), (x1, y0), (x0, y0)], fill=tuple(min(255, int(c * 1.1)) for c in wall))
    floor = _jitter(rng, (140, 95, 55))
    d.polygon([(0, W), (W, W), (x1, y1), (x0, y1)], fill=floor)
    d.rectangle([x0, y0, x1, y1], fill=wall)
    for k in range(1, 8):  # floor boards converging on the back wall
        xb = x0 + (x1 - x0) * k / 8
        d.line([(xb, y1), (xb + (xb - W / 2) * 2.5, W)], fill=tuple(int(c * 0.7) for c in floor), width=2)
    edge = tuple(int(c * 0.6) for c in wall)
    for (xa, ya), (xc, yc) in (((x0, y0), (0, 0)), ((x1, y0), (W, 0)), ((x0, y1), (0, W)), ((x1, y1), (W, W))):
        d.line([(xa, ya), (xc, yc)], fill=edge, width=2)
    d.rectangle([x0, y0, x1, y1], outline=edge, width=2)
    if rng.random() < 0.5:  # window with a cross
        wx, wy, ww = x0 + (x1 - x0) * rng.uniform(0.15, 0.45), y0 + (y1 - y0) * 0.15, (x1 - x0) * 0.35
        d.rectangle([wx, wy, wx + ww, wy + ww * 0.8], fill=(170, 210, 240), outline=(245, 245, 245), width=3)
        d.line([(wx + ww / 2, wy), (wx + ww / 2, wy + ww * 0.8)], fill=(245, 245, 245), width=3)
        d.line([(wx, wy + ww * 0.4), (wx + ww, wy + ww * 0.4)], fill=(245, 245, 245), width=3)
    else:  # door
        dx = x0 + (x1 - x0) * rng.uniform(0.1, 0.65)
        d.rectangle([dx, y0 + (y1 - y0) * 0.3, dx + (x1 - x0) * 0.25, y1], fill=_jitter(rng, (110, 70, 40)))


def _outdoor(d, W: int, rng: np.random.Generator) -> None:
    """Sky gradient over a horizon, grass or field, hills, trees, sun."""
    horizon = int(W * rng.uniform(0.45, 0.65))
    top, low = np.array(_jitter(rng, (80, 140, 225)), float), np.array(_jitter(rng, (195, 222, 245)), float)
    for y in range(horizon):
        d.line([(0, y), (W, y)], fill=tuple(int(c) for c in top + (low - top) * y / max(horizon - 1, 1)))
    ground = _jitter(rng, [(70, 140, 60), (150, 160, 80), (110, 150, 70)][int(rng.integers(3))])
    hill = tuple(int(c * 0.8) for c in ground)
    for _ in range(int(rng.integers(1, 4))):
        cx, w, hgt = W * rng.uniform(0, 1), W * rng.uniform(0.3, 0.7), W * rng.uniform(0.05, 0.15)
        d.pieslice([cx - w / 2, horizon - hgt, cx + w / 2, horizon + hgt], 180, 360, fill=hill)
    d.rectangle([0, horizon, W, W], fill=ground)
    for _ in range(int(rng.integers(0, 4))):
        tx, th = W * rng.uniform(0.05, 0.95), W * rng.uniform(0.12, 0.25)
        d.rectangle([tx - W * 0.012, horizon - th * 0.4, tx + W * 0.012, horizon + 2], fill=(100, 70, 40))
        d.ellipse([tx - th * 0.3, horizon - th, tx + th * 0.3, horizon - th * 0.3], fill=_jitter(rng, (40, 110, 45)))
    if rng.random() < 0.6:
        sx, sy, sr = W * rng.uniform(0.1, 0.9), horizon * rng.uniform(0.15, 0.5), W * 0.06
        d.ellipse([sx - sr, sy - sr, sx + sr, sy + sr], fill=(255, 235, 120))


def _water(d, W: int, rng: np.random.Generator) -> None:
    """Sky band, a far shore, water with wave stripes denser towards the horizon."""
    horizon = int(W * rng.uniform(0.28, 0.42))
    top, low = np.array(_jitter(rng, (110, 160, 230)), float), np.array(_jitter(rng, (210, 228, 245)), float)
    for y in range(horizon):
        d.line([(0, y), (W, y)], fill=tuple(int(c) for c in top + (low - top) * y / max(horizon - 1, 1)))
    d.rectangle([0, horizon - W * 0.03, W, horizon], fill=_jitter(rng, (60, 90, 60)))
    deep, near = np.array(_jitter(rng, (40, 100, 165)), float), np.array(_jitter(rng, (20, 60, 120)), float)
    for y in range(horizon, W):
        d.line([(0, y), (W, y)], fill=tuple(int(c) for c in deep + (near - deep) * (y - horizon) / max(W - horizon, 1)))
    crest = _jitter(rng, (150, 195, 235))
    y, k, phase = float(horizon + 3), 0, rng.uniform(0, 2 * np.pi)
    while y < W:
        amp, lam = 1 + (y - horizon) * 0.05, W * (0.15 + 0.25 * (y - horizon) / W)
        xs = np.arange(0, W + 4, 4)
        pts = [(float(x), float(y + amp * np.sin(2 * np.pi * x / lam + phase + k))) for x in xs]
        d.line(pts, fill=crest, width=max(1, int(1 + (y - horizon) / (W * 0.25))))
        y += 3 + (y - horizon) * 0.25
        k += 1


def _texture(d, W: int, rng: np.random.Generator) -> None:
    """No place: a checkerboard, stripes or dots of random colours."""
    c1 = tuple(int(v) for v in rng.integers(30, 226, 3))
    c2 = tuple(int(v) for v in rng.integers(30, 226, 3))
    d.rectangle([0, 0, W, W], fill=c1)
    kind, step = int(rng.integers(3)), int(W * rng.uniform(0.06, 0.16))
    if kind == 0:
        for i in range(0, W, step):
            for j in range(0, W, step):
                if (i // step + j // step) % 2:
                    d.rectangle([i, j, i + step - 1, j + step - 1], fill=c2)
    elif kind == 1:
        for i in range(-W, 2 * W, 2 * step):
            d.polygon([(i, 0), (i + step, 0), (i + step - W // 2, W), (i - W // 2, W)], fill=c2)
    else:
        for i in range(step // 2, W, step):
            for j in range(step // 2, W, step):
                d.ellipse([i - step * 0.3, j - step * 0.3, i + step * 0.3, j + step * 0.3], fill=c2)


_DRAW_PLACE = {"indoor": _indoor, "outdoor": _outdoor, "water": _water, "texture": _texture}


def _sprite(category: str, D: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """An object of a category on a transparent square: colour (D, D, 3) and alpha (D, D, 1), float32.

    Drawn at four times the size and reduced (antialiased edges); cars and animals face right.
    """
    from PIL import Image, ImageDraw

    from ._scenes import load_font

    W = 4 * D
    img = Image.new("RGBA", (W, W), (0, 0, 0, 0))
    d = ImageDraw.Draw(img)
    dark = (30, 25, 20, 255)

    def box(x0: float, y0: float, x1: float, y1: float) -> list[float]:
        return [x0 * W, y0 * W, x1 * W, y1 * W]

    if category == "face":  # skin ellipse, hair, eyes, nose, mouth
        skin = _SKIN[int(rng.integers(len(_SKIN)))] + (255,)
        hair = _jitter(rng, [(40, 25, 15), (110, 70, 30), (200, 170, 90), (20, 20, 20)][int(rng.integers(4))], 10) + (255,)
        d.ellipse(box(0.08, 0.02, 0.92, 0.62), fill=hair)
        d.ellipse(box(0.14, 0.08, 0.86, 0.98), fill=skin, outline=(90, 60, 30, 255), width=max(1, W // 60))
        for ex in (0.34, 0.66):
            d.ellipse(box(ex - 0.09, 0.38, ex + 0.09, 0.5), fill=(250, 250, 250, 255))
            d.ellipse(box(ex - 0.04, 0.4, ex + 0.04, 0.48), fill=dark)
            d.line([(ex - 0.1) * W, 0.33 * W, (ex + 0.1) * W, 0.31 * W], fill=hair, width=max(1, W // 30))
        d.line([0.5 * W, 0.5 * W, 0.46 * W, 0.66 * W, 0.52 * W, 0.67 * W], fill=(120, 70, 40, 255), width=max(1, W // 50))
        d.arc(box(0.32, 0.62, 0.68, 0.84), 20, 160, fill=(170, 40, 40, 255), width=max(1, W // 25))
    elif category == "body":  # stick figure in a pose
        ink = _jitter(rng, [(30, 30, 120), (150, 30, 30), (30, 110, 40), (20, 20, 20)][int(rng.integers(4))], 15) + (255,)
        w = max(2, int(W * 0.07))
        d.ellipse(box(0.4, 0.02, 0.6, 0.2), fill=_SKIN[int(rng.integers(len(_SKIN)))] + (255,))
        d.line([0.5 * W, 0.2 * W, 0.5 * W, 0.58 * W], fill=ink, width=w)
        arm, leg = rng.uniform(-0.12, 0.12, 2), rng.uniform(0.12, 0.25)
        d.line([0.5 * W, 0.28 * W, 0.2 * W, (0.45 + arm[0]) * W], fill=ink, width=w)
        d.line([0.5 * W, 0.28 * W, 0.8 * W, (0.45 + arm[1]) * W], fill=ink, width=w)
        d.line([0.5 * W, 0.58 * W, (0.5 - leg) * W, 0.97 * W], fill=ink, width=w)
        d.line([0.5 * W, 0.58 * W, (0.5 + leg) * W, 0.97 * W], fill=ink, width=w)
    elif category == "car":  # body, cabin with windows, wheels with hubs, headlight
        paint = _jitter(rng, [(200, 30, 35), (30, 80, 190), (240, 200, 30), (230, 230, 230), (40, 40, 45)][int(rng.integers(5))], 15)
        d.polygon([(0.28 * W, 0.48 * W), (0.38 * W, 0.27 * W), (0.68 * W, 0.27 * W), (0.8 * W, 0.48 * W)], fill=paint + (255,))
        d.polygon([(0.33 * W, 0.47 * W), (0.41 * W, 0.31 * W), (0.52 * W, 0.31 * W), (0.52 * W, 0.47 * W)], fill=(170, 210, 240, 255))
        d.polygon([(0.55 * W, 0.47 * W), (0.55 * W, 0.31 * W), (0.66 * W, 0.31 * W), (0.75 * W, 0.47 * W)], fill=(170, 210, 240, 255))
        d.rounded_rectangle(box(0.03, 0.46, 0.97, 0.74), radius=W * 0.05, fill=paint + (255,), outline=dark, width=max(1, W // 80))
        d.rectangle(box(0.9, 0.52, 0.97, 0.58), fill=(255, 240, 150, 255))
        for wx in (0.25, 0.75):
            d.ellipse(box(wx - 0.12, 0.62, wx + 0.12, 0.86), fill=(20, 20, 20, 255))
            d.ellipse(box(wx - 0.05, 0.69, wx + 0.05, 0.79), fill=(170, 170, 170, 255))
    elif category == "animal":  # four-legged: body, head with ear, snout and eye, legs, tail
        fur = _jitter(rng, [(140, 90, 45), (110, 110, 110), (60, 45, 35), (210, 150, 70)][int(rng.integers(4))], 15) + (255,)
        w = max(2, int(W * 0.07))
        for lx in (0.24, 0.36, 0.58, 0.7):
            d.line([lx * W, 0.55 * W, (lx + rng.uniform(-0.04, 0.04)) * W, 0.9 * W], fill=fur, width=w)
        d.line([0.2 * W, 0.45 * W, 0.06 * W, 0.28 * W], fill=fur, width=max(1, w // 2))
        d.ellipse(box(0.15, 0.35, 0.78, 0.62), fill=fur)
        d.ellipse(box(0.66, 0.18, 0.92, 0.44), fill=fur)
        d.polygon([(0.7 * W, 0.24 * W), (0.74 * W, 0.08 * W), (0.8 * W, 0.22 * W)], fill=fur)
        d.ellipse(box(0.84, 0.3, 0.98, 0.4), fill=fur)
        d.ellipse(box(0.94, 0.31, 0.99, 0.36), fill=dark)
        d.ellipse(box(0.78, 0.25, 0.83, 0.3), fill=dark)
    elif category == "text":  # a word on a plate
        plate = _jitter(rng, [(250, 250, 250), (250, 220, 60), (40, 90, 170), (30, 120, 60)][int(rng.integers(4))], 5)
        ink = (0, 0, 0, 255) if sum(plate) > 450 else (255, 255, 255, 255)
        d.rectangle(box(0.0, 0.28, 1.0, 0.72), fill=plate + (255,), outline=dark, width=max(1, W // 60))
        word = _WORDS[int(rng.integers(len(_WORDS)))]
        d.text((W / 2, W / 2), word, fill=ink, font=load_font(max(8, int(W * 0.28))), anchor="mm")
    else:  # pragma: no cover - categories are closed
        raise ValueError(f"unknown category {category!r}")
    a = np.asarray(img.resize((D, D), Image.BOX), dtype=np.float32)  # (Pillow resizes RGBA premultiplied)
    return a[..., :3], a[..., 3:] / 255.0
