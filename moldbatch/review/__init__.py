"""Reviewing a film before and after rendering: the storyboard page, the change preview
(`moldbatch diff`), the GPU-time estimate, contact sheets and the post-render report.

Everything here except `contact` and `report` (which read rendered frames) works on a light
install: no torch, no numpy, no Pillow.
"""
