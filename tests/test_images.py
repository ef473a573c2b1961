"""relaydiff.images: the one float-to-uint8 rule and the row grid (training previews, the comparison)."""

import numpy as np
import PIL.Image
import torch

from relaydiff import images


def test_quantize_is_the_released_rule():
    # THUDM/RelayDiffusion and NVlabs/edm generate.py: (x * 127.5 + 128).clip(0, 255).to(torch.uint8)
    x = torch.tensor([-2.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    assert images.quantize(x).tolist() == [0, 0, 64, 128, 191, 255, 255]
    batch = torch.rand(2, 3, 4, 5) * 2 - 1
    assert images.to_uint8(batch).shape == (2, 4, 5, 3)
    assert (images.to_uint8(batch) == images.quantize(batch).permute(0, 2, 3, 1).numpy()).all()


def test_uint8_images_survive_the_float_round_trip():
    u8 = torch.arange(256, dtype=torch.uint8)
    assert torch.equal(images.quantize(u8.float() / 127.5 - 1), u8)


def test_row_grid_layout_and_tile_size(tmp_path, one_thread):
    res, n = 16, 3
    real = torch.rand(n, 3, res, res) * 2 - 1
    low = torch.rand(n, 3, res // 4, res // 4) * 2 - 1  # stage-1 samples: upsampled (nearest) to res
    path = tmp_path / "grid.png"
    images.write_row_grid(str(path), [real, low], res)
    tile = images.row_tile_size(res)
    assert tile == 96  # 16 px tiles enlarged 6x to be viewable
    with PIL.Image.open(path) as im:
        grid = np.asarray(im.convert("RGB"))
    assert grid.shape == (2 * tile, n * tile, 3)
    scale = tile // res
    first_real = images.to_uint8(real[:1])[0].repeat(scale, 0).repeat(scale, 1)
    assert (grid[:tile, :tile] == first_real).all()
    last_low = images.to_uint8(low[-1:])[0].repeat(scale * 4, 0).repeat(scale * 4, 1)
    assert (grid[tile:, (n - 1) * tile:] == last_low).all()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]  # no temporary file left


def test_row_grid_takes_uint8_and_float_alike(tmp_path, one_thread):
    u8 = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8)
    images.write_row_grid(str(tmp_path / "u8.png"), [u8[:2], u8[2:]], 8)
    images.write_row_grid(str(tmp_path / "f.png"), [u8[:2].float() / 127.5 - 1, u8[2:].float() / 127.5 - 1], 8)
    with PIL.Image.open(tmp_path / "u8.png") as a, PIL.Image.open(tmp_path / "f.png") as b:
        assert a.size == (2 * 96, 2 * 96) and (np.asarray(a) == np.asarray(b)).all()
