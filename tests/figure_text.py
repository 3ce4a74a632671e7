"""What a reader sees of a figure's text: shared by the legibility tests of test_plots and test_finetune_analysis."""

from __future__ import annotations

import matplotlib.pyplot as plt
from matplotlib.text import Text


def visible_texts(fig: plt.Figure) -> list[Text]:
    """Every Text artist that a draw of ``fig`` actually renders (non-empty, visible, inside the figure)."""
    drawn: list[Text] = []
    original = Text.draw

    def recording_draw(self, renderer):
        if self.get_visible() and self.get_text().strip():
            drawn.append(self)
        return original(self, renderer)

    Text.draw = recording_draw
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original
    renderer = fig.canvas.get_renderer()
    return [t for t in drawn if t.get_window_extent(renderer).overlaps(fig.bbox)]
