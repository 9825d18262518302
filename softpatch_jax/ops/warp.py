"""Differentiable affine warping: an affine sampling grid and a bilinear sampler (FYD's STNs).

Corner convention (PyTorch's `affine_grid`/`grid_sample` with `align_corners=False`):
normalised coordinates run from -1 to 1 across the *outer edges* of the image, so pixel i of a
size-n axis has its centre at (2i + 1) / n - 1 and the identity warp returns the input exactly.
`theta` maps output coordinates to input coordinates: input = theta[:, :2] @ (x, y) + theta[:, 2],
with x along the width. Translating the content right by d pixels is theta[0, 2] = -2 d / W.

Padding: 'zeros' (samples outside the image read 0) or 'border' (clamped to the edge pixels).
"""
import jax
import jax.numpy as jnp

PADDINGS = ("zeros", "border")


def identity(batch: int) -> jnp.ndarray:
    """(batch, 2, 3) identity warps."""
    return jnp.tile(jnp.eye(2, 3, dtype=jnp.float32)[None], (batch, 1, 1))


def affine_grid(theta: jnp.ndarray, height: int, width: int) -> jnp.ndarray:
    """theta (B, 2, 3) -> (B, H, W, 2) input coordinates (x, y) in [-1, 1] for each output pixel."""
    dtype = jnp.promote_types(theta.dtype, jnp.float32)
    xs = (2.0 * jnp.arange(width, dtype=dtype) + 1.0) / width - 1.0
    ys = (2.0 * jnp.arange(height, dtype=dtype) + 1.0) / height - 1.0
    gx, gy = jnp.meshgrid(xs, ys)  # (H, W) each
    base = jnp.stack([gx, gy, jnp.ones_like(gx)], axis=-1)  # (H, W, 3)
    return jnp.einsum("hwk,bjk->bhwj", base, theta.astype(dtype),
                      precision=jax.lax.Precision.HIGHEST)


def _sample_one(image: jnp.ndarray, grid: jnp.ndarray, padding: str) -> jnp.ndarray:
    """image (H, W, C), grid (h, w, 2) -> (h, w, C)."""
    h_in, w_in = image.shape[0], image.shape[1]
    x = ((grid[..., 0] + 1.0) * w_in - 1.0) / 2.0  # pixel coordinates, centres at integers
    y = ((grid[..., 1] + 1.0) * h_in - 1.0) / 2.0
    if padding == "border":
        x = jnp.clip(x, 0.0, w_in - 1.0)
        y = jnp.clip(y, 0.0, h_in - 1.0)
    x0 = jnp.floor(jax.lax.stop_gradient(x))
    y0 = jnp.floor(jax.lax.stop_gradient(y))
    wx, wy = x - x0, y - y0
    out = 0.0
    for dy, fy in ((0, 1.0 - wy), (1, wy)):
        for dx, fx in ((0, 1.0 - wx), (1, wx)):
            xi, yi = (x0 + dx).astype(jnp.int32), (y0 + dy).astype(jnp.int32)
            inside = (xi >= 0) & (xi < w_in) & (yi >= 0) & (yi < h_in)
            v = image[jnp.clip(yi, 0, h_in - 1), jnp.clip(xi, 0, w_in - 1)]
            out = out + v * (fx * fy * inside)[..., None]
    return out


def grid_sample(images: jnp.ndarray, grid: jnp.ndarray, padding: str = "zeros") -> jnp.ndarray:
    """Bilinear sampling. images (B, H, W, C), grid (B, h, w, 2) in [-1, 1] -> (B, h, w, C)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is unknown; choose one of {', '.join(PADDINGS)}")
    return jax.vmap(lambda im, g: _sample_one(im, g, padding))(images, grid).astype(images.dtype)


def warp(images: jnp.ndarray, theta: jnp.ndarray, padding: str = "zeros") -> jnp.ndarray:
    """images (B, H, W, C) warped by theta (B, 2, 3) onto the same size."""
    return grid_sample(images, affine_grid(theta, images.shape[1], images.shape[2]), padding)


def compose(outer: jnp.ndarray, inner: jnp.ndarray) -> jnp.ndarray:
    """(B, 2, 3) warps -> the warp x -> outer(inner(x)), (B, 2, 3)."""
    lin = jnp.einsum("bij,bjk->bik", outer[:, :, :2], inner[:, :, :2])
    return jnp.concatenate([lin, (jnp.einsum("bij,bj->bi", outer[:, :, :2], inner[:, :, 2])
                                  + outer[:, :, 2])[..., None]], axis=-1)


def invert(theta: jnp.ndarray) -> jnp.ndarray:
    """(B, 2, 3) -> the inverse affine maps."""
    inv = jnp.linalg.inv(theta[:, :, :2])
    return jnp.concatenate([inv, -jnp.einsum("bij,bj->bi", inv, theta[:, :, 2])[..., None]], -1)


def unwarp(grids: jnp.ndarray, warps: jnp.ndarray) -> jnp.ndarray:
    """Score grids (T, h, w) in an aligned frame -> the input frame, with each image's warp
    (T, 2, 3) (aligned -> input); traceable. Points that came from outside the aligned frame
    take the nearest border value."""
    return warp(grids[..., None], invert(warps), "border")[..., 0]
