"""The front as an HTML page (front.html): validation std_acc against rob_acc of every evaluated model, inline SVG.

No script and nothing fetched: a point's figures are its SVG <title>, the browser's own tooltip on hover. So the
page works offline, in any browser and in MLflow's artifact viewer, which shows .html in a sandboxed iframe from a
blob URL (3.17.2: ShowArtifactHtmlView, sandbox="allow-scripts"). Drawn: every evaluated model (gray; hollow when
screened: its robustness rests on a subset of validation), the AT model (black square), the rule's tolerance line
(AT rob − tolerance), the front (red, joined), the recommended model (green, larger), with Wilson 95 % bars on the
AT model, the front and the recommended model. Plotly (include_plotlyjs=True) would render there too, but inlines
about 4 MB of plotly.js per page and adds a dependency; this page is ~6 KB for eight models.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from html import escape
from pathlib import Path

from rift_sweep.presentation.tables import describe_model
from rift_sweep.procedure.records import Accuracy, Front, Model, Scores

WIDTH, HEIGHT = 760, 500
LEFT, RIGHT, TOP, BOTTOM = 60, 20, 15, 50  # margins around the plot (px)
FRONT, RECOMMENDED, OTHER, AT = "#d62728", "#2ca02c", "#8c8c8c", "#000000"


def write_front_html(front: Front, path: Path) -> Path:
    """Writes the page to `path` and returns it."""
    recommended = front.recommended.key if front.recommended else None
    on_front = {m.key for m in front.front}
    barred = [m for m in front.models if m.key in on_front or m.key == recommended or m.is_at]
    tolerance_line = front.at.val.rob.value - front.tolerance
    scale = _Scale(
        _span([m.val.std.value for m in front.models] + _bounds(m.val.std for m in barred)),
        _span([m.val.rob.value for m in front.models] + _bounds(m.val.rob for m in barred) + [tolerance_line]),
    )
    (x0, y), (x1, _) = scale(scale.x[0], tolerance_line), scale(scale.x[1], tolerance_line)
    path_points = " ".join("{},{}".format(*scale(m.val.std.value, m.val.rob.value)) for m in reversed(front.front))
    svg = [
        scale.axes(),
        f'<line class="tolerance" x1="{x0}" y1="{y}" x2="{x1}" y2="{y}" stroke="{AT}" stroke-dasharray="6 4">'
        f"<title>the rule's tolerance: AT rob − {front.tolerance:g} = {tolerance_line:.2f} %</title></line>",
        f'<polyline class="front-line" points="{path_points}" fill="none" stroke="{FRONT}" stroke-width="1.5"/>',
    ]
    # Plain models first: the marked ones are drawn on top of them.
    for m in sorted(front.models, key=lambda m: m.key in {b.key for b in barred}):
        svg.append(_marker(m, scale, on_front=m.key in on_front, recommended=m.key == recommended))
    heading = f"{len(front.models)} evaluated models, {len(on_front)} on the front; " + (
        f"recommended: {describe_model(front.recommended)}" if front.recommended else "the AT model stands"
    )
    path.write_text(_page(heading, "\n".join(svg)), encoding="utf-8")
    return path


def _bounds(accuracies) -> list[float]:
    return [bound for a in accuracies for bound in (a.low, a.high)]


def _span(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = max(0.5, 0.04 * (high - low))
    return low - pad, high + pad


@dataclass(frozen=True)
class _Scale:
    """Accuracy (%) to SVG coordinates."""

    x: tuple[float, float]
    y: tuple[float, float]

    def __call__(self, x: float, y: float) -> tuple[float, float]:
        px = LEFT + (x - self.x[0]) / (self.x[1] - self.x[0]) * (WIDTH - LEFT - RIGHT)
        py = HEIGHT - BOTTOM - (y - self.y[0]) / (self.y[1] - self.y[0]) * (HEIGHT - TOP - BOTTOM)
        return round(px, 1), round(py, 1)

    def axes(self) -> str:
        parts = []
        for x in _ticks(*self.x):
            px, py = self(x, self.y[0])
            parts.append(f'<line class="grid" x1="{px}" y1="{TOP}" x2="{px}" y2="{py}"/>')
            parts.append(f'<text x="{px}" y="{py + 16}" text-anchor="middle">{x:g}</text>')
        for y in _ticks(*self.y):
            px, py = self(self.x[0], y)
            parts.append(f'<line class="grid" x1="{px}" y1="{py}" x2="{WIDTH - RIGHT}" y2="{py}"/>')
            parts.append(f'<text x="{px - 6}" y="{py + 4}" text-anchor="end">{y:g}</text>')
        mid_x, mid_y = (LEFT + WIDTH - RIGHT) / 2, (TOP + HEIGHT - BOTTOM) / 2
        parts.append(f'<text class="axis" x="{mid_x}" y="{HEIGHT - 12}" text-anchor="middle">std_acc (%)</text>')
        parts.append(
            f'<text class="axis" x="16" y="{mid_y}" text-anchor="middle" transform="rotate(-90 16 {mid_y})">'
            "rob_acc (%)</text>"
        )
        return "\n".join(parts)


def _ticks(low: float, high: float) -> list[float]:
    """Round values every 1, 2 or 5 × 10^k, at most 8 of them."""
    unit = 10 ** math.floor(math.log10((high - low) / 5))
    step = unit * next(f for f in (1, 2, 5, 10) if (high - low) / (unit * f) <= 8)
    return [round(i * step, 6) for i in range(math.ceil(low / step), math.floor(high / step) + 1)]


def _marker(model: Model, scale: _Scale, *, on_front: bool, recommended: bool) -> str:
    x, y = scale(model.val.std.value, model.val.rob.value)
    color = RECOMMENDED if recommended else FRONT if on_front else AT if model.is_at else OTHER
    kind = "at" if model.is_at else "recommended" if recommended else "front" if on_front else "model"
    screened = " screened" if model.val.screened else ""
    parts = [f'<g class="point {kind}{screened}"><title>{escape(_tooltip(model, on_front, recommended))}</title>']
    if on_front or recommended or model.is_at:
        (x_low, y_low), (x_high, y_high) = (
            scale(model.val.std.low, model.val.rob.low),
            scale(model.val.std.high, model.val.rob.high),
        )
        parts.append(f'<path d="M{x_low},{y}H{x_high}M{x},{y_low}V{y_high}" fill="none" stroke="{color}"/>')
    if model.is_at:
        parts.append(f'<rect x="{x - 5}" y="{y - 5}" width="10" height="10" fill="{color}"/>')
    else:
        fill = "white" if model.val.screened else color
        radius = 7 if recommended else 5 if on_front else 4
        parts.append(f'<circle cx="{x}" cy="{y}" r="{radius}" fill="{fill}" stroke="{color}" stroke-width="1.5"/>')
    return "".join(parts) + "</g>"


def _tooltip(model: Model, on_front: bool, recommended: bool) -> str:
    roles = [role for role, is_it in (("recommended", recommended), ("on the front", on_front)) if is_it]
    lines = [describe_model(model) + (f" ({', '.join(roles)})" if roles else ""), f"validation: {_scores(model.val)}"]
    if model.val.screened:
        lines.append(f"screened: robustness on {model.val.rob.images} of {model.val.std.images} images")
    if model.test is not None:
        lines.append(f"test: {_scores(model.test)}")
    return "\n".join(lines)


def _scores(scores: Scores) -> str:
    def one(name: str, a: Accuracy) -> str:
        return f"{name} {a.value:.2f} % [{a.low:.2f}, {a.high:.2f}]"

    return f"{one('std', scores.std)}, {one('rob', scores.rob)}"


LEGEND = [
    (AT, "■ AT model"),
    (OTHER, "● evaluated model (○ screened)"),
    (FRONT, "● Pareto front"),
    (RECOMMENDED, "● recommended"),
    (AT, "- - the rule's tolerance (AT rob − tolerance)"),
]


def _page(heading: str, svg: str) -> str:
    legend = " &nbsp; ".join(f'<span style="color:{color}">{escape(text)}</span>' for color, text in LEGEND)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>RiFT sweep: the front</title>
<style>
body {{ font-family: sans-serif; margin: 12px; }}
svg {{ width: 100%; max-width: {WIDTH}px; height: auto; }}
svg text {{ font-size: 12px; }} .axis {{ font-size: 13px; }} .grid {{ stroke: #e6e6e6; }}
.point:hover circle, .point:hover rect {{ stroke-width: 4; }}
</style></head><body>
<h3>{escape(heading)}</h3>
<p>Validation accuracy of every evaluated model with Wilson 95 % bars; hover a point for its figures.</p>
<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img"
 aria-label="validation std_acc against rob_acc of every evaluated model">
{svg}
</svg>
<p>{legend}</p>
</body></html>
"""
