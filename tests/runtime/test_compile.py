"""`render --compile`: the transformer is compiled once per process and shape, reused by every
clip of that shape, and renders what the plain one renders. The tests use dynamo's "eager"
backend (the real graph capture, no code generation), which keeps them fast and exact."""

from __future__ import annotations

import pytest
import torch

from moldbatch.runtime import Runtime
from moldbatch.runtime.ltx2 import COMPILE_BACKEND_ENV

from conftest import tiny_clip

pytestmark = pytest.mark.slow  # graph capture takes a while on the CPU


@pytest.fixture(scope="module")
def plain():
    return Runtime("ltx-2-tiny:random", device="cpu")


@pytest.fixture(scope="module")
def compiled():
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(COMPILE_BACKEND_ENV, "eager")
        torch._dynamo.reset()
        return Runtime("ltx-2-tiny:random", device="cpu", compile=True)


def _graphs() -> int:
    return sum(torch._dynamo.utils.counters["stats"].values())


def test_a_compiled_transformer_renders_the_same_bits(plain, compiled):
    req = tiny_clip(frames=9, seed=3)
    a, b = plain.render_clip(req), compiled.render_clip(req)
    assert compiled.compiled and not plain.compiled
    torch.testing.assert_close(a.video_latents, b.video_latents, rtol=0, atol=0)


def test_clips_of_one_shape_compile_once_and_a_new_shape_again(compiled):
    compiled.render_clip(tiny_clip(frames=17, seed=1))
    after_first = _graphs()
    compiled.render_clip(tiny_clip(frames=17, seed=2, prompt="another prompt"))
    assert _graphs() == after_first  # the same shape: no new graph
    compiled.render_clip(tiny_clip(frames=25, seed=1))
    assert _graphs() > after_first  # a new shape compiles again
