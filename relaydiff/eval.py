"""Evaluate generated images like the RDM paper (FID, sFID, IS, precision, recall), or plot SNR.

    python -m relaydiff.eval activations --data generations/samples --dest samples.npz
    python -m relaydiff.eval calc --sample samples.npz --ref ref.npz --metrics fid,sfid,is,pr
    python -m relaydiff.eval compare --gen out/ --ref real.zip --metrics fid,kid,rapsd,swd   # both steps at once
    python -m relaydiff.eval snr --images real/ --resolutions 64,256 --sigma 0.5 --out snr.png

`activations` and `calc` are the RDM authors' `evaluate.py activations` / `calc` (THUDM/RelayDiffusion):
the same .npz layout and the same formulas (relaydiff.activations, relaydiff.metrics). The detector
is the FID Inception-v3 as a local state_dict file (--detector, default relaydiff.inception's cache
path; never downloaded: the error says which file to fetch and where to put it). RAPSD distance,
SWD and the SNR plot need no weights.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import numpy as np
import torch

from . import activations as acts
from . import cli_args as cli
from . import distributed, inception, metrics
from .fileio import save_json

DETECTOR_METRICS = ("fid", "sfid", "is", "pr", "kid")
WEIGHT_FREE = ("rapsd", "swd")
ALL_METRICS = DETECTOR_METRICS + WEIGHT_FREE


class ImageError(ValueError):
    """An image file PIL cannot read (corrupt, truncated, not an image); names the file."""


def load_images(path: str, resolution: int | None = None, max_images: int | None = None) -> torch.Tensor:
    """uint8 RGB [N, 3, R, R] in memory (for RAPSD, SWD, the SNR plot), read through ImageFiles with the
    activations' selection (grid*.png and stage1/ previews left out). Images are resized (Lanczos) to
    `resolution` when given, else to the first image's size. `builtin` names the built-in training set
    (relaydiff.dataset.builtin_dataset) at `resolution`.
    """
    import PIL.Image

    if path == "builtin":
        from .dataset import builtin_dataset

        images = builtin_dataset(resolution or 32).images
        return images[:max_images] if max_images else images
    files = acts.open_images(path, what="images")
    out = []
    for i in range(min(len(files), max_images or len(files))):
        try:
            img = files.read(i).convert("RGB")
        except ValueError as exc:  # names the file (a zip member: the zip, then its name)
            raise ImageError(str(exc)) from exc
        resolution = resolution or img.size[0]
        if img.size != (resolution, resolution):
            img = img.resize((resolution, resolution), PIL.Image.LANCZOS)
        out.append(np.asarray(img))
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    return images_uint8.to(torch.float64) / 127.5 - 1


@functools.lru_cache(maxsize=1)
def _detector(path, device):
    return inception.load_detector(path, device)


def get_detector(detector, device):
    """A loaded detector, or the one a path (None: the cache path) names, loaded once per process."""
    return detector if isinstance(detector, torch.nn.Module) else _detector(detector, torch.device(device))


def _stats(d: dict, feat_key: str, what: str, batch: int):
    if feat_key in d:
        return metrics.feature_stats(d[feat_key], batch)
    if feat_key == "feat" and "mu" in d:
        return d["mu"], d["sigma"]
    raise ValueError(f"{what} holds no {feat_key} (an activations file from `relaydiff.eval activations` has it)")


def calc(sample: dict, ref: dict, names, detector=None, device="cpu", kid_subsets=100, batch=64) -> dict:
    """The metrics `names` (fid, sfid, is, pr, kid) between two read_set() dicts, as evaluate.py calc:
    FID/sFID from the feature statistics (or the file's mu/sigma), IS from the detector's logits on the
    sample's pool features (batches of 512), precision/recall with the manifold estimator (k = 3)."""
    res = {}
    for key, name in (("feat", "num_sample"), ("feat", "num_ref")):
        d = sample if name == "num_sample" else ref
        if key in d:
            res[name] = int(len(d[key]))
    if "fid" in names:
        res["fid"] = metrics.frechet_distance(*_stats(sample, "feat", "--sample", batch),
                                              *_stats(ref, "feat", "--ref", batch))
    if "sfid" in names:
        res["sfid"] = metrics.frechet_distance(*_stats(sample, "s_feat", "--sample", batch),
                                               *_stats(ref, "s_feat", "--ref", batch))
    need = {"is": ("sample",), "pr": ("sample", "ref"), "kid": ("sample", "ref")}
    for name, sides in need.items():
        for side in sides if name in names else ():
            if "feat" not in (sample if side == "sample" else ref):
                raise ValueError(f"{name} needs the --{side} file's feat (per-image features), not only mu/sigma")
    if "is" in names:
        net = get_detector(detector, device)
        with torch.no_grad():
            logits = [net.logits(torch.tensor(sample["feat"][i : i + 512], dtype=torch.float32, device=device))
                      .cpu().numpy() for i in range(0, len(sample["feat"]), 512)]
        res["is"] = metrics.inception_score(np.concatenate(logits))
    if "pr" in names:
        res["precision"], res["recall"] = metrics.precision_recall(ref["feat"], sample["feat"])
    if "kid" in names:
        res["kid"] = metrics.kernel_inception_distance(sample["feat"], ref["feat"], num_subsets=kid_subsets)
    return res


def set_activations(images, detector=None, batch=64, device="cpu", workers=0, progress=False,
                    max_images=None) -> dict:
    """{feat, s_feat} of an image path, ImageFiles or uint8 tensor (step 1, kept in memory)."""
    if images == "builtin":
        images = load_images(images, max_images=max_images)
    elif isinstance(images, str):
        images = acts.open_images(images)
    feat, s_feat = acts.compute(images, get_detector(detector, device), batch=batch, device=device,
                                workers=workers, progress=progress, max_images=max_images)
    return {"feat": feat, "s_feat": s_feat}


def compare(gen, ref, names, detector=None, batch=64, device="cpu", kid_subsets=100, progress=False,
            resolution=None, max_images=None, workers=0) -> dict:
    """Metrics between two image sets (uint8 [N, C, H, W] tensors, or paths streamed from disk): both
    sets' activations then calc (the two steps, in memory), plus the weight-free RAPSD distance and SWD
    (these read the sets into memory, resized to `resolution` or gen's size)."""
    results = {}
    wanted = [m for m in names if m in DETECTOR_METRICS]
    if wanted:
        a_gen, a_ref = (set_activations(x, detector, batch, device, workers, progress, max_images) for x in (gen, ref))
        results.update(calc(a_gen, a_ref, wanted, detector, device, kid_subsets))
    if {"rapsd", "swd"} & set(names):
        if isinstance(gen, str):
            gen = load_images(gen, resolution, max_images)
        if isinstance(ref, str):
            ref = load_images(ref, gen.shape[-1], max_images)
        results["num_sample"], results["num_ref"] = int(gen.shape[0]), int(ref.shape[0])
    if "rapsd" in names:
        results["rapsd_distance"] = metrics.rapsd_distance(to_float(gen), to_float(ref))
    if "swd" in names:
        per_level = metrics.sliced_wasserstein(to_float(gen), to_float(ref))
        results["swd_per_level"] = per_level
        results["swd"] = float(np.mean(per_level))
    return results


def _metric_names(text: str, allowed) -> list[str]:
    names = [m.strip() for m in text.split(",") if m.strip()]
    bad = [m for m in names if m not in allowed]
    if bad or not names:
        raise ValueError(f"unknown metric(s) {bad or text!r}; choose from {', '.join(allowed)}")
    return names


def parse_args(argv=None):
    fmt = argparse.ArgumentDefaultsHelpFormatter
    p = cli.Parser(prog="python -m relaydiff.eval", description=__doc__.split("\n")[0], formatter_class=fmt)
    sub = p.add_subparsers(dest="command", required=True)

    def detector_options(q, batch_help="detector batch size"):
        q.add_argument("--detector", default=None,
                       help=f"FID Inception-v3 state_dict file; none: {inception.default_path()}")
        q.add_argument("--device", default="auto", help="torch device for the detector: auto (cuda when available), "
                       "cpu, cuda, cuda:N")
        q.add_argument("--batch", type=cli.positive_int, default=64, help=batch_help)

    a = sub.add_parser("activations", help="detector activations of an image set (.npz, evaluate.py's layout)",
                       formatter_class=fmt)
    a.add_argument("--data", required=True, help="folder or zip of images (sample folders: SEED.png or 000000/*.png)")
    a.add_argument("--dest", required=True, help=".npz file to write (feat, s_feat)")
    a.add_argument("--workers", type=cli.nonnegative_int, default=2, help="image decoding processes per rank")
    a.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    detector_options(a)
    k = sub.add_parser("calc", help="FID, sFID, IS, precision/recall from two activations files",
                       formatter_class=fmt)
    k.add_argument("--sample", required=True, help="activations .npz of the generated images")
    k.add_argument("--ref", required=True, help="activations .npz of the reference set (or EDM's mu/sigma .npz: fid)")
    k.add_argument("--metrics", default="fid,sfid,is,pr", help=f"comma list of {', '.join(DETECTOR_METRICS)}")
    k.add_argument("--kid-subsets", type=cli.positive_int, default=100, help="KID subsets")
    k.add_argument("--json", default=None, help="also write the results to this JSON file")
    detector_options(k, "rows per batch when summing feature statistics (evaluate.py calc's --batch)")
    c = sub.add_parser("compare", help="activations of both sets, then calc; plus RAPSD and SWD", formatter_class=fmt)
    c.add_argument("--gen", required=True, help="folder or zip of generated images")
    c.add_argument("--ref", required=True, help="folder or zip of real images, or 'builtin' (the default training set)")
    c.add_argument("--metrics", default="fid,kid", help=f"comma list of {', '.join(ALL_METRICS)}")
    c.add_argument(
        "--resolution", type=cli.positive_int, default=None, help="rapsd/swd: resize both sets (default: gen's size)"
    )
    c.add_argument("--max-images", type=cli.positive_int, default=None, help="use at most this many images per set")
    c.add_argument("--kid-subsets", type=cli.positive_int, default=100, help="KID subsets")
    c.add_argument("--json", default=None, help="also write the results to this JSON file")
    c.add_argument("--psd-plot", default=None, help="also plot both sets' RAPSD (log10 power) to this PNG")
    detector_options(c)
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


def _one_line(exc: BaseException) -> str:
    """The message itself: a DataLoader worker's re-raised error carries the worker's traceback."""
    text = str(exc).strip()
    return text.splitlines()[-1].split(": ", 1)[-1] if "Original Traceback" in text else text


def _activations(args) -> None:
    device = distributed.local_device(distributed.resolve_device(args.device))
    distributed.init(device)
    detector = get_detector(args.detector, device)  # fails before any image is read
    images = acts.open_images(args.data)
    distributed.print0(f"{len(images)} images in {args.data}")
    feat, s_feat = acts.compute(images, detector, batch=args.batch, device=device, workers=args.workers,
                                progress=not args.no_progress)
    if distributed.get_rank() == 0:
        acts.write(args.dest, feat, s_feat)
        print(f"wrote {args.dest}: feat {feat.shape}, s_feat {s_feat.shape}")
    distributed.barrier()


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        if args.command == "activations":
            _activations(args)
        elif args.command in ("calc", "compare"):
            allowed = DETECTOR_METRICS if args.command == "calc" else ALL_METRICS
            names = _metric_names(args.metrics, allowed)
            device = distributed.resolve_device(args.device)
            if args.command == "calc":
                sample, ref = acts.read_set(args.sample, "--sample"), acts.read_set(args.ref, "--ref")
                if "is" in names:
                    get_detector(args.detector, device)
                res = calc(sample, ref, names, args.detector, device, args.kid_subsets, args.batch)
            else:
                if set(names) & set(DETECTOR_METRICS):
                    get_detector(args.detector, device)  # fail before reading any image
                res = compare(args.gen, args.ref, names, args.detector, args.batch, device, args.kid_subsets,
                              progress=True, resolution=args.resolution, max_images=args.max_images)
            print(json.dumps(res))
            if args.command == "compare" and args.psd_plot:
                gen = load_images(args.gen, args.resolution, args.max_images)
                ref = load_images(args.ref, gen.shape[-1], args.max_images)
                curves = metrics.rapsd_curves({"real": to_float(ref), "generated": to_float(gen)})
                metrics.plot_curves(curves, args.psd_plot, "RAPSD, real vs generated", "log10 power")
                print(f"wrote {args.psd_plot}")
            if args.json:
                save_json(args.json, res)
        else:
            resolutions = args.resolutions
            images = to_float(load_images(args.images, max(resolutions), args.max_images))
            curves = metrics.snr_curves(images, resolutions, args.sigma)
            metrics.plot_snr(curves, args.out, f"SNR at sigma={args.sigma}")
            print(f"wrote {args.out}")
    except ImageError as exc:  # a bad input file: the message and status of a usage error
        print(f"relaydiff.eval: error: {exc}", file=sys.stderr)
        return 2
    except (FileNotFoundError, ValueError, OSError) as exc:  # a missing, refused or unwritable file
        print(f"error: {_one_line(exc)}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
