"""tools/leaderboard.py's outputs that need no detectron2: the scatter plot's names, the markdown's footnote."""

import itertools


def test_leaderboard_scatter_names_cover_no_marker_no_name_and_stay_inside():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from tools import leaderboard

    # the real board's crowd (mask_rcnn, maskplus, dsg_light, dsg: within 0.21 time-ratio and 6.5 AP), the two
    # cascades close together, the rest of that board, a point at the right edge whose default name would leave the
    # axes, and one alone
    points = [
        ("mask_rcnn", 1.0, 51.1),
        ("maskplus", 1.15, 52.6),
        ("dsg_light", 1.08, 49.3),
        ("dsg", 1.21, 46.1),
        ("cascade_mask_rcnn", 1.07, 64.7),
        ("maskplus_plus", 1.21, 66.3),
        ("mask_point", 1.61, 55.2),
        ("panoptic_fpn", 1.58, 39.4),
        ("cascade_dsg", 2.06, 67.8),
        ("casnet", 2.50, 6.3),
        ("rdsnet", 2.77, 22.2),
        ("alone", 2.0, 30.0),
    ]
    fig, ax = plt.subplots(figsize=(7, 5), dpi=leaderboard.PLOT_DPI)
    for _, x, y in points:
        ax.scatter(x, y, s=30)
    fig.tight_layout()
    try:
        _check_placement(fig, ax, points, leaderboard._place_labels(fig, ax, points))
    finally:
        plt.close(fig)


def _check_placement(fig, ax, points, texts):
    from matplotlib.text import Text
    from matplotlib.transforms import Bbox

    from tools import leaderboard

    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    frame = ax.get_window_extent(renderer)
    boxes = [Text.get_window_extent(t, renderer) for t in texts]
    assert [t.get_text() for t in texts] == [p[0] for p in points]
    r = leaderboard.MARKER_RADIUS_PT * fig.dpi / 72
    for i, box in enumerate(boxes):
        assert frame.contains(box.x0, box.y0) and frame.contains(box.x1, box.y1), points[i][0]
        for j, (_, u, v) in enumerate(points):
            if j != i:
                cu, cv = ax.transData.transform((u, v))
                assert not box.overlaps(Bbox.from_extents(cu - r, cv - r, cu + r, cv + r)), (points[i][0], points[j][0])
    for a, b in itertools.combinations(range(len(points)), 2):
        assert not boxes[a].overlaps(boxes[b]), (points[a][0], points[b][0])
    # a point with room keeps the plain place (up and to the right, no leader line)
    alone = texts[-1]
    assert alone.get_position() == (4, 4) and alone.arrow_patch is None
    rdsnet = texts[-2]  # at the right edge: its name goes to the left of it
    assert rdsnet.get_ha() == "right"


def test_leaderboard_markdown_footnote_names_the_budgets_and_any_overrides():
    from tools import leaderboard

    meta = {"commit": "0123456789abcdef", "machine": "cpu", "reference": "mask_rcnn", "timed_image": "x.png"}
    rows = [
        {"name": "mask_rcnn", "iterations": 1500, "huddled_images": 43},
        {"name": "cascade_mask_rcnn", "iterations": 2250, "huddled_images": 43},
    ]
    md = leaderboard.markdown(rows, [(256, 256)], dict(meta, opts=[]))
    assert "its synthetic config's recipe (1500 or 2250 iterations: the cascades 1.5×" in md
    assert "on the 43 validation images" in md
    # an override run (e.g. Mask R-CNN at the cascades' schedule) says so, and does not explain budgets it overrode
    opts = ["SOLVER.MAX_ITER", "2250", "SOLVER.STEPS", "(1800,2100)"]
    md = leaderboard.markdown([dict(rows[0], iterations=2250)], [(256, 256)], dict(meta, opts=opts))
    assert "recipe with `SOLVER.MAX_ITER 2250 SOLVER.STEPS (1800,2100)` (2250 iterations)." in md
    assert "cascades" not in md
