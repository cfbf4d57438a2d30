"""Random appearances of a LanguageTable scene that keep every block's identity.

An appearance changes the board (colour and a procedural texture), the background, the lighting (direction,
colour, ambient/diffuse/specular strength, shadows), the arm's shade and the camera (white balance, exposure,
gamma, saturation, vignetting, blur, noise). It never changes a block's colour or any geometry: instructions name
block colours, and the paired cameras must show the same edges.

Every parameter is drawn from a wide continuous range (see `sample`) and the appearance gets a name composed from a
small vocabulary (`VOCABULARY`), e.g. "wooden tan board, grey concrete background, bright warm light from left,
shadows, cool soft grainy camera", so that a text-conditioned prior can learn the words.
"""

import colorsys
import math
import os

import cv2
import numpy as np

TEXTURE_SIZE = 256

BOARD_MATERIALS = ("painted", "wooden", "marble", "tiled", "checkered", "striped", "dotted", "fabric",
                   "concrete", "metal", "speckled")
BACKGROUND_MATERIALS = ("plain", "gradient", "wooden", "concrete", "tiled", "fabric")
COLOUR_WORDS = ("black", "charcoal", "grey", "silver", "white", "cream", "beige", "tan", "brown", "crimson",
                "orange", "gold", "olive", "emerald", "teal", "cobalt", "violet", "magenta", "pink")
LIGHT_INTENSITY = ("dim", "soft", "bright")
LIGHT_COLOUR = ("warm", "neutral", "cool")
LIGHT_DIRECTION = ("left", "right", "front", "behind", "above")
SHADOWS = ("shadows", "no shadows")
CAMERA_TINT = ("warm", "neutral", "cool")
CAMERA_SHARPNESS = ("sharp", "soft")
CAMERA_NOISE = ("clean", "grainy")
VOCABULARY = sorted(set(BOARD_MATERIALS + BACKGROUND_MATERIALS + COLOUR_WORDS + LIGHT_INTENSITY + LIGHT_COLOUR
                        + LIGHT_DIRECTION + CAMERA_TINT + CAMERA_SHARPNESS + CAMERA_NOISE
                        + ("board", "background", "light", "from", "camera", "shadows", "no")))


def colour_word(rgb):
  """The vocabulary word for an RGB colour in [0, 1]. Avoids red/blue/green/yellow: those name blocks."""
  h, s, v = colorsys.rgb_to_hsv(*[float(c) for c in rgb])
  hue = h * 360.0
  if v < 0.12 or (v < 0.16 and s < 0.5):
    return "black"
  if s < 0.15:
    if v < 0.36:
      return "charcoal"
    if v < 0.62:
      return "grey"
    if v < 0.84:
      return "silver"
    return "white"
  if 10 <= hue < 50 and (s < 0.45 or v < 0.6):
    if v < 0.45:
      return "brown"
    if s < 0.45:
      return "cream" if v > 0.8 else ("beige" if v > 0.6 else "tan")
    return "brown"
  if hue < 12 or hue >= 340:
    return "pink" if s < 0.45 and v > 0.6 else "crimson"
  if hue < 40:
    return "orange"
  if hue < 90 and v < 0.5:
    return "olive"  # dark yellow
  if hue < 62:
    return "gold"
  if hue < 90:
    return "olive"
  if hue < 160:
    return "emerald"
  if hue < 200:
    return "teal"
  if hue < 255:
    return "cobalt"
  if hue < 290:
    return "violet"
  if hue < 320:
    return "magenta"
  return "pink"


def _hsv(h, s, v):
  return np.array(colorsys.hsv_to_rgb(h % 1.0, float(np.clip(s, 0, 1)), float(np.clip(v, 0, 1))))


def _random_colour(rng):
  """A colour anywhere from black to white, grey to saturated."""
  return _hsv(rng.uniform(), rng.uniform(0.0, 0.85) ** 1.3, rng.uniform(0.08, 0.97))


def _noise(rng, size, cells):
  """Smooth value noise in [0, 1]: a random grid of `cells` x `cells`, bicubically upsampled."""
  grid = rng.uniform(size=(cells + 3, cells + 3)).astype(np.float32)
  big = cv2.resize(grid, (size + size * 3 // cells, size + size * 3 // cells), interpolation=cv2.INTER_CUBIC)
  off = size // cells
  return np.clip(big[off:off + size, off:off + size], 0, 1)


def _fractal(rng, size, octaves=4, base=4):
  out = np.zeros((size, size), np.float32)
  amp, total = 1.0, 0.0
  for o in range(octaves):
    out += amp * _noise(rng, size, base * 2**o)
    total += amp
    amp *= 0.5
  return out / total


def _mix(a, b, t):
  return a[None, None, :] * (1 - t[..., None]) + b[None, None, :] * t[..., None]


def _coords(size, angle):
  y, x = np.mgrid[0:size, 0:size].astype(np.float32) / size
  c, s = math.cos(angle), math.sin(angle)
  return x * c + y * s, -x * s + y * c


def texture(rng, material, base):
  """A TEXTURE_SIZE^2 RGB float texture of `material` around colour `base`; returns (image, params)."""
  n = TEXTURE_SIZE
  second = np.clip(base * rng.uniform(0.45, 0.85) + rng.uniform(-0.08, 0.08, 3), 0, 1)
  params = {"material": material}
  if material == "painted":
    img = _mix(base, base * 0.9, _fractal(rng, n) * rng.uniform(0.0, 0.6))
  elif material == "wooden":
    freq = rng.uniform(8, 40)
    warp = rng.uniform(0.02, 0.25)
    u, _ = _coords(n, rng.uniform(0, math.pi))
    grain = 0.5 + 0.5 * np.sin(2 * math.pi * freq * (u + warp * _fractal(rng, n, 3, 2)))
    img = _mix(base, second, grain**rng.uniform(0.5, 3.0))
    params.update(grain_frequency=freq, warp=warp)
  elif material == "marble":
    freq = rng.uniform(2, 8)
    u, v = _coords(n, rng.uniform(0, math.pi))
    veins = np.abs(np.sin(2 * math.pi * freq * (u + v) + rng.uniform(3, 10) * _fractal(rng, n, 5, 3)))
    img = _mix(second, base, veins**rng.uniform(0.15, 0.6))
    params.update(vein_frequency=freq)
  elif material in ("tiled", "checkered"):
    tiles = int(rng.integers(3, 17))
    y, x = np.mgrid[0:n, 0:n] * tiles // n
    if material == "checkered":
      img = _mix(base, second, ((x + y) % 2).astype(np.float32))
    else:
      jitter = rng.uniform(-0.08, 0.08, size=(tiles + 1, tiles + 1))
      img = np.clip(base[None, None, :] + jitter[y, x][..., None], 0, 1)
      grout = max(1, int(n / tiles * rng.uniform(0.04, 0.15)))
      line = ((np.mgrid[0:n, 0:n] % max(n // tiles, 1)) < grout).any(axis=0)
      img[line] = np.clip(second * 0.8 + 0.2 * rng.uniform(), 0, 1)
    params.update(tiles=tiles)
  elif material == "striped":
    width = rng.uniform(0.02, 0.15)
    u, _ = _coords(n, rng.uniform(0, math.pi))
    img = _mix(base, second, ((u / width) % 1.0 < rng.uniform(0.3, 0.7)).astype(np.float32))
    params.update(stripe_width=width)
  elif material == "dotted":
    spacing = rng.uniform(0.04, 0.15)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    d = np.hypot((x / spacing) % 1.0 - 0.5, (y / spacing) % 1.0 - 0.5)
    img = _mix(base, second, (d < rng.uniform(0.15, 0.4)).astype(np.float32))
    params.update(dot_spacing=spacing)
  elif material == "fabric":
    freq = rng.uniform(40, 90)
    y, x = np.mgrid[0:n, 0:n].astype(np.float32) / n
    weave = 0.5 + 0.25 * (np.sin(2 * math.pi * freq * x) + np.sin(2 * math.pi * freq * y))
    img = _mix(base, second, 0.5 * weave + 0.5 * _fractal(rng, n, 3, 16))
    params.update(weave_frequency=freq)
  elif material == "concrete":
    img = _mix(base, second, _fractal(rng, n, 5, 4))
    speck = rng.uniform(size=(n, n)) < rng.uniform(0.0, 0.05)
    img[speck] *= 0.6
  elif material == "metal":
    streaks = cv2.GaussianBlur(rng.uniform(size=(n, n)).astype(np.float32), (0, 0), sigmaX=12, sigmaY=0.6)
    streaks = (streaks - streaks.min()) / max(float(np.ptp(streaks)), 1e-6)
    img = _mix(second, base, 0.4 + 0.6 * streaks)
  elif material == "speckled":
    img = _mix(base, second, _fractal(rng, n, 3, 4) * 0.5)
    for _ in range(3):
      dots = rng.uniform(size=(n, n)) < rng.uniform(0.02, 0.12)
      img[dots] = _random_colour(rng)
  else:
    raise ValueError(f"unknown material {material!r}")
  return np.clip(img, 0, 1).astype(np.float32), params


BLOCK_RGB = {  # the blocks' URDF colours (language_table/environments/assets/blocks/*.urdf)
    "red": np.array([1.0, 0.4, 0.4]),
    "blue": np.array([0.4, 0.4, 1.0]),
    "green": np.array([0.4, 1.0, 0.4]),
    "yellow": np.array([1.0, 1.0, 0.4]),
}


def _chroma(rgb):
  rgb = np.asarray(rgb, np.float64)
  return rgb / max(rgb.sum(), 1e-6)


def light_colour(temperature, tint):
  """RGB light colour: temperature in [-1, 1] (warm .. cool), tint in [-1, 1] (magenta .. green)."""
  if temperature < 0:
    c = np.array([1.0, 1.0 + 0.18 * temperature, 1.0 + 0.4 * temperature])
  else:
    c = np.array([1.0 - 0.3 * temperature, 1.0 - 0.12 * temperature, 1.0])
  c[1] *= 1.0 + 0.06 * tint
  return c / c.max()


def sample(rng):
  """Draw one appearance: a dict of JSON-able parameters plus its name (see module doc for the ranges)."""
  board_material = str(rng.choice(BOARD_MATERIALS))
  board_colour = _random_colour(rng)
  bg_material = str(rng.choice(BACKGROUND_MATERIALS))
  bg_colour = _random_colour(rng)
  azimuth = rng.uniform(0, 360)  # degrees, 0 = from the camera's side (+x), 90 = from image left (+y)
  elevation = rng.uniform(25, 88)
  light = {
      "azimuth_deg": azimuth,
      "elevation_deg": elevation,
      "temperature": rng.uniform(-1, 1),
      "tint": rng.uniform(-1, 1),
      "ambient": rng.uniform(0.3, 0.85),
      "diffuse": rng.uniform(0.15, 0.75),
      "specular": rng.uniform(0.0, 0.4),
      "shadow": bool(rng.uniform() < 0.5),
  }
  camera = {
      "white_balance": rng.uniform(-0.6, 0.6),  # -: warm, +: cool
      "exposure": float(np.exp(rng.uniform(math.log(0.75), math.log(1.3)))),
      "gamma": rng.uniform(0.8, 1.25),
      "saturation": rng.uniform(0.75, 1.2),
      "vignette": rng.uniform(0.0, 0.35),
      "blur": rng.uniform(0.0, 0.008) if rng.uniform() < 0.6 else 0.0,  # Gaussian sigma / image height
      "noise": rng.uniform(0.0, 10.0) if rng.uniform() < 0.6 else 0.0,  # std in 0..255 units
  }
  arm_shade = rng.uniform(0.55, 1.0)
  params = {
      "board": {"material": board_material, "colour": board_colour.round(4).tolist(),
                "texture_seed": int(rng.integers(2**31))},
      "background": {"material": bg_material, "colour": bg_colour.round(4).tolist(),
                     "texture_seed": int(rng.integers(2**31))},
      "light": light,
      "camera": camera,
      "arm_rgb": (np.array([arm_shade] * 3) * rng.uniform(0.93, 1.0, 3)).round(4).tolist(),
  }
  return params


def _direction_word(azimuth, elevation):
  if elevation > 72:
    return "above"
  a = azimuth % 360
  if a < 45 or a >= 315:
    return "front"
  if a < 135:
    return "left"
  if a < 225:
    return "behind"
  return "right"


def name(p, board_rgb, background_rgb):
  """The appearance's name. Colour words come from the rendered (lit, post-processed) board and background, not
  from the base colours: a dark olive board under bright light looks gold, and must be called so."""
  light, cam = p["light"], p["camera"]
  strength = light["ambient"] + light["diffuse"]
  intensity = "dim" if strength < 0.75 else ("bright" if strength > 1.1 else "soft")
  lcol = "warm" if light["temperature"] < -0.33 else ("cool" if light["temperature"] > 0.33 else "neutral")
  tint = "warm" if cam["white_balance"] < -0.2 else ("cool" if cam["white_balance"] > 0.2 else "neutral")
  sharp = "soft" if cam["blur"] > 0.003 else "sharp"
  noise = "grainy" if cam["noise"] > 4 else "clean"
  return (f'{p["board"]["material"]} {colour_word(board_rgb)} board, '
          f'{colour_word(background_rgb)} {p["background"]["material"]} background, '
          f'{intensity} {lcol} light from {_direction_word(light["azimuth_deg"], light["elevation_deg"])}, '
          f'{"shadows" if light["shadow"] else "no shadows"}, {tint} {sharp} {noise} camera')


PHOTO_TEXTURES = os.environ.get("PHOTO_TEXTURES", os.path.expanduser("~/.cache/vadapt/photo-textures"))


def photo_look():
  """The photo-like look (`generate.py --photo`; the data of edge_to_real, the pipeline's real_aug): one fixed
  appearance, not a random draw, so that a model without a reference can learn it. Its board and background are
  photographs (Sweet Home 3D's woodenFloor parquet and roughcast plaster, fetched by setup.sh), the light is a warm
  key from the front left with shadows and a glossy highlight, the arm is dark, and the camera adds what a real
  one does: lens softness, chromatic aberration, a filmic tone curve, vignetting and shot noise. Blocks keep their
  colours (check_and_measure still applies)."""
  return {
      "board": {"material": "wooden", "photo": "woodenFloor.jpg", "repeat": [2, 3], "saturation": 0.3, "gain": 0.85,
                "colour": [0.62, 0.45, 0.26], "texture_seed": 0},
      "background": {"material": "concrete", "photo": "roughcast.jpg", "repeat": [6, 6], "gain": 0.5,
                     "colour": [0.55, 0.52, 0.48], "texture_seed": 0},
      "light": {"azimuth_deg": 35.0, "elevation_deg": 55.0, "temperature": -0.35, "tint": 0.0, "ambient": 0.55,
                "diffuse": 0.6, "specular": 0.25, "shadow": True},
      "camera": {"white_balance": -0.15, "exposure": 1.1, "gamma": 1.0, "saturation": 0.85, "vignette": 0.3,
                 "blur": 0.0035, "noise": 3.0, "chromatic_aberration": 0.004, "tone": 0.35,
                 "shot_noise": True},
      "arm_rgb": [0.16, 0.16, 0.17],
      "look": "photo",
  }


def _photo_texture(part):
  """A (2 TEXTURE_SIZE)^2 RGB float texture from the photograph `part["photo"]`, tiled `repeat` = [rows, cols] times
  across the quad (its UVs span 0..1 once), its saturation scaled by `saturation` (a greyer wood keeps the red and
  yellow blocks apart from the board: the full orange parquet fails check_and_measure on some seeds) and its values
  by `gain`. The part's `colour` is not used (procedural textures' only)."""
  path = os.path.join(PHOTO_TEXTURES, part["photo"])
  img = cv2.imread(path, cv2.IMREAD_COLOR)
  if img is None:
    raise FileNotFoundError(f"{path}: the photo look's texture (scripts/language_table/setup.sh fetches it)")
  rows, cols = part.get("repeat", [1, 1])
  img = np.tile(cv2.cvtColor(img, cv2.COLOR_BGR2RGB), (rows, cols, 1))
  n = TEXTURE_SIZE * 2
  img = cv2.resize(img, (n, n), interpolation=cv2.INTER_AREA).astype(np.float32) / 255.0
  grey = img.mean(axis=2, keepdims=True)
  img = grey + (img - grey) * part.get("saturation", 1.0)
  return np.clip(img * part.get("gain", 1.0), 0, 1)


def board_texture(p):
  if "photo" in p["board"]:
    return _photo_texture(p["board"])
  rng = np.random.default_rng(p["board"]["texture_seed"])
  img, _ = texture(rng, p["board"]["material"], np.array(p["board"]["colour"]))
  return img


def background_texture(p):
  if "photo" in p["background"]:
    return _photo_texture(p["background"])
  rng = np.random.default_rng(p["background"]["texture_seed"])
  base = np.array(p["background"]["colour"])
  material = p["background"]["material"]
  if material == "plain":
    material = "painted"
  if material == "gradient":
    n = TEXTURE_SIZE
    t = np.mgrid[0:n, 0:n][int(rng.integers(2))].astype(np.float32) / n
    far = np.clip(base * rng.uniform(0.3, 1.4) + rng.uniform(-0.15, 0.15, 3), 0, 1)
    return _mix(base, far, t).astype(np.float32)
  img, _ = texture(rng, material, base)
  return img


def light_args(p):
  """Keyword arguments of pybullet's getCameraImage for this appearance's light."""
  light = p["light"]
  az, el = math.radians(light["azimuth_deg"]), math.radians(light["elevation_deg"])
  direction = [math.cos(el) * math.cos(az), math.cos(el) * math.sin(az), math.sin(el)]
  return dict(lightDirection=direction,
              lightColor=light_colour(light["temperature"], light["tint"]).tolist(),
              lightDistance=2.0,
              lightAmbientCoeff=light["ambient"],
              lightDiffuseCoeff=light["diffuse"],
              lightSpecularCoeff=light["specular"],
              shadow=1 if light["shadow"] else 0)


def post_process(img, p, noise_rng):
  """Camera effects on a uint8 HxWx3 frame at the stored size: blur, white balance, exposure, gamma, saturation,
  vignetting, noise (noise_rng draws the frame's noise); the photo look adds lateral chromatic aberration, a
  filmic tone curve and brightness-dependent (shot) noise."""
  cam = p["camera"]
  h, w = img.shape[:2]
  x = img.astype(np.float32) / 255.0
  if cam["blur"] > 0:
    x = cv2.GaussianBlur(x, (0, 0), sigmaX=cam["blur"] * h)
  if cam.get("chromatic_aberration", 0) > 0:
    # Lateral CA: red magnified and blue shrunk about the image centre by this fraction.
    for channel, sign in ((0, 1.0), (2, -1.0)):
      s = 1.0 + sign * cam["chromatic_aberration"]
      m = np.array([[s, 0, (1 - s) * (w - 1) / 2], [0, s, (1 - s) * (h - 1) / 2]], np.float32)
      x[..., channel] = cv2.warpAffine(x[..., channel], m, (w, h), flags=cv2.INTER_LINEAR,
                                       borderMode=cv2.BORDER_REFLECT)
  wb = cam["white_balance"]
  gains = np.array([1 - 0.15 * wb, 1.0, 1 + 0.15 * wb], np.float32)
  x = x * gains * cam["exposure"]
  x = np.clip(x, 0, 1) ** cam["gamma"]
  if cam.get("tone", 0) > 0:
    x = x + cam["tone"] * (x * x * (3 - 2 * x) - x)  # toward smoothstep: an S-shaped (filmic) response
  grey = x.mean(axis=2, keepdims=True)
  x = grey + (x - grey) * cam["saturation"]
  if cam["vignette"] > 0:
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    r2 = ((xx - w / 2) / (w / 2))**2 + ((yy - h / 2) / (h / 2))**2
    x = x * (1 - cam["vignette"] * np.clip(r2 / 2, 0, 1))[..., None]
  x = x * 255.0
  if cam["noise"] > 0:
    noise = noise_rng.normal(0, cam["noise"], size=x.shape).astype(np.float32)
    if cam.get("shot_noise"):  # the photo look: stronger where brighter
      noise *= np.sqrt(np.clip(x, 0, 255) / 128.0)
    x = x + noise
  return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def check_and_measure(img, seg, block_bodies, board_body, background_body):
  """Check a post-processed first frame of an appearance and measure its rendered board and background colours.

  Each visible block's mean colour must still be nearest to its own colour (by chromaticity, with a margin) and
  stand apart from the board's mean colour; the frame must not be near-black or flat.
  block_bodies: body id -> colour name. Returns (ok, reason, board_rgb, background_rgb), colours in [0, 1]."""
  def mean_of(body):
    px = img[seg == body].reshape(-1, 3).astype(np.float64)
    return px.mean(axis=0) / 255.0 if len(px) else None

  board, background = mean_of(board_body), mean_of(background_body)
  if img.mean() < 25 or img.std() < 8:
    return False, "frame too dark or flat", board, background
  if board is None or background is None:
    return False, "board or background not in view", board, background
  for body, colour in block_bodies.items():
    px = img[seg == body].reshape(-1, 3).astype(np.float64)
    if len(px) < 6:
      continue  # hidden or off the board
    block = px.mean(axis=0) / 255.0
    c = _chroma(block)
    dists = {k: np.abs(c - _chroma(v)).sum() for k, v in BLOCK_RGB.items()}
    own = dists.pop(colour)
    if own >= 0.7 * min(dists.values()):
      return False, f"{colour} block reads as {min(dists, key=dists.get)}", board, background
    if np.abs(block - board).sum() < 0.3:
      return False, f"{colour} block too close to the board colour", board, background
  return True, "", board, background
