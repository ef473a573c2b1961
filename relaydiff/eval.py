"""Evaluate generated images against real ones, or plot SNR versus frequency.

    python -m relaydiff.eval compare --gen out/ --ref real.zip --metrics fid,kid \
        --inception inception-2015-12-05.pt
    python -m relaydiff.eval compare --gen out/ --ref real/ --metrics rapsd,swd      # no weights needed
    python -m relaydiff.eval snr --images real/ --resolutions 64,256 --sigma 0.5 --out snr.png

FID/KID need the Inception-v3 TorchScript file named by --inception, sFID a TorchScript file giving
Inception's spatial mixed_6/conv map named by --sfid-detector (neither is downloaded; the errors say
where to get or how to make them). RAPSD distance, SWD and the SNR plot need no weights.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import zipfile

import numpy as np
import PIL.Image
import torch

from . import cli_args as cli
from . import metrics

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
WEIGHT_FREE = ("rapsd", "swd")
ALL_METRICS = ("fid", "kid", "sfid") + WEIGHT_FREE


def _skip(name: str) -> bool:
    base = os.path.basename(name).lower()
    return base.startswith("grid") or not base.endswith(IMAGE_EXTS)


class ImageError(ValueError):
    """An image file PIL cannot read (corrupt, truncated, not an image); names the file."""


def load_images(path: str, resolution: int | None = None, max_images: int | None = None) -> torch.Tensor:
    """uint8 RGB [N, 3, R, R] from a folder or a zip; grid*.png files are skipped.

    Images are resized (Lanczos) to `resolution` when given, else to the first image's size.
    `builtin` names the built-in training set (relaydiff.dataset.builtin_dataset) at `resolution`.
    """
    if path == "builtin":
        from .dataset import builtin_dataset

        images = builtin_dataset(resolution or 32).images
        return images[:max_images] if max_images else images
    if not os.path.exists(path):
        raise FileNotFoundError(f"{path}: no such folder or zip")
    if os.path.isdir(path):
        # The folder's own images; only when it has none, those of its subfolders (class folders),
        # so a sample folder's stage1/ previews are not mixed into its final outputs.
        names = sorted(os.path.join(path, f) for f in os.listdir(path)
                       if os.path.isfile(os.path.join(path, f)) and not _skip(f))
        if not names:
            names = sorted(os.path.join(r, f) for r, _, fs in os.walk(path) for f in fs if not _skip(f))
        read = lambda n: PIL.Image.open(n)  # noqa: E731
    else:
        try:
            zf = zipfile.ZipFile(path)
        except zipfile.BadZipFile as exc:
            raise ValueError(f"{path}: neither a folder nor a zip ({exc})") from exc
        names = sorted(n for n in zf.namelist() if not _skip(n))
        read = lambda n: PIL.Image.open(io.BytesIO(zf.read(n)))  # noqa: E731
    names = names[:max_images] if max_images else names
    if not names:
        raise ValueError(f"{path}: no images ({', '.join(IMAGE_EXTS)})")
    out = []
    for n in names:
        try:
            img = read(n).convert("RGB")
        except (OSError, ValueError, zipfile.BadZipFile) as exc:  # PIL's UnidentifiedImageError is an OSError
            where = n if os.path.isdir(path) else f"{path}:{n}"  # a zip member: the zip, then its name
            raise ImageError(f"{where}: not a readable image ({exc})") from exc
        resolution = resolution or img.size[0]
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
        out.append(np.asarray(img))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.to(torch.float64) / 127.5 - 1


def compare(
    gen: torch.Tensor, ref: torch.Tensor, names, inception=None, batch=64, device="cpu", kid_subsets=100,
    sfid_detector=None,
) -> dict:
    """Metrics between uint8 image sets (same resolution)."""
    results = {"num_gen": int(gen.shape[0]), "num_ref": int(ref.shape[0])}
    if "sfid" in names:
        detector = metrics.load_sfid_detector(sfid_detector, device)
        sg = metrics.spatial_features(detector, gen, batch, device)
        sr = metrics.spatial_features(detector, ref, batch, device)
        results["sfid"] = metrics.fid_from_features(sg, sr)
    if {"fid", "kid"} & set(names):
        detector = metrics.load_inception(inception, device)
        fg = metrics.inception_features(detector, gen, batch, device)
        fr = metrics.inception_features(detector, ref, batch, device)
        if "fid" in names:
            results["fid"] = metrics.fid_from_features(fg, fr)
        if "kid" in names:
            results["kid"] = metrics.kernel_inception_distance(fg, fr, num_subsets=kid_subsets)
    if "rapsd" in names:
        results["rapsd_distance"] = metrics.rapsd_distance(to_float(gen), to_float(ref))
    if "swd" in names:
        per_level = metrics.sliced_wasserstein(to_float(gen), to_float(ref))
        results["swd_per_level"] = per_level
        results["swd"] = float(np.mean(per_level))
    return results


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = cli.Parser(
        prog="python -m relaydiff.eval", description=__doc__.split("\n")[0], formatter_class=fmt
    )
    sub = p.add_subparsers(dest="command", required=True)
    c = sub.add_parser(
        "compare", help="FID/KID/RAPSD/SWD between generated and real images", formatter_class=fmt
    )
    c.add_argument("--gen", required=True, help="folder or zip of generated images")
    c.add_argument("--ref", required=True, help="folder or zip of real images, or 'builtin' (the default training set)")
    c.add_argument("--metrics", default="fid,kid", help=f"comma list of {', '.join(ALL_METRICS)}")
    c.add_argument("--inception", default=None, help="local Inception-v3 TorchScript file (for fid, kid)")
    c.add_argument("--sfid-detector", default=None,
                   help="local TorchScript file giving Inception's spatial mixed_6/conv map (for sfid)")
    c.add_argument(
        "--resolution", type=cli.positive_int, default=None, help="resize both sets to this (default: gen's size)"
    )
    c.add_argument("--max-images", type=cli.positive_int, default=None, help="use at most this many images per set")
    c.add_argument("--batch", type=cli.positive_int, default=64, help="Inception batch size")
    c.add_argument("--kid-subsets", type=cli.positive_int, default=100, help="KID subsets")
    c.add_argument("--device", default="cpu", help="torch device for Inception")
    c.add_argument("--json", default=None, help="also write the results to this JSON file")
    c.add_argument("--psd-plot", default=None, help="also plot both sets' RAPSD (log10 power) to this PNG")
    s = sub.add_parser(
        "snr", help="SNR versus frequency at several resolutions (RDM Figure 2)", formatter_class=fmt
    )
    s.add_argument("--images", required=True, help="folder or zip of (high-resolution) images")
    s.add_argument("--resolutions", type=cli.number_list(int, 1, 8192), default="64,256",
                   help="comma list of resolutions")
    s.add_argument("--sigma", type=cli.nonnegative_float, default=0.5, help="noise std on the [-1, 1] image scale")
    s.add_argument("--max-images", type=cli.positive_int, default=256,
                   help="use at most this many images")
    s.add_argument("--out", default="snr.png", help="PNG to write")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "compare":
            names = [m.strip() for m in args.metrics.split(",") if m.strip()]
            bad = [m for m in names if m not in ALL_METRICS]
            if bad:
                raise ValueError(f"unknown metric(s) {bad}; choose from {', '.join(ALL_METRICS)}")
            if {"fid", "kid"} & set(names):
                metrics.load_inception(args.inception, "cpu")  # fail before reading any image
            if "sfid" in names:
                metrics.load_sfid_detector(args.sfid_detector, "cpu")
            gen = load_images(args.gen, args.resolution, args.max_images)
            ref = load_images(args.ref, gen.shape[-1], args.max_images)
            res = compare(gen, ref, names, args.inception, args.batch, args.device, args.kid_subsets,
                          args.sfid_detector)
            print(json.dumps(res, indent=2))
            if args.psd_plot:
                curves = metrics.rapsd_curves({"real": to_float(ref), "generated": to_float(gen)})
                metrics.plot_curves(curves, args.psd_plot, "RAPSD, real vs generated", "log10 power")
                print(f"wrote {args.psd_plot}")
            if args.json:
                with open(args.json, "w") as f:
                    json.dump(res, f, indent=2)
        else:
            resolutions = args.resolutions
            images = to_float(load_images(args.images, max(resolutions), args.max_images))
            curves = metrics.snr_curves(images, resolutions, args.sigma)
            metrics.plot_snr(curves, args.out, f"SNR at sigma={args.sigma}")
            print(f"wrote {args.out}")
    except ImageError as exc:  # a bad input file: the message and status of a usage error
        print(f"relaydiff.eval: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
